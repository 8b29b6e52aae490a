"""Unit tests of the Marketo client: error mapping, backoff bounds, the call gate, and the client against the
in-process fake Marketo (no other services)."""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time

import pytest

from io_connectors.marketo import (Action, CallGate, MarketoClient, MarketoConfig, MarketoError,
                                   MarketoQuotaExceeded, MarketoRetriesExhausted, backoff_delay, classify)
from tests.marketo_fake_server import FakeMarketo

pytestmark = pytest.mark.unit
SECRET = "unit-test-secret-do-not-log"


@pytest.mark.parametrize("code,message,action", [
    ("601", "Access token invalid", Action.REAUTH), ("602", "Access token expired", Action.REAUTH),
    ("604", "", Action.RETRY), ("606", "", Action.RETRY), ("608", "", Action.RETRY), ("611", "", Action.RETRY),
    ("615", "", Action.RETRY), ("713", "", Action.RETRY), ("607", "Daily quota reached", Action.STOP),
    ("1029", "Too many jobs (10) in queue", Action.RETRY), ("1029", "Export daily quota 500MB exceeded", Action.STOP),
    ("1029", "Job already queued", Action.DONE),
    ("1003", "Invalid filter", Action.FAIL), ("1035", "Unsupported filter type", Action.FAIL), ("610", "", Action.FAIL),
])
def test_classify_maps_every_documented_code(code, message, action):
    assert classify(code, message) is action


