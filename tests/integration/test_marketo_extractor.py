"""The Marketo extractor against the real Kafka broker and Postgres, with a fake Marketo that injects faults.

Runs are real processes (`python -m io_connectors.marketo_extractor`'s `main`), some killed with os._exit at
the worst moments: after Kafka acknowledged a page but before its cursor was committed, and in the middle of
a page. We read the topic from the offsets recorded at test start, keep our run's lead changes (GUIDs and lead
ids are unique per test), and assert each expected change is there exactly once, in order per lead, and that
the fake server never saw more calls in any window than the configured limit.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.marketo_fake_server import FakeMarketo, iso

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SECRET = "integration-secret-never-logged"
LIMIT, WINDOW, CONCURRENCY = 20, 2.0, 3
TOPIC = "marketo.leads.delta"


def _child() -> None:
    """Subprocess entry: the extractor's main, killed (os._exit) where MARKETO_TEST_CRASH says.

    `after_produce:N`: the N-th page is acknowledged by Kafka, then the process dies before the cursor commit.
    `mid_page:N`: half of the N-th page is acknowledged, then the process dies.
    """
    from io_connectors import marketo_extractor as mx

    kind, _, n = os.environ.get("MARKETO_TEST_CRASH", "").partition(":")
    if kind:
        produce, seen = mx.Extractor._produce, [0]

        def crashing_produce(self, page):
            seen[0] += 1
            if seen[0] == int(n) and kind == "mid_page":
                self.publisher.publish(page.messages[: max(1, len(page.messages) // 2)])
                os._exit(137)
            produce(self, page)
            if seen[0] == int(n):
                os._exit(137)

        mx.Extractor._produce = crashing_produce
    sys.exit(mx.main(sys.argv[1:]))


def _run(url: str, args, crash: str = "", **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MARKETO_BASE_URL": url, "MARKETO_CLIENT_ID": "test-client-id",
           "MARKETO_CLIENT_SECRET": SECRET, "MARKETO_CALLS_PER_WINDOW": str(LIMIT),
           "MARKETO_WINDOW_SECONDS": str(WINDOW), "MARKETO_MAX_CONCURRENCY": str(CONCURRENCY),
           "MARKETO_TEST_CRASH": crash, "PYTHONPATH": str(REPO), **env_extra}
    cmd = [sys.executable, "-c", "from tests.integration.test_marketo_extractor import _child; _child()",
           "--backoff-base-seconds", "0.05", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert SECRET not in proc.stdout + proc.stderr
    return proc


@pytest.fixture
def names(run_id, pg_conn):
    yield f"test.{run_id}", f"test.{run_id}.calls"
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM marketo_sync_state WHERE name LIKE %s", (f"test.{run_id}%",))


@pytest.fixture
def topic_reader(kafka_settings):
    """Records the topic's end offsets now; calling it returns every message written since, per partition."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    conf = {**kafka_settings.librdkafka_config(), "group.id": "iheardai-workload-marketo-test", "enable.auto.commit": False,
            "enable.partition.eof": True}
    probe = Consumer(conf)
    parts = sorted(probe.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions)
    start = {p: probe.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in parts}
    probe.close()

    def read():
        c = Consumer(conf)
        c.assign([TopicPartition(TOPIC, p, o) for p, o in start.items()])
        out, open_parts = [], set(parts)
        while open_parts:
            m = c.poll(5.0)
            assert m is not None, "topic read timed out"
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                open_parts.discard(m.partition())
                continue
            out.append((m.partition(), m.key(), json.loads(m.value())))
        c.close()
        return out

    return read


def _assert_rate(fake: FakeMarketo) -> int:
    worst = fake.max_calls_in_window(WINDOW)
    assert worst <= LIMIT, f"{worst} calls in {WINDOW}s > {LIMIT}"
    assert fake.max_in_flight <= CONCURRENCY
    return worst


