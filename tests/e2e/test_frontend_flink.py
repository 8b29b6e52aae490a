"""End to end on the real Flink cluster: frontend events of the three topics, produced to the real broker with
duplicates and malformed records, land exactly once in `frontend_analytics` (redacted and enriched), as
final per-session engagement rows in `frontend_session_engagement`, and malformed ones in each topic's DLQ."""

from __future__ import annotations

import json
import time
from typing import Dict, List, Tuple

import pytest

from events import topics
from tests.e2e.flink_helpers import (commit_group_at_end, end_offsets, poll, produce_with_offsets, read_from,
                                     readme_pipeline)
from events.dead_letters import DeadLetter
from transforms.keyed_totals import row_version
from workloads.expected import frontend_expected
from workloads.generator import (FrontendSessionWorkload, FrontendWorkload, ProducedRecord,
                                  WidgetPerformanceWorkload)
from transforms.rows import FRONTEND_COLUMNS
from io_connectors.settings import librdkafka_for

pytestmark = pytest.mark.e2e
GAP_S = 600


def _with_duplicates_and_garbage(records: List[ProducedRecord], run_id: str) -> List[ProducedRecord]:
    """Every 6th record twice (a producer retry), plus two malformed records whatever the seed gives."""
    out: List[ProducedRecord] = []
    for i, r in enumerate(records):
        out.append(r)
        if r.kind == "valid" and i % 6 == 0:
            out.append(ProducedRecord(r.key, r.value, r.timestamp_ms, "duplicate"))
    ts = records[-1].timestamp_ms
    out.append(ProducedRecord(b"bad", b"{not json at all", ts, "malformed"))
    out.append(ProducedRecord(b"bad", json.dumps({"session_id": f"{run_id}-bad", "timestamp": "soon"}).encode(),
                              ts, "malformed"))
    return out


def _produce_one_per_partition(records: List[ProducedRecord], topic: str, bootstrap: str) -> List[Tuple[int, int]]:
    """One record to each partition in turn. Beam's Kafka watermark of a partition that never got a record
    stays at the minimum and would hold every session window open, so the test feeds them all."""
    from confluent_kafka import Producer

    out: List[Tuple[int, int]] = [None] * len(records)  # type: ignore[list-item]
    p = Producer({**librdkafka_for(bootstrap), "enable.idempotence": True, "acks": "all"})
    for i, r in enumerate(records):
        def delivered(err, msg, i=i):
            if err is None:
                out[i] = (msg.partition(), msg.offset())
        p.produce(topic, key=r.key, value=r.value, timestamp=r.timestamp_ms, partition=i, on_delivery=delivered)
    p.flush(30)
    assert None not in out, "a record was not delivered"
    return out


