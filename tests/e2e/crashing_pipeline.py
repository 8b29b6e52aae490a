"""A pipeline whose worker code raises at every element: the launcher's e2e test runs it and expects the
command to fail with this error instead of waiting while Flink restarts the job forever.

    python -m tests.e2e.crashing_pipeline --runner=FlinkRunner --job_name=... --consumer_group=...

It reads TOPIC (created by `ensure_topic`; no real pipeline reads it) from the group's committed offsets
(a new group starts at the earliest offset), so any record already there makes it fail at once. Its first
step is a lambda calling a module function, the shape of issue 9: were the module pickled as `__main__`,
the job would fail with "NameError: name '_offset' is not defined" instead of ERROR.
"""

from __future__ import annotations

from typing import List, Optional

from beam_pipelines import launcher  # noqa: F401,I001 - first: it filters Google's import-time FutureWarnings

import apache_beam as beam

from beam_pipelines.common import main, read_records, run_pipeline
from io_connectors.settings import librdkafka_for

TOPIC = "e2e.launcher.crash"
ERROR = "crashing_pipeline refuses every element"


class CrashingPipelineError(RuntimeError):
    pass


def _offset(record) -> int:
    return record.offset


def _refuse(offset: int) -> int:
    raise CrashingPipelineError(f"{ERROR} (offset {offset})")


def build(p: beam.Pipeline, opts) -> None:
    (read_records(p, opts, [TOPIC])
     | "Offset" >> beam.Map(lambda r: _offset(r))  # noqa: PLW0108 - on purpose, see the module docstring
     | "RaiseAtEveryElement" >> beam.Map(_refuse))


def run(argv: Optional[List[str]] = None, wait: bool = True):
    # a test topic no pipeline principal may read: the local stack's admin runs it
    return run_pipeline(build, argv, "crashing", __doc__, (TOPIC,), wait, principal="admin")


def ensure_topic(bootstrap: str) -> None:
    """Create TOPIC (one partition) unless it exists; the broker does not auto-create topics."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(librdkafka_for(bootstrap, "admin"))  # creating topics is the admin's
    if TOPIC not in admin.list_topics(timeout=10).topics:
        for f in admin.create_topics([NewTopic(TOPIC, 1, 1)]).values():
            try:
                f.result(30)
            except Exception as e:  # noqa: BLE001 - created meanwhile by another run
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise


if __name__ == "__main__":
    main("tests.e2e.crashing_pipeline")
