"""KPI pipeline: agent turns from Kafka -> validated -> idempotent upserts into Postgres `agent_turns`.

    python -m beam_pipelines.kpi --runner=FlinkRunner --flink_master=localhost:8081 [--consumer_group=...]

Bad records (not JSON, not a valid turn) go to `text.agent.turn.completed.dlq` with the reason; the job never
fails on bad input. Run `python -m beam_pipelines.kpi --help` for every option.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

import apache_beam as beam

from beam_pipelines.options import KafkaSourceOptions, SinkOptions, consumer_config, finalize_options
from io_connectors import topics
from io_connectors.kafka import ReadKafkaRecords, WriteDeadLetters
from io_connectors.postgres import WriteToPostgres
from io_connectors.settings import KafkaSettings
from transforms.contracts import AgentTurnCompleted
from transforms.turns import AGENT_TURN_COLUMNS, AGENT_TURN_JSON, AGENT_TURN_KEYS, turn_to_row
from transforms.validation import ValidateEvents, validated


class WriteAgentTurns(beam.PTransform):
    """Typed turns -> `agent_turns` (upsert on session_id, turn_id; newer ts_ms wins). Returns dead letters."""

    def __init__(self, batch_size: int = 500, max_attempts: int = 6, label: Optional[str] = None):
        super().__init__(label)
        self._batch_size = batch_size
        self._max_attempts = max_attempts

    def expand(self, turns):
        return (turns
                | "ToRow" >> beam.Map(turn_to_row)
                | "UpsertAgentTurns" >> WriteToPostgres(
                    "agent_turns", AGENT_TURN_KEYS, AGENT_TURN_COLUMNS, version_column="ts_ms",
                    json_columns=AGENT_TURN_JSON, batch_size=self._batch_size, max_attempts=self._max_attempts,
                    source_topic=topics.TURNS))


def build(p: beam.Pipeline, opts) -> None:
    src = opts.view_as(KafkaSourceOptions)
    sink = opts.view_as(SinkOptions)
    records = p | "ReadTurns" >> ReadKafkaRecords(
        [topics.TURNS], consumer_config(opts), src.expansion_service, start_read_time_ms=src.start_read_time_ms,
        max_num_records=src.max_num_records)
    turns, invalid = validated(records | "ValidateTurns" >> ValidateEvents(
        AgentTurnCompleted, max_payload_bytes=src.max_payload_bytes))
    refused = turns | "WriteAgentTurns" >> WriteAgentTurns(sink.pg_batch_size, sink.pg_max_attempts)
    ((invalid, refused) | "MergeDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters([topics.TURNS], KafkaSettings.from_env().client_config(),
                                              src.expansion_service))


def run(argv: Optional[List[str]] = None, wait: bool = True):
    opts = finalize_options(argv, "kpi", __doc__)
    p = beam.Pipeline(options=opts)
    build(p, opts)
    result = p.run()
    if wait:
        result.wait_until_finish()
    return result


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run(sys.argv[1:])
