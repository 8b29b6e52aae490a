"""End to end on the real Flink cluster: turns produced to the real broker land exactly once in Postgres
(redacted and scored), in Redis hot state and in session KPIs; malformed ones in the DLQ topic with a reason;
the job is listed RUNNING by Flink's REST API."""

from __future__ import annotations

import json
import time

import pytest

from io_connectors import topics
from tests.e2e.flink_helpers import (cancel_by_name, end_offsets, jobs_by_name, poll, produce_with_offsets,
                                     read_from)
import redis

from transforms.contracts import AgentTurnCompleted
from transforms.dead_letters import DeadLetter
from transforms.generator import TurnWorkload
from transforms.pii import PiiPolicy, Redactor, load_hmac_key
from transforms.scoring import PriceTable, Scored, score_turn
from transforms.turns import turn_to_row

pytestmark = pytest.mark.e2e


def test_kpi_turns_land_exactly_once_and_bad_records_go_to_dlq(stack, pg_conn, kafka_settings, redis_settings,
                                                                run_id):
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
    result = kpi.run([f"--job_name={job_name}", f"--consumer_group=e2e-{run_id}", "--session_gap_seconds=600",
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
                        "total_tokens, latency_ms, response_text, ts_ms, extract(epoch from \"timestamp\") * 1000, "
                        "model_family, quality_score, estimated_cost_usd, scorer_version "
                        "FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
            rows = {(r[0], r[1]): r for r in cur.fetchall()}
        assert set(rows) == set(work.expected), "agent_turns must hold exactly the distinct valid turns"
        redactor, prices = Redactor(PiiPolicy.load(), load_hmac_key()), PriceTable.load()
        for key, t in work.expected.items():
            r = rows[key]
            # the expected row: the same pure functions the pipeline applies (redact, then score)
            turn, _ = redactor.event(AgentTurnCompleted.model_validate(t))
            want = turn_to_row(Scored(turn, score_turn(turn, prices)))
            assert r[2:10] == (want["user_id"], t["account_id"], t["channel"], t["model_name"], t["tokens_in"],
                               t["tokens_out"], t["tokens_in"] + t["tokens_out"], pytest.approx(t["latency_ms"]))
            assert want["user_id"] != t["user_id"], "user_id must be pseudonymized"
            assert r[10] == want["response_text"] and r[11] == t["timestamp"] and int(r[12]) == t["timestamp"]
            assert (r[13], r[14], float(r[15]), r[16]) == (want["model_family"], want["quality_score"],
                                                           pytest.approx(want["estimated_cost_usd"], abs=1e-6),
                                                           want["scorer_version"])

        # Redis hot state: the newest turn (event time) of each session, and every distinct turn counted once
        latest, counts = {}, {}
        for (sid, tid), t in work.expected.items():
            counts[sid] = counts.get(sid, 0) + 1
            if sid not in latest or t["timestamp"] > latest[sid]["timestamp"]:
                latest[sid] = t
        r = redis.Redis(host=redis_settings.host, port=redis_settings.port, password=redis_settings.password or None)

        def redis_caught_up():
            return all(int(r.hget(f"session:{sid}:metrics", "total_turns") or 0) == n for sid, n in counts.items())

        poll(redis_caught_up, 120, "Redis session metrics")
        for sid, t in latest.items():
            state = r.hgetall(f"session:{sid}:state")
            assert state[b"last_turn_id"].decode() == t["turn_id"] and int(state[b"seq"]) == t["timestamp"]

        # session KPIs: early panes make every session's row visible while it is still open
        def kpis():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT session_id, turns, tokens_in, tokens_out FROM session_kpis "
                            "WHERE session_id LIKE %s", (f"{run_id}-%",))
                got = {row[0]: row[1:] for row in cur.fetchall()}
            want = {}
            for (sid, _), t in work.expected.items():
                n, ti, to = want.get(sid, (0, 0, 0))
                want[sid] = (n + 1, ti + t["tokens_in"], to + t["tokens_out"])
            return got == want

        poll(kpis, 120, "session_kpis to match the distinct turns per session")

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
