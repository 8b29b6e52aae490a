"""Leads pipeline: Marketo lead changes -> scored leads upserted into Postgres `marketo_leads`.

    python -m beam_pipelines.leads --runner=FlinkRunner --flink_master=localhost:8081

Lead deltas (published by `python -m io_connectors.marketo_extractor`) are validated, redacted per the PII
policy, scored (lead_quality_score, engagement_level, conversion_probability, recommended_action) and
upserted on lead_id; the newest change (event time) wins, so replays and out-of-order deltas never regress a
lead. Bad records go to `marketo.leads.delta.dlq`. `--help` lists every option.
"""

from __future__ import annotations

from typing import List, Optional

import apache_beam as beam

from beam_pipelines.common import read_and_validate, run_pipeline, write_dead_letters
from beam_pipelines.options import SinkOptions, TransformOptions
from events import topics
from io_connectors.postgres import WriteToPostgres
from events.dead_letters import KeepSource
from transforms.pii import RedactPii
from transforms.rows import LEAD_COLUMNS, LEAD_JSON, LEAD_KEYS, lead_to_row
from transforms.scoring import ScoreLeads
from events.dead_letters import split_dead_letters

TOPICS = (topics.LEADS,)


def build(p: beam.Pipeline, opts) -> None:
    sink = opts.view_as(SinkOptions)
    xf = opts.view_as(TransformOptions)
    events, dead = read_and_validate(p, opts, TOPICS)
    dead_letters = [dead]
    leads, d = split_dead_letters(events[topics.LEADS] | "RedactLeads" >> RedactPii(xf.pii_policy_file, topics.LEADS))
    dead_letters.append(d)
    scored, d = split_dead_letters(leads | "ScoreLeads" >> ScoreLeads())
    dead_letters.append(d)
    dead_letters.append(scored
                        | "ToLeadRow" >> beam.Map(KeepSource(lead_to_row))
                        | "UpsertMarketoLeads" >> WriteToPostgres(
                            "marketo_leads", LEAD_KEYS, LEAD_COLUMNS, version_column="source_ts_ms",
                            json_columns=LEAD_JSON, batch_size=sink.pg_batch_size,
                            max_attempts=sink.pg_max_attempts, source_topic=topics.LEADS))
    write_dead_letters(opts, dead_letters, TOPICS)


def run(argv: Optional[List[str]] = None, wait: bool = True):
    return run_pipeline(build, argv, "leads", __doc__, TOPICS, wait)


if __name__ == "__main__":
    from beam_pipelines.common import main

    main("beam_pipelines.leads")  # imported under its name, so that workers can unpickle its functions
