"""End to end on the real Flink cluster, started with the README's command in a subprocess: turns produced to
the real broker land exactly once in Postgres (redacted and scored) and in Redis hot state; session KPIs hold
the whole session's totals although every session pauses for hours; malformed records of each of the three
topics land in that topic's DLQ with their partition and offset; the job runs without restarts."""

from __future__ import annotations

import time
import pytest

from events import topics
from tests.e2e.flink_helpers import (commit_group_at_end, dead_letters_at, end_offsets, poll, produce_with_offsets,
                                     readme_pipeline)

from events.contracts import AgentTurnCompleted
from workloads.expected import kpi_redis_state, kpi_session_totals as _session_totals
from workloads.generator import SessionWorkload, ToolWorkload, TurnWorkload
from transforms.pii import PiiPolicy, Redactor, load_hmac_key
from transforms.scoring import PriceTable, Scored, score_turn
from transforms.turns import turn_to_row
from io_connectors.clients import redis_client

pytestmark = pytest.mark.e2e
HOUR_MS = 3_600_000


def test_kpi_readme_command_lands_turns_whole_sessions_and_dead_letters_per_topic(
        stack, pg_conn, kafka_settings, redis_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    now_ms = int(time.time() * 1000)
    # Every session talks twice, three hours apart (far longer than gap + lateness = 20 min): its state
    # closes in between, and its row must still be the whole session.
    early = TurnWorkload(seed=42, run_id=run_id, start_ms=now_ms - 4 * HOUR_MS, sessions=30).generate(400)
    later = TurnWorkload(seed=43, run_id=run_id, start_ms=now_ms - HOUR_MS, sessions=30,
                         turn_prefix="r").generate(200)
    tools = ToolWorkload(seed=5, run_id=run_id, start_ms=now_ms - 4 * HOUR_MS + 60_000, sessions=30,
                         malformed_rate=0.08).generate(120)
    updates = SessionWorkload(seed=6, run_id=run_id, start_ms=now_ms - 4 * HOUR_MS, sessions=30,
                              malformed_rate=0.15).generate(60)
    expected = {**early.expected, **later.expected}
    assert len(expected) == 600 and early.malformed_count >= 10
    paused = {sid for sid, _ in early.expected} & {sid for sid, _ in later.expected}
    assert len(paused) >= 25, "most sessions must pause for hours"

    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in (topics.TURNS, topics.TOOLS, topics.SESSIONS)}
    commit_group_at_end(f"e2e-kpi-{run_id}", (topics.TURNS, topics.TOOLS, topics.SESSIONS), bootstrap)
    produced = {topics.TURNS: early.records + later.records, topics.TOOLS: tools.records,
                topics.SESSIONS: updates.records}
    positions = {t: produce_with_offsets(recs, t, bootstrap) for t, recs in produced.items()}

    # the job reads the group's committed offsets: exactly the records produced above
    with readme_pipeline("kpi", run_id, None, "--session_gap_seconds=600",
                         "--allowed_lateness_seconds=600", "--early_firing_seconds=2") as job:
        def landed():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
                return cur.fetchone()[0] >= len(expected)

        poll(landed, 240, f"{len(expected)} turns in agent_turns")

        with pg_conn.cursor() as cur:
            cur.execute("SELECT session_id, turn_id, user_id, account_id, channel, model, tokens_in, tokens_out, "
                        "total_tokens, latency_ms, response_text, ts_ms, extract(epoch from \"timestamp\") * 1000, "
                        "model_family, quality_score, estimated_cost_usd, scorer_version "
                        "FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
            rows = {(r[0], r[1]): r for r in cur.fetchall()}
        assert set(rows) == set(expected), "agent_turns must hold exactly the distinct valid turns"
        redactor, prices = Redactor(PiiPolicy.load(), load_hmac_key()), PriceTable.load()
        for key, t in expected.items():
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
        latest, counts = kpi_redis_state(expected)
        r = redis_client(redis_settings)

        def redis_caught_up():
            return all(int(r.hget(f"session:{sid}:metrics", "total_turns") or 0) == n for sid, n in counts.items())

        poll(redis_caught_up, 120, "Redis session metrics")
        for sid, t in latest.items():
            state = r.hgetall(f"session:{sid}:state")
            assert state[b"last_turn_id"].decode() == t["turn_id"] and int(state[b"seq"]) == t["timestamp"]

        # session KPIs: each session's whole life (both of its bursts, duplicates once, out-of-order turns
        # counted), final once inactive for gap + lateness
        want_kpis = _session_totals(expected.values(), tools.events)
        got = {}

        def kpis():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT session_id, turns, tokens_in, tokens_out, tool_calls, avg_latency_ms, started_at, "
                            "ended_at, is_final FROM session_kpis WHERE session_id LIKE %s", (f"{run_id}-%",))
                got.clear()
                got.update({row[0]: row[1:] for row in cur.fetchall()})
            return set(got) == set(want_kpis) and all(
                g[:4] == w[:4] and g[5:7] == w[5:] and g[7] for sid, w in want_kpis.items() for g in (got[sid],))

        try:
            poll(kpis, 180, "session_kpis to hold every session's whole totals, final")
        except AssertionError:
            wrong = {sid: (got.get(sid), w) for sid, w in want_kpis.items() if got.get(sid, ())[:4] != w[:4]}
            times = [sid for sid, w in want_kpis.items() if sid in got and got[sid][5:7] != w[5:]]
            open_ = [sid for sid in want_kpis if sid in got and not got[sid][7]]
            raise AssertionError(
                f"{len(want_kpis) - len(set(got) & set(want_kpis))} sessions missing, {len(wrong)} differ in counts "
                f"(got, want), e.g. {list(wrong.items())[:3]}; {len(times)} differ in started/ended, e.g. "
                f"{[(got[s][5:7], want_kpis[s][5:]) for s in times[:2]]}; {len(open_)} not final\n{job.diagnosis()}")
        for sid, w in want_kpis.items():
            assert got[sid][4] == pytest.approx(w[4], abs=2e-3), sid  # both sides round to 3 decimals

        # dead letters: each topic's malformed records in its own DLQ, with partition and offset
        for topic, recs in produced.items():
            bad = {positions[topic][i] for i, rec in enumerate(recs) if rec.kind == "malformed"}
            good = {positions[topic][i] for i, rec in enumerate(recs) if rec.kind != "malformed"}
            assert bad, topic
            found = poll(lambda: (lambda f: f if bad <= set(f) else None)(
                dead_letters_at(topic, bootstrap, dlq_start[topic], bad | good)), 120,
                f"{len(bad)} malformed records in {topic}.dlq")
            assert not (good & set(found)), f"a valid record of {topic} was dead-lettered"
            by_pos = {positions[topic][i]: rec for i, rec in enumerate(recs)}
            for pos in bad:
                dl = found[pos]
                assert dl.error_class and dl.error_message and dl.step
                assert dl.raw_payload() == by_pos[pos].value  # the original payload, byte for byte

        # The sessions come back now, after their rows went final and their state was released: a new
        # generation of state, which the session_kpis merge adds to the stored row (the whole session again).
        back = TurnWorkload(seed=44, run_id=run_id, start_ms=int(time.time() * 1000) - 120_000, sessions=30,
                            turn_prefix="n", duplicate_rate=0.0, malformed_rate=0.0).generate(60)
        produce_with_offsets(back.records, topics.TURNS, bootstrap)
        returned = {sid for sid, _ in back.expected}
        want_kpis = _session_totals([*expected.values(), *back.expected.values()], tools.events)

        def resumed():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT session_id, turns, tokens_in, tokens_out, tool_calls, generations, is_final "
                            "FROM session_kpis WHERE session_id LIKE %s", (f"{run_id}-%",))
                got.clear()
                got.update({row[0]: row[1:] for row in cur.fetchall()})
            return all(got[sid][:4] == w[:4] and (got[sid][4:] == (2, False) if sid in returned else got[sid][5])
                       for sid, w in want_kpis.items())

        try:
            poll(resumed, 120, "session_kpis to add the sessions' third burst as a second generation")
        except AssertionError:
            wrong = {sid: (got.get(sid), w[:4]) for sid, w in want_kpis.items() if got.get(sid, ())[:4] != w[:4]}
            raise AssertionError(f"{len(wrong)} sessions differ (got, want), e.g. {list(wrong.items())[:3]}\n"
                                 f"{job.diagnosis()}")
        job.assert_running()


