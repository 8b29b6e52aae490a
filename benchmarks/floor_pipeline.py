"""The KPI pipeline cut down to its first steps, for the benchmark's floor (`bench_pipelines.py --floor`): what
Beam on Flink costs per record before the pipeline's own work, on the same records and the same stack.

    python -m benchmarks.floor_pipeline --runner=FlinkRunner --stage=read|validate|transform
        --count_key=session:bench-floor-<id>:count [the KPI job's flags]

Every stage but `sinks` is done when its elements are counted; `sinks` when every `agent_turns` row and every
session's Redis turn count landed. `read`: the KPI topics read with the pipeline's own Kafka read (Java KafkaIO, each record to the Python SDK worker);
`validate`: + the validation step (contracts, dead letters as a second output); `transform`: + PII redaction and
scoring, as in the KPI job; `sinks`: + the KPI job's two per-turn sinks (`agent_turns` upserts, the Redis session
state), the whole KPI job but its keyed session totals (`session_kpis`) and its dead-letter writer. Every element the last step emits (valid events and dead letters alike) is counted
per bundle and recorded at the bundle's end as one field of a Redis hash (HSET <key> <bundle id> <n>: the KPI
principal may HSET under `session:*`, not INCRBY; the benchmark sums the fields, and runs it without faults). No sink, no keyed step, no dead-letter writer: the difference to the KPI job is theirs.
"""

from __future__ import annotations

import uuid
from typing import List, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines.common import read_and_validate, read_records, run_pipeline
from beam_pipelines.kpi import write_turns
from beam_pipelines.options import TransformOptions
from events import topics
from events.dead_letters import split_dead_letters
from io_connectors.settings import RedisSettings
from transforms.pii import PiiPolicy, RedactPii
from transforms.scoring import ScoreAgentTurns

TOPICS = (topics.TURNS, topics.TOOLS, topics.SESSIONS)
STAGES = ("read", "validate", "transform", "sinks")


class FloorOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--stage", choices=STAGES, default="read", help="how much of the KPI job to run")
        parser.add_argument("--count_key", required=True, help="Redis key the elements are counted into")


class CountIntoRedis(beam.DoFn):
    """Counts elements per bundle; one HSET per bundle (a field per bundle id) at its end."""

    def __init__(self, key: str, settings):
        self._key, self._settings, self._n, self._client = key, settings, 0, None

    def setup(self):
        from io_connectors.clients import redis_client

        self._client = redis_client(self._settings)

    def start_bundle(self):
        self._n = 0

    def process(self, element):
        self._n += 1

    def finish_bundle(self):
        if self._n:
            self._client.hset(self._key, uuid.uuid4().hex, self._n)

    def teardown(self):
        if self._client is not None:
            self._client.close()


def build(p: beam.Pipeline, opts) -> None:
    fo = opts.view_as(FloorOptions)
    if fo.stage == "read":
        outputs = [read_records(p, opts, TOPICS)]
    else:
        events, dead = read_and_validate(p, opts, TOPICS)
        outputs = [dead]
        if fo.stage == "validate":
            outputs += [events[t] for t in TOPICS]
        else:
            xf = opts.view_as(TransformOptions)
            policy = PiiPolicy.load(xf.pii_policy_file)
            turns, d = split_dead_letters(events[topics.TURNS] | "RedactTurns" >> RedactPii(policy, topics.TURNS))
            scored, d2 = split_dead_letters(turns | "ScoreTurns" >> ScoreAgentTurns(xf.price_table_file))
            tools, d3 = split_dead_letters(events[topics.TOOLS] | "RedactTools" >> RedactPii(policy, topics.TOOLS))
            updates, d4 = split_dead_letters(events[topics.SESSIONS]
                                             | "RedactSessionUpdates" >> RedactPii(policy, topics.SESSIONS))
            outputs += [scored, tools, updates, d, d2, d3, d4]
            if fo.stage == "sinks":  # the KPI job's own sink steps
                outputs += write_turns(scored, opts)
    settings = RedisSettings.deferred()  # the launcher's principal, resolved in the worker
    (tuple(outputs) | "Merge" >> beam.Flatten()
     | "Count" >> beam.ParDo(CountIntoRedis(fo.count_key, settings)))


def run(argv: Optional[List[str]] = None, wait: bool = True):
    # the KPI job's principal: it reads the KPI topics and may write `session:*` keys
    return run_pipeline(build, argv, "kpi", __doc__, TOPICS, wait, principal="pipeline-kpi")


if __name__ == "__main__":
    from beam_pipelines.common import main

    main("benchmarks.floor_pipeline")