def test_backoff_is_jittered_exponential_and_capped():
    rng = random.Random(7)
    for attempt in range(12):
        d = min(30.0, 0.5 * 2 ** attempt)
        samples = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(d / 2 <= s <= d for s in samples)
        assert max(samples) - min(samples) > d / 10  # jittered, not constant
    assert backoff_delay(50, 1.0, 60.0, rng) <= 60.0


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_gate_never_allows_more_than_n_calls_in_any_window():
    clock = _FakeClock()
    gate = CallGate(calls=5, window=20.0, max_concurrency=5, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(23):
        tok = gate.acquire()
        starts.append(clock.now)
        clock.now += 0.1  # the call takes 100 ms
        gate.release(tok)
    for i, t in enumerate(starts):
        assert sum(1 for u in starts if t <= u < t + 20.0) <= 5
    assert starts[5] >= starts[0] + 0.1 + 20.0  # the token came back a window after its call *ended*
    assert starts[-1] < 4 * 20.1 + 1  # and it does not wait longer than needed


def test_gate_preload_carries_a_previous_runs_calls():
    clock = _FakeClock()
    clock.now = 100.0
    gate = CallGate(calls=3, window=10.0, max_concurrency=3, clock=clock, sleep=clock.sleep)
    gate.preload([99.0, 99.5, 100.0])
    gate.acquire()
    assert clock.now == pytest.approx(109.0)


def test_gate_takes_back_a_token_whose_call_was_never_sent():
    clock = _FakeClock()
    gate = CallGate(calls=2, window=10.0, max_concurrency=1, clock=clock, sleep=clock.sleep)
    used = gate.acquire()
    clock.now = 1.0
    gate.release(used)  # a call that was sent: its token comes back at 11.0
    unused = gate.acquire()
    gate.give_back(unused)  # never sent: free again at once, and no longer in flight
    assert gate.recent() == [pytest.approx(1.0)]
    gate.release(gate.acquire())
    assert clock.now == pytest.approx(1.0)  # no wait: the given-back token was free
    gate.acquire()
    assert clock.now == pytest.approx(11.0)  # both tokens used by sent calls now


def test_gate_limits_concurrency_across_threads():
    gate = CallGate(calls=100, window=0.01, max_concurrency=3)
    live, peak, lock = [0], [0], threading.Lock()

    def worker():
        for _ in range(5):
            tok = gate.acquire()
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            time.sleep(0.01)
            with lock:
                live[0] -= 1
            gate.release(tok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert peak[0] == 3


@pytest.fixture
def fake():
    server = FakeMarketo(client_secret=SECRET, token_ttl=3)
    url = server.start()
    server.url = url
    yield server
    server.stop()


def _client(fake, **kw):
    cfg = dict(calls_per_window=100, window_seconds=1.0, max_concurrency=5, backoff_base_seconds=0.01,
               backoff_max_seconds=0.05, timeout_seconds=0.5, max_attempts=5)
    cfg.update(kw)
    return MarketoClient(MarketoConfig(fake.url, "test-client-id", SECRET, **cfg))


def test_retryable_codes_5xx_and_timeouts_are_retried(fake, caplog):
    caplog.set_level(logging.DEBUG)
    for kind in ("606", "615", "604", "608", "611", "713", "http_500", "http_503"):
        fake.inject(kind, "pagingtoken")
    fake.inject("slow", "pagingtoken", arg=1.0)  # longer than the 0.5 s timeout
    client = _client(fake, max_attempts=12)
    assert client.paging_token(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert set(client.stats.retries) >= {"606", "615", "604", "608", "611", "713", "http_5xx", "timeout"}
    assert SECRET not in caplog.text and "Bearer" not in caplog.text


def test_token_is_refreshed_before_expiry_and_on_601_602(fake):
    client = _client(fake)
    since = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    client.paging_token(since)
    first = client._token
    time.sleep(1.6)  # ttl 3 s: past the refresh margin, before expiry
    client.paging_token(since)
    fake.inject("expire", "pagingtoken")  # token expires under the client's feet: a real 602
    client.paging_token(since)
    fake.inject("601", "pagingtoken")
    client.paging_token(since)
    assert client.stats.retries["602"] == 1 and client.stats.retries["601"] == 1
    assert client._token != first
    assert not [c for c in fake.calls if c.path.endswith("pagingtoken.json") and c.outcome not in ("ok", "601", "602")]
    assert all(c.outcome == "ok" for c in fake.calls_to("identity"))


def test_quota_codes_stop_and_unknown_codes_fail_loudly(fake):
    client = _client(fake)
    since = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    fake.inject("607", "pagingtoken")
    with pytest.raises(MarketoQuotaExceeded, match="607"):
        client.paging_token(since)
    fake.inject("1029quota", "enqueue")
    fake.exports["x"] = {"exportId": "x", "status": "Created", "format": "CSV", "createdAt": "", "polls": 0}
    with pytest.raises(MarketoQuotaExceeded, match="quota"):
        client.enqueue_lead_export("x")
    fake.exports["y"] = {"exportId": "y", "status": "Created", "format": "CSV", "createdAt": "", "polls": 0}
    fake.inject("1029queue", "enqueue", times=2)
    assert client.enqueue_lead_export("y")["status"] == "Queued"  # queue full: retried, then accepted
    with pytest.raises(MarketoError, match="1003"):
        client.lead_export_status("nope")
    fake.inject("606", "pagingtoken", times=10)
    with pytest.raises(MarketoRetriesExhausted):
        client.paging_token(since)


def test_bad_credentials_fail_without_echoing_the_secret(fake):
    client = MarketoClient(MarketoConfig(fake.url, "test-client-id", "wrong-" + SECRET))
    with pytest.raises(MarketoError) as e:
        client.paging_token(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert "invalid_client" in str(e.value) and SECRET not in str(e.value)
    assert SECRET not in repr(client.config)


def test_daily_budget_and_call_accounting(fake):
    client = _client(fake, daily_call_budget=3)
    client.stats.calls_today_before = 1
    since = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    client.paging_token(since)
    client.paging_token(since)
    with pytest.raises(MarketoQuotaExceeded, match="budget"):
        client.paging_token(since)
    assert client.stats.api_calls == 2 and client.stats.calls_today == 3
    assert client.stats.calls == 3  # identity call counted in the rate, not in the quota


def test_a_token_that_expired_during_a_rate_limit_wait_is_refreshed_before_the_call_goes_out():
    """Token life 2 s (refreshed 1 s early), 2 calls per 2.5 s: the third call (identity included) waits
    ~2.5 s for the rate limiter, and the token it would have taken before the wait has expired by then."""
    server = FakeMarketo(client_secret=SECRET, token_ttl=2)
    server.url = server.start()
    try:
        client = _client(server, calls_per_window=2, window_seconds=2.5)
        since = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        client.paging_token(since)
        client.paging_token(since)
        assert client.gate.waited_seconds >= 2.0  # the second call did wait for the limiter
        assert [c.outcome for c in server.calls_to("pagingtoken")] == ["ok", "ok"]  # no call wasted on a 602
        assert not {"601", "602"} & set(client.stats.retries)
        assert [c.outcome for c in server.calls_to("identity")] == ["ok", "ok"] and client.stats.token_refreshes == 2
        assert server.max_calls_in_window(2.5) <= 2
    finally:
        server.stop()


def test_job_already_queued_after_a_lost_enqueue_answer_carries_on_with_that_export(fake):
    client = _client(fake)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    export_id = client.create_lead_export(("id", "email"), "createdAt", start, start + dt.timedelta(days=3))
    fake.inject("drop", "enqueue")  # Marketo queues the export; its answer never arrives; the client resends
    status = client.enqueue_lead_export(export_id)
    assert status["exportId"] == export_id and status["status"] in ("Queued", "Processing")
    assert [c.outcome for c in fake.calls_to("enqueue")] == ["dropped (ok)", "1029"]  # resent once, not retried
    assert client.stats.retries["timeout"] == 1 and "1029" not in client.stats.retries