def test_incremental_exactly_once_across_crashes_and_faults(names, topic_reader, pg_conn):
    cursor, ledger = names
    run_tag = names[0].split(".")[1]
    base = random.randint(1_000_000, 2_000_000_000)
    fake = FakeMarketo(client_secret=SECRET, token_ttl=4, rate_limit=LIMIT, rate_window=WINDOW,
                       max_concurrency=CONCURRENCY, short_page_every=4, repeat_last_guid=True)
    url = fake.start()
    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=6)
    n = [0]

    def change(lead, **kw):
        n[0] += 1
        return fake.add_change(base + lead, t0 + dt.timedelta(seconds=30 * n[0]), guid=f"{run_tag}-{n[0]}", **kw)

    log = [change(i, changes={"email": (None, f"lead{i}@example.com"), "company": (None, "Acme")}, new_lead=True)
           for i in range(30)]
    rnd = random.Random(6)
    for k in range(110):
        log.append(change(rnd.randrange(30), changes={"leadScore": (k, k + 1), "title": ("t", f"t{k}")}))
    dup = dict(log[50])
    fake.activities.append(dup)  # a repeated GUID inside the log, not only at page boundaries
    for kind, path, times in (("606", "leadchanges", 3), ("615", "leads.json", 2), ("604", "leadchanges", 1),
                              ("608", "leadchanges", 1), ("611", "leads.json", 1), ("713", "leadchanges", 1),
                              ("http_500", "leadchanges", 2), ("http_503", "leads.json", 1),
                              ("slow", "leads.json", 9), ("expire", "leadchanges", 1), ("601", "leads.json", 1)):
        fake.inject(kind, path, times, arg=0.3)
    args = ["--cursor", cursor, "--ledger", ledger, "--batch-size", "10", "--lead-chunk", "3", "incremental",
            "--since", (t0 - dt.timedelta(minutes=1)).isoformat()]
    try:
        assert _run(url, args, crash="after_produce:2").returncode == 137
        second = _run(url, args, crash="mid_page:3")
        assert second.returncode == 137
        recovered = re.search(r"interrupted page: (\d+) of its (\d+) changes were already published", second.stderr)
        assert recovered and recovered[1] == recovered[2] != "0"  # the whole acked page: skipped, not resent
        done = _run(url, args)
        assert done.returncode == 0, done.stderr[-3000:]
        recovered = re.search(r"interrupted page: (\d+) of its (\d+) changes were already published", done.stderr)
        assert recovered and 0 < int(recovered[1]) < int(recovered[2])  # half a page: the rest is sent
        assert "waiting out one rate window" in done.stderr
        assert "published=" in done.stderr and "calls_today=" in done.stderr
        for k in range(15):  # new changes after the run: the next run takes exactly those
            log.append(change(rnd.randrange(30), changes={"city": ("a", f"c{k}")}))
        again = _run(url, args)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        fake.stop()

    got = [(p, key, v) for p, key, v in topic_reader() if str(v.get("marketo_guid", "")).startswith(run_tag)]
    counts = Counter(v["marketo_guid"] for _, _, v in got)
    assert [g for g, c in counts.items() if c > 1] == []
    assert set(counts) == {a["marketoGUID"] for a in log}
    per_lead = defaultdict(list)
    for p, key, v in got:
        assert key == str(v["lead_id"]).encode()
        per_lead[v["lead_id"]].append(v["marketo_guid"])
    for lead, guids in per_lead.items():
        assert guids == [a["marketoGUID"] for a in log if a["leadId"] == lead], f"order of lead {lead}"
    first = next(v for _, _, v in got if v["marketo_guid"] == log[0]["marketoGUID"])
    assert first["change_type"] == "new_lead" and first["email"] == "lead0@example.com"

    worst = _assert_rate(fake)
    assert Counter(c.outcome for c in fake.calls)["606"] == 3  # only the injected ones: we never hit its limit
    assert {"601", "602", "604", "606", "608", "611", "615", "713", "http_500", "http_503"} <= \
        {c.outcome for c in fake.calls}
    with pg_conn.cursor() as cur:
        cur.execute("SELECT state FROM marketo_sync_state WHERE name = %s", (cursor,))
        state = cur.fetchone()[0]
        cur.execute("SELECT state FROM marketo_sync_state WHERE name = %s", (ledger,))
        calls = cur.fetchone()[0]
        cur.execute("SELECT state FROM marketo_sync_state WHERE name = %s", (f"{cursor}.last_run",))
        last_run = cur.fetchone()[0]
    assert state["pending"] is None and state["published"] >= 10
    assert calls["dirty"] is False and calls["calls"] > 0
    # the second run's summary, for the status service: it published exactly the 15 later changes
    assert last_run["status"] == "ok" and last_run["published"] == 15 and last_run["calls"] > 0
    assert last_run["last_success_at"] == last_run["finished_at"]
    print("\n" + done.stderr.strip().splitlines()[-1])
    print(f"incremental: {len(got)} changes, {len(fake.calls)} calls, max {worst} calls/{WINDOW}s "
          f"(limit {LIMIT}), max {fake.max_in_flight} in flight")