def test_frontend_events_land_exactly_once_with_session_engagement_and_dlq(stack, pg_conn, kafka_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    start_ms = int(time.time() * 1000) - 3_600_000
    workloads = {
        topics.FRONTEND_INTERACTION: FrontendWorkload(seed=11, run_id=run_id, start_ms=start_ms, sessions=25,
                                                      pii_rate=0.3, malformed_rate=0.04),
        topics.FRONTEND_SESSION: FrontendSessionWorkload(seed=12, run_id=run_id, start_ms=start_ms, sessions=25,
                                                         malformed_rate=0.04),
        topics.FRONTEND_WIDGET: WidgetPerformanceWorkload(seed=13, run_id=run_id, start_ms=start_ms, sessions=25,
                                                          malformed_rate=0.04),
    }
    sizes = {topics.FRONTEND_INTERACTION: 240, topics.FRONTEND_SESSION: 40, topics.FRONTEND_WIDGET: 40}
    partitions = {t.name: t.partitions for t in topics.TOPICS}

    produced: Dict[str, List[ProducedRecord]] = {}
    positions: Dict[str, List[Tuple[int, int]]] = {}
    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in workloads}
    # The job reads exactly what this test produces: from the group's offsets, committed at the topics' end now.
    # Starting at a timestamp (`--start_read_time_ms`) would also read every record other tests produced in the
    # last hour (the collector's and producers' carry the current time): the CreateTime watermark would jump to
    # now and close these hour-old sessions before their later events are read (late_data, partial sessions).
    commit_group_at_end(f"e2e-frontend-{run_id}", list(workloads), bootstrap)
    for topic, w in workloads.items():
        recs = w.generate(sizes[topic] + partitions[topic]).records
        spread = [r for r in recs if r.kind == "valid"][-partitions[topic]:]
        main = _with_duplicates_and_garbage([r for r in recs if not any(r is s for s in spread)], run_id)
        produced[topic] = main + spread
        positions[topic] = (produce_with_offsets(main, topic, bootstrap)
                            + _produce_one_per_partition(spread, topic, bootstrap))
    kinds = {r.kind for recs in produced.values() for r in recs}
    assert kinds == {"valid", "duplicate", "malformed"}

    # final rows once a session is inactive for gap + lateness (the data is an hour old: soon after catching up)
    with readme_pipeline("frontend", run_id, None, f"--session_gap_seconds={GAP_S}",
                         "--allowed_lateness_seconds=600", "--early_firing_seconds=2") as job:
        # Expected values: the pure functions the pipeline applies (validate, redact, enrich, build the row).
        want_rows, sessions = frontend_expected(produced)
        want_engagement = {sid: (s["user_id"], s["events"], s["duration_ms"], s["furthest_stage"], s["first_ms"],
                                 s["last_ms"], True, row_version(s["last_ms"], s["events"], True))
                           for sid, s in sessions.items()}
        assert len(want_rows) == sum(sizes.values()) + sum(partitions[t] for t in workloads)

        cols = ", ".join(f'"{c}"' for c in FRONTEND_COLUMNS)

        def analytics():
            with pg_conn.cursor() as cur:
                cur.execute(f"SELECT {cols} FROM frontend_analytics WHERE session_id LIKE %s", (f"{run_id}-%",))
                got = {r[0]: dict(zip(FRONTEND_COLUMNS, r)) for r in cur.fetchall()}
            return got if len(got) >= len(want_rows) else None

        got = poll(analytics, 60, f"{len(want_rows)} events in frontend_analytics")
        assert set(got) == set(want_rows), "frontend_analytics must hold exactly the distinct valid events"
        for event_id, want in want_rows.items():
            # JSON columns come back parsed; compare them as the sink serialised them
            want = {**want, **{c: json.loads(json.dumps(want[c], default=str)) for c in ("metadata",
                                                                                      "transformation_metadata")}}
            assert got[event_id] == want, event_id
        assert any(w["user_id"] for w in want_rows.values())
        raw_users = {json.loads(r.value).get("user_id") for recs in produced.values() for r in recs
                     if r.kind == "valid"} - {None}
        assert not raw_users & {r["user_id"] for r in got.values()}, "user_id must be pseudonymized"

        def engagement():
            with pg_conn.cursor() as cur:
                cur.execute("SELECT session_id, user_id, events, duration_ms, furthest_stage, started_at, ended_at, "
                            "is_final, pane_version FROM frontend_session_engagement WHERE session_id LIKE %s",
                            (f"{run_id}-%",))
                return {r[0]: (r[1], r[2], r[3], r[4], int(r[5].timestamp() * 1000), int(r[6].timestamp() * 1000),
                               r[7], r[8]) for r in cur.fetchall()}

        try:
            poll(lambda: engagement() == want_engagement, 45, "final engagement rows for every session")
        except AssertionError:
            got_e = engagement()
            diff = {k: (got_e.get(k), v) for k, v in want_engagement.items() if got_e.get(k) != v}
            raise AssertionError(f"engagement rows differ (got, want): {dict(list(diff.items())[:5])}") from None

        for topic, recs in produced.items():
            bad = {positions[topic][i] for i, r in enumerate(recs) if r.kind == "malformed"}
            good = {positions[topic][i] for i, r in enumerate(recs) if r.kind != "malformed"}

            def dead_letters(topic=topic, bad=bad):
                found = {}
                for v in read_from(topics.dlq_topic(topic), bootstrap, dlq_start[topic]):
                    dl = DeadLetter.from_json(v)
                    if dl.source_topic == topic:
                        found[(dl.source_partition, dl.source_offset)] = dl
                return found if bad <= set(found) else None

            found = poll(dead_letters, 30, f"{len(bad)} malformed records in {topics.dlq_topic(topic)}")
            assert not (good & set(found)), f"a valid {topic} record was dead-lettered"
            by_pos = dict(zip(positions[topic], recs))
            for pos in bad:
                dl = found[pos]
                assert dl.error_class in ("invalid_json", "not_utf8", "schema_violation", "not_a_json_object")
                assert dl.step and dl.error_message
                assert dl.raw_payload() == by_pos[pos].value  # the original payload, byte for byte

        job.assert_running()
