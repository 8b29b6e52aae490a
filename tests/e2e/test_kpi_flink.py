"""End to end on the real Flink cluster: turns produced to the real broker land exactly once in Postgres,
malformed ones in the DLQ topic with a reason; the job is listed RUNNING by Flink's REST API."""

from __future__ import annotations

import json
import time

import pytest

from io_connectors import topics
from tests.e2e.flink_helpers import (cancel_by_name, end_offsets, jobs_by_name, poll, produce_with_offsets,
                                     read_from)
from transforms.dead_letters import DeadLetter
from transforms.generator import TurnWorkload

pytestmark = pytest.mark.e2e


def test_kpi_turns_land_exactly_once_and_bad_records_go_to_dlq(stack, pg_conn, kafka_settings, run_id):
    from beam_pipelines import kpi

    bootstrap = kafka_settings.bootstrap_servers
    now_ms = int(time.time() * 1000)
    work = TurnWorkload(seed=42, run_id=run_id, start_ms=now_ms - 3_600_000, sessions=60).generate(1000)
    kinds = {r.kind for r in work.records}
    assert kinds == {"valid", "duplicate", "malformed"} and work.malformed_count >= 20
    assert any(a.timestamp_ms > b.timestamp_ms for a, b in zip(work.records, work.records[1:])), "no disorder"

    dlq_start = end_offsets(topics.dlq_topic(topics.TURNS), bootstrap)
    positions = produce_with_offsets(work.records, topics.TURNS, bootstrap)
    first_ts = min(r.timestamp_ms for r in work.records)

    job_name = f"e2e-kpi-{run_id}"
    result = kpi.run([f"--job_name={job_name}", f"--consumer_group=e2e-{run_id}",
                      f"--start_read_time_ms={first_ts - 1}", "--parallelism=2"], wait=False)
    try:
        poll(lambda: any(j["state"] == "RUNNING" for j in jobs_by_name(job_name)), 120, "Flink to list the job RUNNING")

        def landed():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
                return cur.fetchone()[0] >= len(work.expected)

        poll(landed, 240, f"{len(work.expected)} turns in agent_turns")

        with pg_conn.cursor() as cur:
            cur.execute("SELECT session_id, turn_id, user_id, account_id, channel, model, tokens_in, tokens_out, "
                        "total_tokens, latency_ms, response_text, ts_ms, extract(epoch from \"timestamp\") * 1000 "
                        "FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
            rows = {(r[0], r[1]): r for r in cur.fetchall()}
        assert set(rows) == set(work.expected), "agent_turns must hold exactly the distinct valid turns"
        for key, t in work.expected.items():
            r = rows[key]
            assert r[2:10] == (t["user_id"], t["account_id"], t["channel"], t["model_name"], t["tokens_in"],
                               t["tokens_out"], t["tokens_in"] + t["tokens_out"], pytest.approx(t["latency_ms"]))
            assert r[10] == t["response_text"] and r[11] == t["timestamp"] and int(r[12]) == t["timestamp"]

        bad = {positions[i] for i, rec in enumerate(work.records) if rec.kind == "malformed"}
        good = {positions[i] for i, rec in enumerate(work.records) if rec.kind != "malformed"}

        def dead_letters():
            found = {}
            for v in read_from(topics.dlq_topic(topics.TURNS), bootstrap, dlq_start):
                dl = DeadLetter.from_json(v)
                if dl.source_topic == topics.TURNS:
                    found[(dl.source_partition, dl.source_offset)] = dl
            return found if bad <= set(found) else None

        found = poll(dead_letters, 120, f"{len(bad)} malformed records in the DLQ")
        assert not (good & set(found)), "a valid record was dead-lettered"
        by_pos = {positions[i]: rec for i, rec in enumerate(work.records)}
        for pos in bad:
            dl = found[pos]
            assert dl.error_class and dl.error_message and dl.step
            assert dl.raw_payload() == by_pos[pos].value  # the original payload, byte for byte

        assert any(j["state"] == "RUNNING" for j in jobs_by_name(job_name))
    finally:
        cancel_by_name(job_name)
        try:
            result.cancel()
        except Exception:  # noqa: BLE001 - already cancelled through Flink
            pass
