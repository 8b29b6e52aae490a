"""Wiring shared by the pipeline modules: read topics, validate, and send every dead letter to its DLQ."""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple, Type

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from beam_pipelines.options import KafkaSourceOptions, consumer_config
from io_connectors.kafka import ReadKafkaRecords, WriteDeadLetters, position_consumer_group
from io_connectors.settings import KafkaSettings
from transforms.contracts import CONTRACTS, EventModel
from transforms.routing import ValidateByTopic


def read_records(p: beam.Pipeline, opts, topics: Sequence[str], label: str = "ReadKafka"):
    """Read from the group's committed offsets (positioned by `run_pipeline` for --start_from/--start_read_time_ms)."""
    src = opts.view_as(KafkaSourceOptions)
    return p | label >> ReadKafkaRecords(list(topics), consumer_config(opts), src.expansion_service,
                                         max_num_records=src.max_num_records)



def read_and_validate(p: beam.Pipeline, opts, topics: Sequence[str]
                      ) -> Tuple[Dict[str, beam.PCollection], beam.PCollection]:
    """({topic: typed events}, dead letters) for the given topics, each validated against its contract."""
    src = opts.view_as(KafkaSourceOptions)
    models: Dict[str, Type[EventModel]] = {t: CONTRACTS[t] for t in topics}
    records = read_records(p, opts, topics)
    return records | "Validate" >> ValidateByTopic(models, max_payload_bytes=src.max_payload_bytes)


def write_dead_letters(opts, dead_letters: List[beam.PCollection], topics: Sequence[str]) -> None:
    src = opts.view_as(KafkaSourceOptions)
    # Dead letters come from differently windowed steps (sessions, hours); Flatten needs one windowing.
    rewindowed = [d | f"DeadLettersToGlobalWindow{i}" >> beam.WindowInto(GlobalWindows())
                  for i, d in enumerate(dead_letters)]
    (tuple(rewindowed) | "MergeDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(list(topics), KafkaSettings.from_env().client_config(),
                                              src.expansion_service))


def run_pipeline(build, argv, name: str, doc: str, topics: Sequence[str], wait: bool = True):
    """Parse options, build the graph, position the consumer group on `topics` if asked, and submit."""
    from beam_pipelines.options import finalize_options

    opts = finalize_options(argv, name, doc)
    p = beam.Pipeline(options=opts)
    build(p, opts)
    src = opts.view_as(KafkaSourceOptions)
    positioned = position_consumer_group(src.consumer_group, list(topics),
                                         KafkaSettings.from_env().librdkafka_config(), src.start_from,
                                         src.start_read_time_ms)
    if positioned:
        logging.info("consumer group %s positioned: %s", src.consumer_group, positioned)
    result = p.run()
    if wait:
        result.wait_until_finish()
    return result
