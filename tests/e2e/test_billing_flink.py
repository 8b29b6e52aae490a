"""Billing pipeline on the Flink cluster: exact usage per account per event-time hour in `billing_usage`,
and the same totals (largest revision per key) on `billing.usage.metered`; duplicates counted once."""

from __future__ import annotations

import json
import time

import pytest

from events import topics
from tests.e2e.flink_helpers import (advance_watermarks, commit_group_at_end, end_offsets, poll, produce_with_offsets,
                                     read_from, running_pipeline)
from workloads.expected import billing_usage, own_accounts as _own_accounts
from workloads.generator import ToolWorkload, TurnWorkload

pytestmark = pytest.mark.e2e
HOUR_MS = 3_600_000


def test_billing_usage_per_account_hour_is_exact(stack, pg_conn, kafka_settings, run_id):
    from beam_pipelines import billing

    bootstrap = kafka_settings.bootstrap_servers
    hour = (int(time.time() * 1000) // HOUR_MS - 1) * HOUR_MS
    start = hour - 4 * 60_000  # the workload crosses an hour boundary
    turns = _own_accounts(TurnWorkload(seed=11, run_id=run_id, start_ms=start, sessions=30, accounts=3,
                                       max_disorder_ms=60_000).generate(400).records, run_id)
    tools = _own_accounts(ToolWorkload(seed=12, run_id=run_id, start_ms=start, sessions=30, accounts=3)
                          .generate(150).records, run_id)
    tools += tools[:10]  # replayed tool calls count once

    want = billing_usage(turns + tools)
    assert len({h for _, h in want}) == 2

    # Read exactly what this test produces: the group's offsets at the end first. (Not --start_read_time_ms: on
    # a broker that other runs fill, a record stamped in the future, e.g. a watermark heartbeat, makes
    # Kafka's offsetsForTimes start there, and the job read 1.5 million other records.)
    commit_group_at_end(f"e2e-billing-{run_id}", (topics.TURNS, topics.TOOLS), bootstrap)
    usage_start = end_offsets(topics.BILLING, bootstrap)
    produce_with_offsets(turns, topics.TURNS, bootstrap)
    produce_with_offsets(tools, topics.TOOLS, bootstrap)
    for topic in (topics.TURNS, topics.TOOLS):  # both hours close: final panes
        advance_watermarks(topic, bootstrap, hour + 2 * HOUR_MS + 60_000, run_id)

    # the README's command without --flink_master: the job server's own cluster (the local one)
    with running_pipeline(billing, run_id, None, "--early_firing_seconds=2", flink_master=False) as job:
        def rows():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT account_id, (extract(epoch from hour_start) * 1000)::bigint, turns, tokens_in, "
                            "tokens_out, tool_invocations, estimated_cost_usd, revision FROM billing_usage "
                            "WHERE account_id LIKE %s", (f"{run_id}-%",))
                got = {(r[0], r[1]): r[2:] for r in cur.fetchall()}
            ok = set(got) == set(want) and all(got[k][:4] == tuple(want[k][:4]) for k in want)
            return got if ok else None

        got = poll(rows, 180, "billing_usage to match the distinct usage per account and hour")
        for k, w in want.items():
            assert float(got[k][4]) == pytest.approx(w[4], abs=1e-5)
            assert got[k][5] == w[0] + w[3]  # revision: distinct items counted

        def published():
            best = {}
            for v in read_from(topics.BILLING, bootstrap, usage_start):
                m = json.loads(v)
                if m["account_id"].startswith(f"{run_id}-"):
                    k = (m["account_id"], m["hour_start_ms"])
                    if k not in best or m["revision"] > best[k]["revision"]:
                        best[k] = m
            ok = set(best) == set(want) and all(
                (best[k]["turns"], best[k]["tokens_in"], best[k]["tokens_out"], best[k]["tool_invocations"])
                == tuple(want[k][:4]) for k in want)
            return best if ok else None

        best = poll(published, 120, "billing.usage.metered to carry the same totals")
        assert all(best[k]["estimated_cost_usd"] == pytest.approx(want[k][4], abs=1e-5) for k in want)
        job.assert_running()
