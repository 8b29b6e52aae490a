"""KPI pipeline: agent turns, tool calls and session updates -> Postgres `agent_turns` and `session_kpis`, and
the Redis hot session state.

    python -m beam_pipelines.kpi --runner=FlinkRunner --flink_master=localhost:8081 [--consumer_group=...]

Turns are validated, PII-redacted, scored and upserted on (session_id, turn_id) (newer ts_ms wins); each turn
updates `session:{id}:state` / `:metrics` in Redis (an older event never overwrites newer state). Turns and
tool calls are totalled per session_id over the session's whole life into `session_kpis` (keyed state with
timers): updated every `--early_firing_seconds`, final once the session has been inactive for
`--session_gap_seconds` + `--allowed_lateness_seconds`, corrected by late activity within the lateness
(later activity is a dead letter); a session that pauses longer still adds up in one row. Bad records go
to `<topic>.dlq` with the reason; the job never fails on bad input. `--help` lists every option.
"""

from __future__ import annotations

from typing import List, Optional

import apache_beam as beam

from beam_pipelines.common import read_and_validate, run_pipeline, write_dead_letters
from beam_pipelines.options import SinkOptions, TransformOptions, WindowOptions
from events import topics
from events.dead_letters import KeepSource, Tags
from io_connectors.postgres import UpsertRows, WriteToPostgres
from io_connectors.redis_state import WriteSessionState
from transforms.pii import PiiPolicy, RedactPii
from transforms.scoring import ScoreAgentTurns
from transforms.turns import (AGENT_TURN_JSON, AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS, session_state_event,
                              turn_to_row)
from events.dead_letters import split_dead_letters
from transforms.windows import (SESSION_KPI_COLUMNS, SESSION_KPI_MERGE, SessionizeActivity, scored_turn_activity,
                               tool_activity)

TOPICS = (topics.TURNS, topics.TOOLS, topics.SESSIONS)


def write_turns(scored: beam.PCollection, opts) -> List[beam.PCollection]:
    """The per-turn sinks (`agent_turns` upserts, the Redis session state); returns their dead letters."""
    sink = opts.view_as(SinkOptions)
    xf = opts.view_as(TransformOptions)
    return [scored | "WriteAgentTurns" >> UpsertRows(
                turn_to_row, "agent_turns", AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS, version_column="ts_ms",
                json_columns=AGENT_TURN_JSON, batch_size=sink.pg_batch_size, max_attempts=sink.pg_max_attempts,
                source_topic=topics.TURNS),
            scored
            | "ToSessionState" >> beam.Map(KeepSource(session_state_event))
            | "WriteRedisSessionState" >> WriteSessionState(
                ttl_seconds=xf.redis_ttl_seconds, batch_size=sink.redis_batch_size,
                max_attempts=sink.redis_max_attempts, source_topic=topics.TURNS)]


def build(p: beam.Pipeline, opts) -> None:
    sink = opts.view_as(SinkOptions)
    win = opts.view_as(WindowOptions)
    xf = opts.view_as(TransformOptions)
    policy = PiiPolicy.load(xf.pii_policy_file)  # read and checked once, when the graph is built
    events, dead = read_and_validate(p, opts, TOPICS)
    dead_letters = [dead]

    turns, d = split_dead_letters(events[topics.TURNS] | "RedactTurns" >> RedactPii(policy, topics.TURNS))
    dead_letters.append(d)
    scored, d = split_dead_letters(turns | "ScoreTurns" >> ScoreAgentTurns(xf.price_table_file))
    dead_letters.append(d)
    dead_letters += write_turns(scored, opts)

    tools, d = split_dead_letters(events[topics.TOOLS] | "RedactTools" >> RedactPii(policy, topics.TOOLS))
    dead_letters.append(d)
    # Session updates are validated and redacted (bad ones reach their DLQ); the KPIs derive from turns and
    # tool calls, which carry the counts themselves.
    _, d = split_dead_letters(events[topics.SESSIONS] | "RedactSessionUpdates" >> RedactPii(policy, topics.SESSIONS))
    dead_letters.append(d)

    activity = ((scored | "TurnActivity" >> beam.Map(scored_turn_activity),
                 tools | "ToolActivity" >> beam.Map(tool_activity))
                | "MergeActivity" >> beam.Flatten())
    sessions = activity | "SessionizeTurns" >> SessionizeActivity(
        win.session_gap_seconds, win.allowed_lateness_seconds, win.early_firing_seconds)
    dead_letters.append(sessions[Tags.DEAD_LETTER.value])  # activity later than the allowed lateness
    dead_letters.append(sessions.rows
                        | "UpsertSessionKpis" >> WriteToPostgres(
                            "session_kpis", ("session_id",), SESSION_KPI_COLUMNS, version_column="pane_version",
                            batch_size=sink.pg_batch_size, max_attempts=sink.pg_max_attempts,
                            source_topic=topics.TURNS, merge_sql=SESSION_KPI_MERGE))
    write_dead_letters(opts, dead_letters, TOPICS)


def run(argv: Optional[List[str]] = None, wait: bool = True):
    return run_pipeline(build, argv, "kpi", __doc__, TOPICS, wait)


if __name__ == "__main__":
    from beam_pipelines.common import main

    main("beam_pipelines.kpi")  # imported under its name, so that workers can unpickle its functions
