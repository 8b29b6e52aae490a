"""Wiring shared by the pipeline modules: read topics, validate, and send every dead letter to its DLQ."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple, Type

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from beam_pipelines.options import KafkaSourceOptions, consumer_config
from io_connectors.kafka import ReadKafkaRecords, WriteDeadLetters, position_consumer_group
from io_connectors.settings import KafkaSettings, use_principal
from events.contracts import EventModel
from events.topics import CONTRACTS
from transforms.routing import ValidateByTopic


def read_records(p: beam.Pipeline, opts, topics: Sequence[str], label: str = "ReadKafka"):
    """Read from the group's committed offsets (positioned by `run_pipeline` for --start_from/--start_read_time_ms)."""
    src = opts.view_as(KafkaSourceOptions)
    return p | label >> ReadKafkaRecords(list(topics), consumer_config(opts), src.expansion_service,
                                         max_num_records=src.max_num_records,
                                         idle_partition_timeout_s=src.idle_partition_timeout_seconds)



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


def run_pipeline(build, argv, name: str, doc: str, topics: Sequence[str], wait: bool = True,
                 principal: Optional[str] = None):
    """Parse options, build the graph, position the consumer group on `topics` if asked, submit and watch.

    wait=True: the launcher watches the job as the options say (until it ends; with --no_wait_until_finish
    until it is healthy) and raises launcher.JobFailed when it fails or keeps restarting. principal: the
    identity on the local secured stack (default `pipeline-<name>`). wait=False:
    return once the job is submitted (the caller watches it). Returns the PipelineResult."""
    from beam_pipelines.launcher import launch
    from beam_pipelines.options import finalize_options

    opts = finalize_options(argv, name, doc)
    # On the local secured stack this process and the sinks it builds connect as the pipeline's own principal
    # (devstack/principals.py); in a pod, the pod's KAFKA_USER/POSTGRES_USER/REDIS_USERNAME win.
    use_principal(principal or f"pipeline-{name}")
    p = beam.Pipeline(options=opts)
    build(p, opts)
    src = opts.view_as(KafkaSourceOptions)
    positioned = position_consumer_group(src.consumer_group, list(topics),
                                         KafkaSettings.from_env().librdkafka_config(), src.start_from,
                                         src.start_read_time_ms)
    if positioned:
        logging.info("consumer group %s positioned: %s", src.consumer_group, positioned)
    return launch(p, opts, wait)


def main(module_name: str) -> None:
    """`python -m <module_name>`: run the module imported under its real name; exit 1 when its job fails.

    Run as `__main__`, a module's functions and lambdas are pickled by value without their globals, and fail
    on the workers (NameError); imported under its name, they are pickled by reference to a module the
    workers import. The PipelineOptions classes of the `__main__` copy are muted: the real module declares
    the same flags, and argparse rejects a flag declared twice."""
    import importlib
    import os
    import sys

    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines.launcher import JobFailed, quiet_warnings

    quiet_warnings()
    from events.logs import configure
    from io_connectors.settings import environment

    configure(module_name.rsplit(".", 1)[-1], environ=environment())  # JSON lines, secrets redacted
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its INFO is type-hint and staging chatter
    for obj in list(vars(sys.modules["__main__"]).values()):
        if isinstance(obj, type) and issubclass(obj, PipelineOptions) and obj.__module__ == "__main__":
            obj._add_argparse_args = classmethod(lambda cls, parser: None)
    module = importlib.import_module(module_name)
    try:
        module.run(sys.argv[1:])
    except JobFailed as e:
        print(f"\nFAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        # Ctrl-C leaves the job running on Flink (the launcher said where). Exit now: sys.exit would wait for the
        # portable runner's non-daemon job-service stream threads, which end only with the job (a launcher
        # interrupted under load was still there 30 s later).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(0)
