"""WriteSessionState against the real local Redis (AUTH): replay, older-event guard, TTL, dead letters.

    .venv/bin/python -m pytest tests/integration/test_redis_state.py -m integration
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from io_connectors.redis_state import SessionStateWriter, WriteSessionState, connect

pytestmark = pytest.mark.integration
T0 = 1767258000000  # 2026-01-01T09:00:00Z


def event(sid, seq, rt=100.0, **over):
    e = {"session_id": sid, "turn_id": f"turn-{seq}", "seq": seq, "event_time_ms": T0 + seq * 1000,
         "message": f"reply {seq} to [EMAIL]", "channel": "web_chat", "status": "active", "response_time_ms": rt}
    e.update(over)
    return e


@pytest.fixture
def client(redis_settings, run_id):
    c = connect(redis_settings)
    yield c
    keys = list(c.scan_iter(match=f"session:{run_id}-*"))
    if keys:
        c.delete(*keys)
    c.close()


def snapshot(client, sids):
    return {sid: (client.hgetall(f"session:{sid}:state"), client.hgetall(f"session:{sid}:metrics"),
                  client.smembers(f"session:{sid}:turns")) for sid in sids}


def run_write(events, expected_dead=(), **kw):
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        dead = p | beam.Create(events) | WriteSessionState(source_topic="text.agent.turn.completed", **kw)
        assert_that(dead | beam.Map(lambda d: (d.step, d.error_message.split(":")[0], d.source_topic)),
                    equal_to(list(expected_dead)))


def test_write_twice_gives_the_same_state(client, run_id):
    sids = [f"{run_id}-a", f"{run_id}-b"]
    events = [event(sid, seq, rt=100.0 * seq) for sid in sids for seq in range(1, 6)]
    bad = {"session_id": f"{run_id}-a", "turn_id": "x"}  # no seq, no event time
    dead = [("WriteSessionState", "invalid session event", "text.agent.turn.completed")]
    run_write(events + [bad], expected_dead=dead, ttl_seconds=600, batch_size=4)
    first = snapshot(client, sids)
    run_write(list(reversed(events)) + [bad], expected_dead=dead, ttl_seconds=600, batch_size=3)  # replay
    assert snapshot(client, sids) == first
    state, metrics, _ = first[sids[0]]
    assert state == {b"last_turn_id": b"turn-5", b"last_message": b"reply 5 to [EMAIL]", b"seq": b"5",
                     b"updated_at": b"2026-01-01T09:00:05.000Z", b"channel": b"web_chat", b"status": b"active"}
    assert metrics[b"total_turns"] == b"5"
    assert metrics[b"avg_response_time"] == b"300.0"
    assert metrics[b"last_activity"] == b"2026-01-01T09:00:05.000Z"
    for sid in sids:
        for kind in ("state", "metrics", "turns"):
            assert 0 < client.ttl(f"session:{sid}:{kind}") <= 600


def test_an_older_event_never_overwrites_newer_state(client, redis_settings, run_id):
    sid = f"{run_id}-late"
    w = SessionStateWriter(ttl_seconds=0, settings=redis_settings)
    w.connect()
    try:
        assert w.write([event(sid, 5, rt=500.0), event(sid, 9, rt=900.0, status="closed")]) == []
        before = client.hgetall(f"session:{sid}:state")
        # late turn 3 (never seen) and a replay of turn 9 with different content
        assert w.write([event(sid, 3, rt=300.0, message="late"), event(sid, 9, message="replayed")]) == []
    finally:
        w.close()
    assert client.hgetall(f"session:{sid}:state") == before
    assert before[b"seq"] == b"9" and before[b"status"] == b"closed"
    metrics = client.hgetall(f"session:{sid}:metrics")
    assert metrics[b"total_turns"] == b"3"            # the late turn counts once, the replay not at all
    assert metrics[b"avg_response_time"] == b"566.7"  # (500 + 900 + 300) / 3
    assert metrics[b"last_activity"] == b"2026-01-01T09:00:09.000Z"
    assert client.ttl(f"session:{sid}:state") == -1   # ttl_seconds=0: no expiry


def test_invalid_events_are_refused_not_written(client, redis_settings, run_id):
    bad_seq = dict(event(f"{run_id}-x", 7), seq="7")
    w = SessionStateWriter(settings=redis_settings)
    w.connect()
    try:
        refused = w.write([bad_seq, event(f"{run_id}-y", 1, response_time_ms="slow"),
                           event(f"{run_id}-z", 1)])
    finally:
        w.close()
    assert [r[0]["session_id"] for r in refused] == [f"{run_id}-x", f"{run_id}-y"]
    assert client.exists(f"session:{run_id}-x:state") == 0
    assert client.hget(f"session:{run_id}-z:state", "seq") == b"1"
