"""Archive pipeline: every input topic -> the hourly Parquet archive on Spaces.

    python -m beam_pipelines.archive --runner=FlinkRunner --flink_master=localhost:8081 [--archive_prefix=...]

All topics of events.topics.TOPICS are read in one Kafka source and archived as they are: nothing is
validated first, so events that fail validation today (malformed JSON, missing fields, wrong types) are
kept byte for byte in the `payload` column beside the columns parsed from it, and can be replayed once their
contract or the code is fixed. Each record keeps its Kafka CreateTime (set by producers to the event time)
as its event time and lands in its topic's event-time hour:

    s3://<bucket>/<archive_prefix><topic>/date=YYYY-MM-DD/hour=HH/part-SSSS-of-NNNN-pPPPP.parquet

An hour's files are written when the watermark passes the end of the hour; late records within
`--archive_allowed_lateness_seconds` become extra files of their hour (one per
`--archive_late_firing_delay_seconds`). Rows the Parquet writer cannot store go to `<topic>.dlq`.
`--help` lists every option.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows, TimestampedValue

from beam_pipelines.common import read_records, run_pipeline, write_dead_letters
from beam_pipelines.options import WindowOptions
from events import topics
from io_connectors.parquet_archive import ArchiveKafkaRecords
from events.dead_letters import DeadLetter, ErrorKind, Tags
from events.records import KafkaRecord

TOPICS = tuple(t.name for t in topics.TOPICS)


class ArchiveOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--archive_prefix", default="",
                            help="Object key prefix of the archive inside the Spaces bucket, ending with '/' "
                                 "(default: the bucket root). Tests and backfills use their own prefix.")


def _with_event_time(record: KafkaRecord) -> TimestampedValue:
    return TimestampedValue(record, record.timestamp_ms / 1000)


class _SplitByTopicFn(beam.DoFn):
    """KafkaRecord -> the output tagged with its topic; a record of another topic becomes a dead letter."""

    def __init__(self, topic_names: Sequence[str]):
        self._topics = frozenset(topic_names)
        self._records = Metrics.counter(self.__class__, "archive_records_in")
        self._unknown = Metrics.counter(self.__class__, "archive_unknown_topic")

    def process(self, record: KafkaRecord):
        self._records.inc()
        if record.topic in self._topics:
            yield beam.pvalue.TaggedOutput(record.topic, record)
            return
        self._unknown.inc()  # impossible with a fixed subscription; kept rather than dropped
        yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
            record.value or b"", step="SplitByTopic", error_class=ErrorKind.UNKNOWN_TOPIC.value,
            error_message=f"record of topic {record.topic!r} is not archived by this pipeline",
            topic=record.topic, partition=record.partition, offset=record.offset,
            event_time_ms=record.timestamp_ms))


class ArchiveTopics(beam.PTransform):
    """PCollection[KafkaRecord] of several topics -> hourly Parquet per topic.

    Returns ({topic: files written}, dead letters in the global window). `archive_kwargs` go to every ArchiveKafkaRecords
    (prefix, num_shards, allowed_lateness_s, late_firing_delay_s, ...).
    """

    def __init__(self, topic_names: Sequence[str], label: Optional[str] = None, **archive_kwargs):
        super().__init__(label)
        if not topic_names:
            raise ValueError("ArchiveTopics needs at least one topic")
        self._topics = tuple(topic_names)
        self._kwargs = archive_kwargs

    def expand(self, records) -> Tuple[Dict[str, beam.PCollection], beam.PCollection]:
        split = (records
                 | "EventTimeFromCreateTime" >> beam.Map(_with_event_time)
                 | "SplitByTopic" >> beam.ParDo(_SplitByTopicFn(self._topics)).with_outputs(
                     Tags.DEAD_LETTER.value, *self._topics))
        files: Dict[str, beam.PCollection] = {}
        dead = [split[Tags.DEAD_LETTER.value]]
        for topic in self._topics:
            out = split[topic] | f"Archive[{topic}]" >> ArchiveKafkaRecords(topic, **self._kwargs)
            files[topic] = out.files
            # dead letters keep their hourly window; Flatten needs one windowing
            dead.append(out[Tags.DEAD_LETTER.value]
                        | f"DeadLettersToGlobalWindow[{topic}]" >> beam.WindowInto(GlobalWindows()))
        return files, tuple(dead) | "MergeArchiveDeadLetters" >> beam.Flatten()


def build(p: beam.Pipeline, opts) -> None:
    win = opts.view_as(WindowOptions)
    prefix = opts.view_as(ArchiveOptions).archive_prefix or ""
    if prefix and (not prefix.endswith("/") or prefix.startswith("/")):
        raise ValueError("--archive_prefix must end with '/' and must not start with '/'")
    records = read_records(p, opts, TOPICS)
    _, dead = records | "ArchiveTopics" >> ArchiveTopics(
        TOPICS, prefix=prefix, num_shards=win.archive_shards,
        allowed_lateness_s=win.archive_allowed_lateness_seconds,
        late_firing_delay_s=win.archive_late_firing_delay_seconds)
    write_dead_letters(opts, [dead], TOPICS)


def run(argv: Optional[List[str]] = None, wait: bool = True):
    return run_pipeline(build, argv, "archive", __doc__, TOPICS, wait)


if __name__ == "__main__":
    from beam_pipelines.common import main

    main("beam_pipelines.archive")  # imported under its name, so that workers can unpickle its functions
