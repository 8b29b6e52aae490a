"""Unit tests of the extractor's bulk export path against the in-process fake Marketo: `null` cells, every
documented export status, "Job already queued" after a lost enqueue answer, and the export timeout option.

Postgres and Kafka are replaced by the in-memory `_Store` and `_Publisher` below (the same methods the
extractor calls); tests/integration/test_marketo_extractor.py runs the same paths against the real services.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from io_connectors import marketo_extractor as mx
from io_connectors.marketo import MarketoClient, MarketoConfig, MarketoError
from tests.marketo_fake_server import FakeMarketo
from events.dead_letters import ErrorKind

pytestmark = pytest.mark.unit
SECRET = "unit-test-secret-do-not-log"
UNTIL = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
SINCE = UNTIL - dt.timedelta(days=20)


class _Store:
    """`SyncStore` in memory: rows are JSON round-tripped, as JSONB would."""

    def __init__(self):
        self.rows = {}

    def load(self, name):
        return copy.deepcopy(self.rows.get(name))

    def save(self, **states):
        self.rows.update({k: json.loads(json.dumps(v)) for k, v in states.items()})


class _Publisher:
    """`LeadPublisher` in memory: one partition per topic, every publish acknowledged."""

    topic = "marketo.leads.delta"

    def __init__(self):
        self.sent = {}

    def end_offsets(self):
        return {"0": len(self.sent.get(self.topic, []))}

    def publish(self, messages, topic=None):
        self.sent.setdefault(topic or self.topic, []).extend(messages)

    def guids_since(self, offsets, wanted):
        return {json.loads(v)["marketo_guid"] for _, v in self.sent.get(self.topic, [])[offsets["0"]:]} & wanted

    def messages(self):
        return [json.loads(v) for _, v in self.sent.get(self.topic, [])]

    def dead_letters(self):
        return self.sent.get(mx.dlq_topic(self.topic), [])


@pytest.fixture
def fake():
    server = FakeMarketo(client_secret=SECRET, export_polls=2)
    server.url = server.start()
    yield server
    server.stop()


def _job(fake, timeout=5.0):
    client = MarketoClient(MarketoConfig(fake.url, "test-client-id", SECRET, calls_per_window=100,
                                         window_seconds=1.0, backoff_base_seconds=0.01, backoff_max_seconds=0.05,
                                         timeout_seconds=0.5, max_attempts=5))
    return mx.Extractor(client, _Store(), _Publisher(), "unit", export_poll_seconds=0.01,
                        export_timeout_seconds=timeout, export_chunk_rows=3)


def _ms(text):
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def _leads(fake, n=4):
    for i in range(n):
        fake.add_lead(100 + i, SINCE + dt.timedelta(days=i + 1), email=f"l{i}@example.com", leadScore=str(10 * i))


def test_null_cells_of_an_export_are_published_as_absent_fields(fake):
    created = SINCE + dt.timedelta(days=1)
    fake.add_lead(1, created, email="a@example.com", firstName="Ann", leadScore="42", company="Acme", city="Oslo")
    fake.add_lead(2, created, email=None, firstName="Bo", leadScore=None, company="", title="CTO")
    fake.add_lead(3, created, firstName=None, lastName="Ng", leadScore="7", updatedAt=None)  # never updated
    job = _job(fake)
    job.backfill(SINCE, UNTIL)

    export_id = next(iter(fake.exports))
    text = job.client.lead_export_file(export_id)
    assert text.count("null") > 20  # Marketo's file: every empty cell is the text null
    assert job.publisher.dead_letters() == []
    by_id = {m["lead_id"]: m for m in job.publisher.messages()}
    c = _ms(fake.leads[1]["createdAt"])
    common = {"schema_version": 1, "change_type": "bulk_export", "changes": [], "attributes": {},
              "created_at_ms": c, "timestamp": c}
    assert by_id == {
        1: {**common, "lead_id": 1, "marketo_guid": f"bulk:1:{c}", "updated_at_ms": c, "email": "a@example.com",
            "first_name": "Ann", "lead_score": 42, "company": "Acme", "city": "Oslo"},
        2: {**common, "lead_id": 2, "marketo_guid": f"bulk:2:{c}", "updated_at_ms": c, "first_name": "Bo",
            "title": "CTO"},
        3: {**common, "lead_id": 3, "marketo_guid": f"bulk:3:{c}", "last_name": "Ng", "lead_score": 7},
    }


def test_a_row_whose_date_cannot_be_read_is_dead_lettered_not_fatal():
    rows = [{"id": "5", "createdAt": "2026-01-02T00:00:00Z", "updatedAt": "yesterday", "email": "x@example.com"},
            {"id": "6", "createdAt": "2026-01-02T00:00:00Z", "updatedAt": None, "email": "y@example.com"}]
    page = mx.build_page(rows, mx.export_row_to_delta, set(), mx._bulk_guid)
    assert [json.loads(v)["lead_id"] for _, v in page.messages] == [6]
    (_, dead), = page.dead
    letter = json.loads(dead)
    assert letter["error_class"] == ErrorKind.SCHEMA.value and "yesterday" in letter["error_message"]
    assert json.loads(letter["payload"])["id"] == "5"


@pytest.mark.parametrize("ending", ["Canceled", "Failed"])
def test_an_export_that_ends_canceled_or_failed_is_created_again(fake, ending):
    _leads(fake)
    fake.export_endings = [ending]
    job = _job(fake)
    job.backfill(SINCE, UNTIL)
    assert [j["status"] for j in fake.exports.values()] == [ending, "Completed"]
    assert sorted(m["lead_id"] for m in job.publisher.messages()) == [100, 101, 102, 103]


def test_exports_that_keep_ending_without_a_file_stop_the_run_and_the_next_run_tries_again(fake):
    _leads(fake)
    fake.export_endings = ["Canceled", "Failed", "Canceled", "Completed"]
    job = _job(fake)
    with pytest.raises(RuntimeError, match="3 exports .* ended without a file"):
        job.backfill(SINCE, UNTIL)
    assert len(fake.exports) == 3 and job.publisher.messages() == []
    assert not job.store.rows["unit.backfill"].get("done")
    job.backfill(SINCE, UNTIL)  # the next run
    assert len(fake.exports) == 4 and job.store.rows["unit.backfill"]["done"]
    assert sorted(m["lead_id"] for m in job.publisher.messages()) == [100, 101, 102, 103]


@pytest.mark.parametrize("status", ["Created", "Queued", "Processing", "Completed"])
def test_every_documented_live_status_leads_to_the_file(fake, status):
    _leads(fake)
    job = _job(fake)
    export_id = job.client.create_lead_export(("id", "email"), "createdAt", SINCE, UNTIL)
    fake.exports[export_id]["status"] = status
    text = job._wait_for_export(export_id)
    assert text.splitlines()[0] == "id,email" and len(text.splitlines()) == 5
    enqueued = [c.outcome for c in fake.calls_to("enqueue")]
    assert enqueued == (["ok"] if status == "Created" else [])


@pytest.mark.parametrize("status,outcome", [("Canceled", None), ("Cancelled", None), ("Failed", None)])
def test_every_documented_ending_without_a_file_asks_for_a_new_export(fake, status, outcome):
    job = _job(fake, timeout=30.0)
    export_id = job.client.create_lead_export(("id",), "createdAt", SINCE, UNTIL)
    fake.exports[export_id]["status"] = status
    assert job._wait_for_export(export_id) is outcome
    assert len(fake.calls_to("status.json")) == 1  # at once, not after polling to the timeout


def test_a_canceled_export_is_seen_as_ended(fake):
    job = _job(fake, timeout=30.0)
    export_id = job.client.create_lead_export(("id",), "createdAt", SINCE, UNTIL)
    job.client.call("POST", f"/bulk/v1/leads/export/{export_id}/cancel.json")
    assert job.client.lead_export_status(export_id)["status"] == "Canceled"  # Marketo's spelling
    assert job._wait_for_export(export_id) is None


def test_an_undocumented_status_fails_at_once(fake):
    job = _job(fake, timeout=30.0)
    export_id = job.client.create_lead_export(("id",), "createdAt", SINCE, UNTIL)
    fake.exports[export_id]["status"] = "Archived"
    with pytest.raises(MarketoError, match="undocumented export status 'Archived'"):
        job._wait_for_export(export_id)


def test_backfill_carries_on_with_an_export_whose_enqueue_answer_was_lost(fake):
    _leads(fake)
    fake.inject("drop", "enqueue")
    job = _job(fake)
    job.backfill(SINCE, UNTIL)
    assert [c.outcome for c in fake.calls_to("enqueue")] == ["dropped (ok)", "1029"]
    assert len(fake.exports) == 1  # the queued export was used, not a new one
    assert sorted(m["lead_id"] for m in job.publisher.messages()) == [100, 101, 102, 103]


def test_an_export_that_does_not_complete_in_the_timeout_fails_the_run(fake):
    fake.export_polls = 10 ** 6
    job = _job(fake, timeout=0.3)
    export_id = job.client.create_lead_export(("id",), "createdAt", SINCE, UNTIL)
    with pytest.raises(TimeoutError, match=r"did not complete in 0.3s \(--export-timeout-seconds\)"):
        job._wait_for_export(export_id)


def test_export_timeout_is_a_flag_an_env_setting_and_has_a_default(monkeypatch):
    monkeypatch.delenv("MARKETO_EXPORT_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setattr(mx.settings, "_file_env", lambda: {})
    assert mx.parse_args(["backfill", "--since", "2026-01-01"]).export_timeout_seconds == 6 * 3600
    monkeypatch.setenv("MARKETO_EXPORT_TIMEOUT_SECONDS", "900")
    assert mx.parse_args(["backfill", "--since", "2026-01-01"]).export_timeout_seconds == 900
    assert mx.parse_args(["--export-timeout-seconds", "120", "backfill", "--since", "2026-01-01"]
                         ).export_timeout_seconds == 120  # the flag wins over the environment
    for bad in (["--export-timeout-seconds", "0"], ["--export-timeout-seconds", "soon"]):
        with pytest.raises(SystemExit):
            mx.parse_args(bad)
    monkeypatch.setenv("MARKETO_EXPORT_TIMEOUT_SECONDS", "-5")
    with pytest.raises(SystemExit):
        mx.parse_args([])