def test_backfill_resumes_its_export_after_a_crash(names, topic_reader):
    cursor, ledger = names
    base = random.randint(1_000_000, 2_000_000_000)
    fake = FakeMarketo(client_secret=SECRET, rate_limit=LIMIT, rate_window=WINDOW, max_concurrency=CONCURRENCY,
                       updated_at_filter=False, export_polls=2)
    url = fake.start()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    since, until = now - dt.timedelta(days=72), now
    for i in range(30):
        fake.add_lead(base + i, since + dt.timedelta(days=2.3 * i + 0.5), email=f"bulk{i}@example.com",
                      firstName=f"F{i}", leadScore=str(i), company="Acme")
    fake.inject("1029queue", "enqueue")
    args = ["--cursor", cursor, "--ledger", ledger, "--export-poll-seconds", "0.05", "--export-chunk-rows", "4",
            "backfill", "--since", since.isoformat(), "--until", until.isoformat()]
    try:
        assert _run(url, args, crash="after_produce:3").returncode == 137
        done = _run(url, args)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "interrupted page: 4 of its 4 changes were already published" in done.stderr
        assert _run(url, args).returncode == 0  # a finished backfill does nothing more
    finally:
        fake.stop()

    got = [v for _, _, v in topic_reader() if base <= v["lead_id"] < base + 30]
    assert sorted(v["lead_id"] for v in got) == [base + i for i in range(30)]  # each lead exactly once
    assert {v["change_type"] for v in got} == {"bulk_export"} and got[0]["email"].startswith("bulk")
    creates = [c.outcome for c in fake.calls_to("create.json")]
    assert creates == ["1035", "ok", "ok", "ok"]  # updatedAt refused once, then createdAt; 3 windows, none redone
    assert all(e["filter"] == "createdAt" for e in fake.exports.values())
    assert all(j["end"] - j["start"] <= dt.timedelta(days=31) for j in fake.exports.values())
    _assert_rate(fake)


def test_quota_errors_stop_the_run_cleanly(names):
    cursor, ledger = names
    fake = FakeMarketo(client_secret=SECRET)
    url = fake.start()
    try:
        fake.inject("607", "pagingtoken")
        r = _run(url, ["--cursor", cursor, "--ledger", ledger, "incremental"])
        assert r.returncode == 3 and "stopped on quota (607" in r.stderr
        fake.inject("1029quota", "enqueue")
        r = _run(url, ["--cursor", cursor + ".b", "--ledger", ledger, "backfill", "--since", "2026-10-01T00:00:00Z",
                       "--until", "2026-10-10T00:00:00Z"])
        assert r.returncode == 3 and "Export daily quota" in r.stderr
    finally:
        fake.stop()


