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

from typing import List, Optional

import apache_beam as beam

from beam_pipelines.common import read_records, run_pipeline, write_dead_letters
from beam_pipelines.options import ArchiveOptions, WindowOptions
from events import topics
from io_connectors.parquet_archive import ArchiveTopics

TOPICS = tuple(t.name for t in topics.TOPICS)


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