def test_kpi_sessions_go_final_although_two_of_its_three_topics_stay_quiet(stack, pg_conn, kafka_settings, run_id):
    """Turns only: no record on agent.tool.invoked or text.agent.session.updated since the job started. With
    Beam's own CreateTime policy those partitions hold the job's watermark at the minimum and no session ever
    goes final (measured: 30 sessions, 0 final after 10 minutes); our read lets them go idle after
    --idle_partition_timeout_seconds, and every session closes once inactive for gap + lateness."""
    bootstrap = kafka_settings.bootstrap_servers
    now_ms = int(time.time() * 1000)
    turns = TurnWorkload(seed=77, run_id=run_id, start_ms=now_ms - 200_000, sessions=30, duplicate_rate=0.0,
                         malformed_rate=0.0).generate(200)
    group = f"e2e-kpi-{run_id}"
    commit_group_at_end(group, (topics.TURNS, topics.TOOLS, topics.SESSIONS), bootstrap)
    produce_with_offsets(turns.records, topics.TURNS, bootstrap)
    want = {}
    for sid, _ in turns.expected:
        want[sid] = want.get(sid, 0) + 1
    got = {}

    with readme_pipeline("kpi", run_id, None, "--session_gap_seconds=15", "--allowed_lateness_seconds=15",
                         "--early_firing_seconds=2", "--idle_partition_timeout_seconds=10") as job:
        def final():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT session_id, turns, is_final FROM session_kpis WHERE session_id LIKE %s",
                            (f"{run_id}-%",))
                got.clear()
                got.update({row[0]: row[1:] for row in cur.fetchall()})
            return all(got.get(sid) == (n, True) for sid, n in want.items())

        try:
            poll(final, 150, f"{len(want)} sessions final in session_kpis")
        except AssertionError:
            open_ = [sid for sid in want if sid in got and not got[sid][1]]
            raise AssertionError(f"{len(want) - len(set(got) & set(want))} sessions missing, {len(open_)} not final "
                                 f"of {len(want)}; wrong turn counts: "
                                 f"{[(s, got[s][0], n) for s, n in want.items() if s in got and got[s][0] != n][:3]}"
                                 f"\n{job.diagnosis()}")
        job.assert_running()
