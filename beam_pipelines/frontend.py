"""Frontend pipeline: user interactions, session analytics and widget performance -> Postgres
`frontend_analytics` and per-session engagement in `frontend_session_engagement`.

    python -m beam_pipelines.frontend --runner=FlinkRunner --flink_master=localhost:8081 [--consumer_group=...]

Events of the three frontend topics are validated, PII-redacted, enriched (device, page category, funnel
stage, engagement and quality scores) and upserted on event_id (newer ts_ms wins). All of them are also
sessionized per session_id (gap `--session_gap_seconds`) into one engagement row per session: distinct
events, duration, furthest funnel stage, with early panes every `--early_firing_seconds`, a final pane when
the session closes, and late corrections within `--allowed_lateness_seconds` that update the row.
Duplicates count once. Bad records go to `<topic>.dlq` with the reason; the job never fails on bad input.
`--help` lists every option.
"""

from __future__ import annotations

from typing import List, Optional

import apache_beam as beam

from beam_pipelines.common import read_and_validate, run_pipeline, write_dead_letters
from beam_pipelines.options import SinkOptions, TransformOptions, WindowOptions
from events import topics
from io_connectors.postgres import UpsertRows, WriteToPostgres
from events.dead_letters import Tags
from transforms.engagement import (ENGAGEMENT_COLUMNS, ENGAGEMENT_KEYS, ENGAGEMENT_MERGE, SessionEngagement,
                                   engagement_event)
from transforms.pii import PiiPolicy, RedactPii
from transforms.rows import FRONTEND_COLUMNS, FRONTEND_JSON, FRONTEND_KEYS, frontend_to_row
from transforms.scoring import EnrichFrontendEvents
from events.dead_letters import split_dead_letters

# (topic, the name its steps carry in the dashboard)
STREAMS = ((topics.FRONTEND_INTERACTION, "Interactions"), (topics.FRONTEND_SESSION, "SessionAnalytics"),
           (topics.FRONTEND_WIDGET, "WidgetPerformance"))
TOPICS = tuple(t for t, _ in STREAMS)


def build(p: beam.Pipeline, opts) -> None:
    sink = opts.view_as(SinkOptions)
    win = opts.view_as(WindowOptions)
    xf = opts.view_as(TransformOptions)
    policy = PiiPolicy.load(xf.pii_policy_file)  # read and checked once, when the graph is built
    events, dead = read_and_validate(p, opts, TOPICS)
    dead_letters = [dead]

    enriched = []
    for topic, name in STREAMS:
        redacted, d = split_dead_letters(events[topic] | f"Redact{name}" >> RedactPii(policy, topic))
        dead_letters.append(d)  # every dead letter carries its event's own topic/partition/offset
        scored, d = split_dead_letters(redacted | f"Enrich{name}" >> EnrichFrontendEvents())
        dead_letters.append(d)
        dead_letters.append(scored | f"Write{name}" >> UpsertRows(
            frontend_to_row, "frontend_analytics", FRONTEND_KEYS, FRONTEND_COLUMNS, version_column="ts_ms",
            json_columns=FRONTEND_JSON, batch_size=sink.pg_batch_size, max_attempts=sink.pg_max_attempts,
            source_topic=topic))
        enriched.append(scored)

    # Sink failures of engagement rows have no single source topic: they go to the first topic's DLQ.
    engagement = (tuple(enriched)
                  | "MergeFrontendEvents" >> beam.Flatten()
                  | "ToEngagementEvent" >> beam.Map(engagement_event)
                  | "SessionEngagement" >> SessionEngagement(win.session_gap_seconds, win.allowed_lateness_seconds,
                                                             win.early_firing_seconds))
    dead_letters.append(engagement[Tags.DEAD_LETTER.value])  # events later than the allowed lateness
    dead_letters.append(engagement.rows
                        | "UpsertSessionEngagement" >> WriteToPostgres(
                            "frontend_session_engagement", ENGAGEMENT_KEYS, ENGAGEMENT_COLUMNS,
                            version_column="pane_version", batch_size=sink.pg_batch_size,
                            max_attempts=sink.pg_max_attempts, source_topic=topics.FRONTEND_INTERACTION,
                            merge_sql=ENGAGEMENT_MERGE))
    write_dead_letters(opts, dead_letters, TOPICS)


def run(argv: Optional[List[str]] = None, wait: bool = True):
    return run_pipeline(build, argv, "frontend", __doc__, TOPICS, wait)


if __name__ == "__main__":
    from beam_pipelines.common import main

    main("beam_pipelines.frontend")  # imported under its name, so that workers can unpickle its functions