def _expected_bulk_message(lead) -> dict:
    """What the topic must hold for an exported lead, written out from the lead itself: empty fields absent."""
    ms = lambda text: int(dt.datetime.fromisoformat(text).timestamp() * 1000)  # noqa: E731
    created = ms(lead["createdAt"])
    updated = ms(lead["updatedAt"]) if lead.get("updatedAt") else None
    ts = updated or created
    want = {"schema_version": 1, "lead_id": lead["id"], "marketo_guid": f"bulk:{lead['id']}:{ts}", "timestamp": ts,
            "change_type": "bulk_export", "changes": [], "attributes": {}, "created_at_ms": created}
    if updated:
        want["updated_at_ms"] = updated
    for api, field in (("email", "email"), ("firstName", "first_name"), ("company", "company"), ("title", "title")):
        if lead.get(api):
            want[field] = lead[api]
    if lead.get("leadScore") is not None:
        want["lead_score"] = int(lead["leadScore"])
    return want


def test_backfill_publishes_the_null_cells_of_an_export_as_absent_fields(names, topic_reader):
    """Marketo writes an empty field of an export file as `null`: a leadScore, email, company or updatedAt
    that is `null` is absent from the published message, and each row is published (none dead-lettered)."""
    cursor, ledger = names
    base = random.randint(1_000_000, 2_000_000_000)
    fake = FakeMarketo(client_secret=SECRET, rate_limit=LIMIT, rate_window=WINDOW, max_concurrency=CONCURRENCY,
                       export_polls=2)
    url = fake.start()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    since, until = now - dt.timedelta(days=40), now
    leads = []
    for i in range(12):
        created = since + dt.timedelta(days=3 * i + 0.5)
        leads.append(fake.add_lead(
            base + i, created, email=f"null{i}@example.com" if i % 3 else None, firstName=f"F{i}" if i % 4 else None,
            leadScore=str(5 * i) if i % 2 else None, company="Acme" if i % 5 else "",
            title=None if i % 3 == 1 else f"T{i}",
            updatedAt=None if i % 6 == 5 else iso(created + dt.timedelta(hours=i + 1))))
    args = ["--cursor", cursor, "--ledger", ledger, "--export-poll-seconds", "0.05", "--export-chunk-rows", "5",
            "backfill", "--since", since.isoformat(), "--until", until.isoformat()]
    try:
        done = _run(url, args)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        fake.stop()
    files = [fake._export_file(job) for job in fake.exports.values()]
    assert len(files) == 2 and all(",null," in f for f in files)  # two windows, both files with null cells
    assert "dead_letters=0" in done.stderr.strip().splitlines()[-1]

    got = [v for _, _, v in topic_reader() if base <= v.get("lead_id", 0) < base + 12]
    assert sorted(v["lead_id"] for v in got) == [lead["id"] for lead in leads]  # each lead exactly once
    by_id = {v["lead_id"]: v for v in got}
    for lead in leads:
        assert by_id[lead["id"]] == _expected_bulk_message(lead), f"lead {lead['id']}"
    assert not [v for v in got if "null" in v.values()]  # no field holds the text "null"
    assert {v.get("lead_score") for v in got} == {None} | {5 * i for i in range(1, 12, 2)}
    _assert_rate(fake)


def test_export_timeout_comes_from_the_flag_or_the_environment(names):
    cursor, ledger = names
    fake = FakeMarketo(client_secret=SECRET, export_polls=10 ** 6)  # the export never completes
    url = fake.start()
    window = ["backfill", "--since", "2026-10-01T00:00:00Z", "--until", "2026-10-10T00:00:00Z"]
    try:
        r = _run(url, ["--cursor", cursor, "--ledger", ledger, "--export-poll-seconds", "0.05",
                       "--export-timeout-seconds", "1.5", *window])
        assert r.returncode == 1 and "did not complete in 1.5s" in r.stderr, r.stderr[-2000:]
        r = _run(url, ["--cursor", cursor + ".env", "--ledger", ledger, "--export-poll-seconds", "0.05", *window],
                 MARKETO_EXPORT_TIMEOUT_SECONDS="1")
        assert r.returncode == 1 and "did not complete in 1s" in r.stderr, r.stderr[-2000:]
    finally:
        fake.stop()
