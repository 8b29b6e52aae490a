"""The KPI topics' share of the hostile corpus (workloads/hostile.py) on the real broker and Flink, the KPI
pipeline started with the README's command: no job restart, every valid turn intact in Postgres (`agent_turns`,
NUL as U+FFFD) and Redis (exactly, NUL included), every bad record of the three topics in its DLQ with its
labelled error class and a reason (distinct source offsets), and no valid record dead-lettered.

    .venv/bin/python -m pytest tests/e2e/test_hostile_flink.py -m e2e

The corpus' 10 MB records never reach the pipeline: the producer refuses them (the broker's 1 MiB limit),
which the test checks too. Rows and keys live under a `hostile-<run id>` prefix and are deleted afterwards.
"""

from __future__ import annotations

import time

import pytest

from events import topics
from events.contracts import AgentTurnCompleted
from io_connectors.postgres import pg_text
from tests.e2e.flink_helpers import (commit_group_at_end, dead_letters_at, end_offsets, poll, produce_with_offsets,
                                     readme_pipeline, wait_for_rows)
from transforms.pii import PiiPolicy, Redactor, load_hmac_key
from transforms.scoring import PriceTable, Scored, score_turn
from transforms.turns import session_state_event, turn_to_row
from workloads.generator import ProducedRecord
from workloads.hostile import DEAD, VALID, hostile_corpus
from io_connectors.settings import librdkafka_for
from io_connectors.clients import redis_client

pytestmark = pytest.mark.e2e
KPI_TOPICS = (topics.TURNS, topics.TOOLS, topics.SESSIONS)
BIG = {"message.max.bytes": 1048576}  # librdkafka's default is 1,000,000: the near-limit records need the broker's


def test_hostile_kpi_topics_on_flink(stack, pg_conn, kafka_settings, redis_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    prefix = f"hostile-{run_id}"
    corpus = hostile_corpus(prefix, int(time.time() * 1000) - 3_600_000, topic_names=KPI_TOPICS)
    by_topic = {t: [r for r in corpus if r.topic == t and r.producible] for t in KPI_TOPICS}
    assert sum(map(len, by_topic.values())) >= 3_000

    # the 10 MB payloads: refused by the producer, so no pipeline ever reads them
    from confluent_kafka import KafkaError, KafkaException, Producer

    huge = [r for r in corpus if not r.producible]
    assert huge and all(r.expect == DEAD for r in huge)
    with pytest.raises(KafkaException) as e:
        Producer({**librdkafka_for(bootstrap), **BIG}).produce(topics.TURNS, huge[0].value)
    assert e.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE

    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in KPI_TOPICS}
    commit_group_at_end(f"e2e-kpi-{run_id}", KPI_TOPICS, bootstrap)
    positions = {t: produce_with_offsets([ProducedRecord(r.key, r.value, r.timestamp_ms, r.expect) for r in recs],
                                         t, bootstrap, extra_config=BIG)
                 for t, recs in by_topic.items()}

    redactor, prices = Redactor(PiiPolicy.load(), load_hmac_key()), PriceTable.load()
    turns = [r for r in by_topic[topics.TURNS] if r.expect == VALID]
    expected = {}
    for r in turns:
        turn, _ = redactor.event(AgentTurnCompleted.model_validate(r.doc))
        row = turn_to_row(Scored(turn, score_turn(turn, prices)))
        expected[(pg_text(row["session_id"]), pg_text(row["turn_id"]))] = (r, turn, row)
    assert len(expected) == len(turns), "valid hostile turns must have distinct keys"

    try:
        with readme_pipeline("kpi", run_id, None, "--early_firing_seconds=2") as job:
            wait_for_rows(pg_conn, "agent_turns", "session_id", f"{prefix}-", len(expected), 150)
            with pg_conn.cursor() as cur:
                cur.execute("SELECT session_id, turn_id, user_id, model, tokens_in, tokens_out, response_text, ts_ms, "
                            "estimated_cost_usd, quality_score FROM agent_turns WHERE session_id LIKE %s",
                            (f"{prefix}-%",))
                rows = {(r[0], r[1]): r for r in cur.fetchall()}
            assert set(rows) == set(expected), "agent_turns must hold exactly the valid hostile turns"
            wrong = []
            for key, (r, _turn, want) in expected.items():
                got = rows[key]
                if got[2:8] != tuple(pg_text(v) if isinstance(v, str) else v for v in (
                        want["user_id"], want["model"], want["tokens_in"], want["tokens_out"], want["response_text"],
                        want["ts_ms"])) \
                        or float(got[8]) != pytest.approx(want["estimated_cost_usd"], abs=1e-6) \
                        or got[9] != want["quality_score"]:
                    wrong.append((r.case, got[2:10], want["response_text"][:40]))
            assert not wrong, f"{len(wrong)} rows differ, e.g. {wrong[:5]}"

            # Redis: per session the newest turn's text, exactly (NUL included), and every turn counted once
            states = [session_state_event(Scored(turn, {})) for _r, turn, _row in expected.values()]
            latest, counts = {}, {}
            for s in states:
                counts[s["session_id"]] = counts.get(s["session_id"], 0) + 1
                if s["session_id"] not in latest or s["seq"] > latest[s["session_id"]]["seq"]:
                    latest[s["session_id"]] = s
            client = redis_client(redis_settings)
            poll(lambda: all(int(client.hget(f"session:{sid}:metrics", "total_turns") or 0) == n
                             for sid, n in counts.items()), 90, "Redis session metrics of the hostile turns")
            bad_state = [sid for sid, s in latest.items()
                         if client.hget(f"session:{sid}:state", "last_message").decode("utf-8") != s["message"]
                         or client.hget(f"session:{sid}:state", "last_turn_id").decode("utf-8") != s["turn_id"]]
            assert not bad_state, f"{len(bad_state)} sessions' state differs, e.g. {bad_state[:3]}"
            assert any("\x00" in s["message"] for s in latest.values())

            # dead letters: every bad record of each topic once in its own DLQ, with its class and a reason
            for t, recs in by_topic.items():
                bad = {positions[t][i]: r for i, r in enumerate(recs) if r.expect == DEAD}
                good = {positions[t][i] for i, r in enumerate(recs) if r.expect == VALID}
                found = poll(lambda: (lambda f: f if set(bad) <= set(f) else None)(
                    dead_letters_at(t, bootstrap, dlq_start[t], set(bad) | good)), 120,
                    f"{len(bad)} hostile records in {t}.dlq")
                assert not (good & set(found)), f"a valid record of {t} was dead-lettered"
                wrong = [(r.case, found[pos].error_class) for pos, r in bad.items()
                         if found[pos].error_class != r.error_class or not found[pos].error_message]
                assert not wrong, f"{len(wrong)} dead letters of {t} with the wrong class, e.g. {wrong[:5]}"
                for pos, r in bad.items():
                    if r.case.startswith("size:near_limit"):
                        assert found[pos].payload_truncated and found[pos].payload_bytes == len(r.value), r.case
            job.assert_running()
    finally:
        with pg_conn.cursor() as cur:
            for table in ("agent_turns", "session_kpis"):
                cur.execute(f"DELETE FROM {table} WHERE session_id LIKE %s", (f"{prefix}-%",))
        c = redis_client(redis_settings)
        keys = list(c.scan_iter(match=f"session:{prefix}-*", count=1000))
        if keys:
            c.delete(*keys)

