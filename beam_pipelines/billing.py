"""Billing pipeline: usage per account per event-time hour -> Postgres `billing_usage` and the
`billing.usage.metered` topic.

    python -m beam_pipelines.billing --runner=FlinkRunner --flink_master=localhost:8081

Turns (tokens, estimated cost from the price table) and tool invocations are counted once each (duplicates
and replays are ignored) per (account_id, hour). Early panes keep the row fresh; late data within
`--billing_allowed_lateness_seconds` corrects it. Every pane carries a `revision` (the number of distinct
items counted) that only grows with real data: the row is upserted only by a larger or equal revision, and
each message on `billing.usage.metered` (keyed `account_id|hour_start_ms`) carries it, so a consumer keeps
the largest revision per key. `--help` lists every option.
"""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.kafka import WriteToKafka

from beam_pipelines.common import read_and_validate, run_pipeline, write_dead_letters
from beam_pipelines.options import KafkaSourceOptions, SinkOptions, TransformOptions, WindowOptions
from events import topics
from io_connectors.postgres import WriteToPostgres
from io_connectors.settings import KafkaSettings
from events.contracts import BillingUsageMetered
from transforms.scoring import ScoreAgentTurns
from events.dead_letters import split_dead_letters
from events.dead_letters import DeadLetter, ErrorKind, Tags
from transforms.windows import BILLING_COLUMNS, HOUR_S, HourlyUsagePerAccount, scored_turn_activity, tool_activity

TOPICS = (topics.TURNS, topics.TOOLS)


def usage_message(row: dict) -> Tuple[bytes, bytes]:
    """A billing row -> (key, BillingUsageMetered JSON). Deterministic, so a replayed pane is the same message."""
    hour_ms = row["hour_start_ms"]
    msg = BillingUsageMetered(
        account_id=row["account_id"], hour_start_ms=hour_ms, turns=row["turns"], tokens_in=row["tokens_in"],
        tokens_out=row["tokens_out"], tool_invocations=row["tool_invocations"],
        estimated_cost_usd=row["estimated_cost_usd"], revision=row["revision"], is_final=row["is_final"],
        timestamp=hour_ms + HOUR_S * 1000 - 1)
    return f"{row['account_id']}|{hour_ms}".encode(), json.dumps(msg.model_dump(), sort_keys=True).encode()


class _UsageMessageFn(beam.DoFn):
    """usage_message, or a dead letter when a row does not make a valid BillingUsageMetered (an account id or a
    sum beyond the contract's bounds): the job must not fail on what its input made of a total."""

    def process(self, row: dict):
        try:
            yield usage_message(row)
        except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
                json.dumps(row, default=str, sort_keys=True).encode(), step="ToUsageMessage",
                error_class=ErrorKind.TRANSFORM.value, error_message=f"{type(e).__name__}: {e}"[:2000],
                topic=topics.TURNS))


def build(p: beam.Pipeline, opts) -> None:
    sink = opts.view_as(SinkOptions)
    win = opts.view_as(WindowOptions)
    xf = opts.view_as(TransformOptions)
    events, dead = read_and_validate(p, opts, TOPICS)
    dead_letters = [dead]
    scored, d = split_dead_letters(events[topics.TURNS] | "PriceTurns" >> ScoreAgentTurns(xf.price_table_file))
    dead_letters.append(d)
    hourly = ((scored | "TurnUsage" >> beam.Map(scored_turn_activity),
               events[topics.TOOLS] | "ToolUsage" >> beam.Map(tool_activity))
              | "MergeUsage" >> beam.Flatten()
              | "HourlyUsagePerAccount" >> HourlyUsagePerAccount(win.billing_allowed_lateness_seconds,
                                                                 win.early_firing_seconds))
    dead_letters.append(hourly[Tags.DEAD_LETTER.value])  # usage later than the allowed lateness
    usage = hourly.rows
    dead_letters.append(usage | "UpsertBillingUsage" >> WriteToPostgres(
        "billing_usage", ("account_id", "hour_start"), BILLING_COLUMNS, version_column="revision",
        batch_size=sink.pg_batch_size, max_attempts=sink.pg_max_attempts, source_topic=topics.TURNS))
    messages = usage | "ToUsageMessage" >> beam.ParDo(_UsageMessageFn()).with_output_types(
        Tuple[bytes, bytes]).with_outputs(Tags.DEAD_LETTER.value, main="messages")
    dead_letters.append(messages[Tags.DEAD_LETTER.value])
    (messages.messages
     | "PublishUsage" >> WriteToKafka(
         producer_config={**KafkaSettings.from_env().client_config(), "acks": "all", "enable.idempotence": "true"},
         topic=topics.BILLING,
         key_serializer="org.apache.kafka.common.serialization.ByteArraySerializer",
         value_serializer="org.apache.kafka.common.serialization.ByteArraySerializer",
         expansion_service=opts.view_as(KafkaSourceOptions).expansion_service))
    write_dead_letters(opts, dead_letters, TOPICS)


def run(argv: Optional[List[str]] = None, wait: bool = True):
    return run_pipeline(build, argv, "billing", __doc__, TOPICS, wait)


if __name__ == "__main__":
    from beam_pipelines.common import main

    main("beam_pipelines.billing")  # imported under its name, so that workers can unpickle its functions
