"""Marketo extractor: lead changes from the Marketo REST API to `marketo.leads.delta`, resumable and polite.

    python -m io_connectors.marketo_extractor incremental [--since 2026-11-01T00:00:00Z]
    python -m io_connectors.marketo_extractor backfill --since 2026-01-01 --until 2026-11-01

Incremental: paging token -> `activities/leadchanges.json` pages (+ `leads.json` for the leads' fields) until
`moreResult` is false. Backfill: Bulk Lead Extract jobs in windows of <= 31 days filtered by `updatedAt`
(`createdAt` where the instance answers 1035); an export in progress is resumed after a crash. A `null` cell
of an export file is an empty field (absent from the message); an export that ends Failed or Canceled is
created again (at most 3 times per window and run); one that has not completed after
--export-timeout-seconds (env MARKETO_EXPORT_TIMEOUT_SECONDS, default 6 h) fails the run.

Exactly once on the topic: each page is published as follows, the state living in `marketo_sync_state`:
  1. record the page as *pending* (its marketoGUIDs and the topic's end offsets) in Postgres;
  2. produce every message (idempotent producer, acks=all) and wait until Kafka acknowledged all of them;
  3. advance the cursor, clear *pending* and remember the page's GUIDs (dedupe window), in one transaction.
A run that finds a pending page (the last one crashed between 1 and 3) reads the topic from the recorded
offsets, adds the GUIDs already there to the dedupe window, and refetches the page: what was published is
skipped, the rest is published, so nothing is lost or duplicated and per-lead order is kept. One run per
cursor at a time (a Postgres advisory lock).

Calls used today and the recent calls' times are kept in a ledger row, so a new run (even after a crash)
does not exceed the rate limit together with the previous one. Exit status: 0 done, 3 stopped on a quota
(resume tomorrow), 1 failed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import psycopg2
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from psycopg2.extras import Json

from io_connectors import settings
from io_connectors.marketo import MarketoClient, MarketoConfig, MarketoError, MarketoQuotaExceeded, quota_day
from io_connectors.settings import KafkaSettings, PostgresSettings
from events.topics import LEADS, dlq_topic
from events.contracts import MarketoLeadDelta
from events.dead_letters import DeadLetter, ErrorKind

log = logging.getLogger("marketo_extractor")

NEW_LEAD, CHANGE_DATA_VALUE = 12, 13
RECENT_GUIDS = 5000  # dedupe window kept with the cursor
EXPORT_TIMEOUT_SECONDS = 6 * 3600  # default; --export-timeout-seconds or MARKETO_EXPORT_TIMEOUT_SECONDS
MAX_EXPORT_ATTEMPTS = 3  # exports of one window that may end without a file (Failed, Canceled) in one run
# Bulk export statuses (Marketo documents Created, Queued, Processing, Canceled, Completed, Failed; its
# cancel.json answer spells it Cancelled).
EXPORT_WAITING = ("Queued", "Processing")
EXPORT_ENDED = ("Failed", "Canceled", "Cancelled")
CHANGE_FIELDS = ("email", "firstName", "lastName", "company", "title", "phone", "leadSource", "leadStatus",
                 "leadScore", "country", "state", "city")


# --- mapping to the contract --------------------------------------------------------------------------------


def _ms(value: Any) -> Optional[int]:
    if value in (None, ""):
        return None
    return int(dt.datetime.fromisoformat(str(value)).timestamp() * 1000)


def _lead_fields(lead: Dict[str, Any]) -> Dict[str, Any]:
    v = lambda k: None if lead.get(k) in (None, "") else lead[k]  # noqa: E731
    score = v("leadScore")
    return dict(email=v("email"), first_name=v("firstName"), last_name=v("lastName"), company=v("company"),
                title=v("title"), phone=v("phone"), lead_source=v("leadSource"), lead_status=v("leadStatus"),
                lead_score=None if score is None else int(float(score)), country=v("country"), state=v("state"),
                city=v("city"), created_at_ms=_ms(v("createdAt")), updated_at_ms=_ms(v("updatedAt")))


def activity_to_delta(act: Dict[str, Any], lead: Dict[str, Any]) -> MarketoLeadDelta:
    """A leadchanges.json activity (+ the lead's current fields from leads.json) as a validated delta."""
    return MarketoLeadDelta(
        lead_id=act.get("leadId"), marketo_guid=act.get("marketoGUID"), timestamp=_ms(act.get("activityDate")),
        change_type="new_lead" if act.get("activityTypeId") == NEW_LEAD else "lead_change",
        activity_type_id=act.get("activityTypeId"),
        changes=[{"field": f.get("name"), "old_value": f.get("oldValue"), "new_value": f.get("newValue")}
                 for f in act.get("fields") or []],
        attributes={a.get("name"): a.get("value") for a in act.get("attributes") or []},
        **_lead_fields(lead))


def parse_export(text: str) -> List[Dict[str, Optional[str]]]:
    """The rows of a Bulk Lead Extract CSV file. Marketo writes an empty field as the text `null` (its
    documentation: a requested field that contains no data is `null` in the export file): that is None here."""
    return [{k: None if v == "null" else v for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def export_row_to_delta(row: Dict[str, Optional[str]]) -> MarketoLeadDelta:
    """A Bulk Lead Extract CSV row as a delta; its GUID is `bulk:<leadId>:<updatedAt ms>` (stable on rerun)."""
    fields = _lead_fields(row)
    ts = fields["updated_at_ms"] or fields["created_at_ms"]
    return MarketoLeadDelta(lead_id=int(row["id"]), marketo_guid=f"bulk:{row['id']}:{ts}", timestamp=ts,
                            change_type="bulk_export", **fields)


@dataclass
class Page:
    """A page ready to publish: validated messages, dead letters, and the GUIDs it covers."""

    messages: List[Tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) for the topic
    dead: List[Tuple[bytes, bytes]] = field(default_factory=list)  # for the DLQ
    guids: List[str] = field(default_factory=list)
    duplicates: int = 0


def build_page(items: Iterable[Dict[str, Any]], to_delta: Callable[[Dict[str, Any]], MarketoLeadDelta],
               seen: set, guid_of: Callable[[Dict[str, Any]], Optional[str]]) -> Page:
    page = Page()
    for item in items:
        try:
            guid = guid_of(item)
        except (ValueError, TypeError, KeyError):
            guid = None  # e.g. an unparseable date: `to_delta` fails on it too, and the item is dead-lettered
        if guid and guid in seen:
            page.duplicates += 1
            continue
        try:
            delta = to_delta(item)
        except (ValueError, TypeError, KeyError) as e:
            raw = json.dumps(item, default=str).encode()
            page.dead.append((str(guid).encode(), DeadLetter.of(
                raw, step="MarketoExtractor.ToLeadDelta", error_class=ErrorKind.SCHEMA.value,
                error_message=str(e), topic=None).to_json()))
            continue
        seen.add(delta.marketo_guid)
        page.guids.append(delta.marketo_guid)
        page.messages.append((str(delta.lead_id).encode(), delta.model_dump_json(exclude_none=True).encode()))
    return page


# --- durable state ------------------------------------------------------------------------------------------


class SyncStore:
    """Rows of `marketo_sync_state` (name -> JSONB), read and written in short transactions."""

    def __init__(self, pg: PostgresSettings):
        self._conn = psycopg2.connect(**pg.connect_kwargs())

    def lock(self, name: str) -> bool:
        """Session advisory lock on a cursor name: one run per cursor; released when the process dies."""
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"marketo:{name}",))
            return cur.fetchone()[0]

    def load(self, name: str) -> Optional[Dict[str, Any]]:
        with self._conn, self._conn.cursor() as cur:
            cur.execute("SELECT state FROM marketo_sync_state WHERE name = %s", (name,))
            row = cur.fetchone()
            return row[0] if row else None

    def save(self, **states: Dict[str, Any]) -> None:
        """Upsert several rows atomically (keyword = row name)."""
        with self._conn, self._conn.cursor() as cur:
            for name, state in states.items():
                cur.execute("INSERT INTO marketo_sync_state (name, state, updated_at) VALUES (%s, %s, NOW()) "
                            "ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated_at = NOW()",
                            (name, Json(state)))

    def close(self) -> None:
        self._conn.close()


# --- Kafka --------------------------------------------------------------------------------------------------


class LeadPublisher:
    """Idempotent producer (acks=all) that only returns once every message is acknowledged."""

    def __init__(self, kafka: KafkaSettings, topic: str = LEADS, flush_timeout_seconds: float = 60.0):
        self.topic, self._timeout = topic, flush_timeout_seconds
        self._conf = kafka.librdkafka_config()
        self._producer = Producer({**self._conf, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
                                   "message.timeout.ms": int(flush_timeout_seconds * 1000)})
        self._probe = Consumer({**self._conf, "group.id": "marketo-extractor-probe", "enable.auto.commit": False})
        self.partitions = sorted(self._producer.list_topics(topic, timeout=10).topics[topic].partitions)

    def end_offsets(self) -> Dict[str, int]:
        return {str(p): self._probe.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in self.partitions}

    def publish(self, messages: Sequence[Tuple[bytes, bytes]], topic: Optional[str] = None) -> None:
        errors: List[str] = []

        def on_delivery(err, _msg):
            if err is not None:
                errors.append(str(err))

        for key, value in messages:
            while True:
                try:
                    self._producer.produce(topic or self.topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(0.5)
            self._producer.poll(0)
        left = self._producer.flush(self._timeout)
        if left or errors:
            raise RuntimeError(f"Kafka did not acknowledge {left + len(errors)} of {len(messages)} messages: "
                               f"{errors[:3]}")

    def guids_since(self, offsets: Dict[str, int], wanted: set) -> set:
        """The wanted GUIDs found on the topic from `offsets` (per partition) to its current end."""
        ends = self.end_offsets()
        todo = {int(p): o for p, o in offsets.items() if o < ends[p]}
        found: set = set()
        if not todo:
            return found
        consumer = Consumer({**self._conf, "group.id": "marketo-extractor-recovery", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(self.topic, p, o) for p, o in todo.items()])
            deadline = time.monotonic() + 60
            while todo and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.pop(msg.partition(), None)
                    continue
                try:
                    guid = json.loads(msg.value()).get("marketo_guid")
                except (ValueError, AttributeError):
                    guid = None
                if guid in wanted:
                    found.add(guid)
                if msg.offset() + 1 >= ends[str(msg.partition())]:
                    todo.pop(msg.partition(), None)
            if todo:
                raise RuntimeError(f"could not read back partitions {sorted(todo)} of {self.topic}")
        finally:
            consumer.close()
        return found

    def close(self) -> None:
        self._producer.flush(self._timeout)
        self._probe.close()


# --- the job ------------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    pages: int = 0
    activities: int = 0
    published: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    recovered: int = 0
    exports: int = 0


class Extractor:
    def __init__(self, client: MarketoClient, store: SyncStore, publisher: LeadPublisher, cursor: str,
                 ledger: str = "marketo.calls", batch_size: int = 300, lead_chunk: int = 300,
                 max_pages: int = 10_000, export_window_days: float = 31, export_poll_seconds: float = 60,
                 export_timeout_seconds: float = EXPORT_TIMEOUT_SECONDS, export_chunk_rows: int = 1000,
                 fields: Sequence[str] = CHANGE_FIELDS):
        self.client, self.store, self.publisher = client, store, publisher
        self.cursor, self.ledger = cursor, ledger
        self.batch_size, self.lead_chunk, self.max_pages, self.fields = batch_size, lead_chunk, max_pages, fields
        self.window = dt.timedelta(days=min(export_window_days, 31))
        self.poll_seconds, self.export_timeout, self.chunk_rows = export_poll_seconds, export_timeout_seconds, \
            export_chunk_rows
        self.stats = RunStats()
        self._ledger_flushed = 0
        self._started = time.monotonic()

    # ledger: calls used today, and the rate limiter's memory across runs
    def open_ledger(self) -> None:
        led = self.store.load(self.ledger) or {}
        today = quota_day()
        self.client.stats.calls_today_before = led.get("calls", 0) if led.get("day") == today else 0
        now_wall, now_mono = time.time(), time.monotonic()
        if led.get("dirty"):  # the last run died without saying when its last calls were: assume just now
            log.info("previous run did not close the ledger: waiting out one rate window before calling")
            self.client.gate.preload([now_mono] * self.client.gate.calls)
        else:
            self.client.gate.preload(now_mono - (now_wall - t) for t in led.get("recent_calls", []))
        self.store.save(**{self.ledger: {**led, "day": today, "calls": self.client.stats.calls_today_before,
                                         "dirty": True}})

    def _ledger_state(self, dirty: bool = True) -> Dict[str, Any]:
        now_wall, now_mono = time.time(), time.monotonic()
        return {"day": quota_day(), "calls": self.client.stats.calls_today, "dirty": dirty,
                "recent_calls": [now_wall - (now_mono - t) for t in self.client.gate.recent()]}

    def close_ledger(self) -> None:
        self.store.save(**{self.ledger: self._ledger_state(dirty=False)})

    # the exactly-once page protocol
    def recover(self, state: Dict[str, Any]) -> Dict[str, Any]:
        pending = state.get("pending")
        if not pending:
            return state
        found = self.publisher.guids_since(pending["offsets"], set(pending["guids"]))
        log.info("recovering an interrupted page: %d of its %d changes were already published",
                 len(found), len(pending["guids"]))
        self.stats.recovered += len(found)
        state = {**state, "pending": None, "recent_guids": (state.get("recent_guids", []) + sorted(found))[-RECENT_GUIDS:]}
        self.store.save(**{state["row"]: state})
        return state

    def publish_page(self, state: Dict[str, Any], page: Page, advance: Dict[str, Any]) -> Dict[str, Any]:
        row = state["row"]
        if page.messages or page.dead:
            self.store.save(**{row: {**state, "pending": {"guids": page.guids,
                                                          "offsets": self.publisher.end_offsets()}}})
            self._produce(page)
        state = {**state, **advance, "pending": None,
                 "recent_guids": (state.get("recent_guids", []) + page.guids)[-RECENT_GUIDS:],
                 "published": state.get("published", 0) + len(page.messages)}
        self._commit(row, state)
        self.stats.published += len(page.messages)
        self.stats.dead_letters += len(page.dead)
        self.stats.duplicates += page.duplicates
        return state

    def _produce(self, page: Page) -> None:
        self.publisher.publish(page.messages)
        if page.dead:
            self.publisher.publish(page.dead, topic=dlq_topic(self.publisher.topic))

    def _commit(self, row: str, state: Dict[str, Any]) -> None:
        self.store.save(**{row: state, self.ledger: self._ledger_state()})

    # incremental
    def incremental(self, since: Optional[dt.datetime] = None) -> None:
        state = self.store.load(self.cursor) or {}
        state["row"] = self.cursor
        if not state.get("next_page_token"):
            since = since or dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
            state.update(next_page_token=self.client.paging_token(since), since=since.isoformat())
            self.store.save(**{self.cursor: state})
            log.info("new cursor %s from %s", self.cursor, since.isoformat())
        state = self.recover(state)
        more = True
        while more and self.stats.pages < self.max_pages:
            acts, next_token, more = self.client.lead_changes(state["next_page_token"], self.fields, self.batch_size)
            seen = set(state.get("recent_guids", []))
            fresh = [a for a in acts if a.get("marketoGUID") not in seen]
            ids = {a["leadId"] for a in fresh if isinstance(a.get("leadId"), int)}
            leads = self.client.leads_by_id(ids, chunk=self.lead_chunk) if ids else {}
            page = build_page(acts, lambda a: activity_to_delta(a, leads.get(a.get("leadId"), {})), seen,
                              lambda a: a.get("marketoGUID"))
            state = self.publish_page(state, page, {"next_page_token": next_token,
                                                    "pages": state.get("pages", 0) + 1})
            self.stats.pages += 1
            self.stats.activities += len(acts)
            self._progress(f"page {self.stats.pages}: {len(acts)} changes, {len(page.messages)} published, "
                           f"{page.duplicates} duplicates, moreResult={more}")

    # backfill
    def backfill(self, since: dt.datetime, until: dt.datetime) -> None:
        row = f"{self.cursor}.backfill"
        state = self.store.load(row) or {}
        if state.get("since") != since.isoformat() or state.get("until") != until.isoformat():
            if state and not state.get("done"):
                log.warning("abandoning the unfinished backfill %s..%s", state.get("since"), state.get("until"))
            state = {"since": since.isoformat(), "until": until.isoformat(), "window_start": since.isoformat(),
                     "filter": "updatedAt", "export_id": None, "rows_done": 0}
        state["row"] = row
        state = self.recover(state)
        ended = 0  # exports of the current window that ended without a file in this run
        while dt.datetime.fromisoformat(state["window_start"]) < until:
            start = dt.datetime.fromisoformat(state["window_start"])
            end = min(start + self.window, until)
            if not state.get("export_id"):
                export_id = self._create_export(state, start, end)  # may switch state["filter"] (1035)
                state = {**state, "export_id": export_id, "rows_done": 0}
                self.store.save(**{row: state})
                self.stats.exports += 1
            text = self._wait_for_export(state["export_id"])
            if text is None:  # failed or canceled: create it again, a few times per run
                state = {**state, "export_id": None}
                self.store.save(**{row: state})
                ended += 1
                if ended >= MAX_EXPORT_ATTEMPTS:
                    raise RuntimeError(f"{ended} exports of {start.isoformat()}..{end.isoformat()} ended without a "
                                       f"file (Failed or Canceled): giving up; the next run creates it again")
                continue
            rows = parse_export(text)
            for i in range(state.get("rows_done", 0), len(rows), self.chunk_rows):
                chunk = rows[i:i + self.chunk_rows]
                seen = set(state.get("recent_guids", []))
                page = build_page(chunk, export_row_to_delta, seen, _bulk_guid)
                state = self.publish_page(state, page, {"rows_done": i + len(chunk)})
                self.stats.pages += 1
                self.stats.activities += len(chunk)
                self._progress(f"export {state['export_id']} ({start.date()}..{end.date()}, {state['filter']}): "
                               f"rows {i + len(chunk)}/{len(rows)}")
            state = {**state, "window_start": end.isoformat(), "export_id": None, "rows_done": 0}
            self.store.save(**{row: state})
            ended = 0
        self.store.save(**{row: {**state, "done": True}})

    def _create_export(self, state: Dict[str, Any], start: dt.datetime, end: dt.datetime) -> str:
        fields = ("id",) + MarketoClient.LEAD_FIELDS
        try:
            return self.client.create_lead_export(fields, state["filter"], start, end)
        except MarketoError as e:
            if e.code != "1035" or state["filter"] != "updatedAt":
                raise
            log.warning("updatedAt filter unsupported here (1035): falling back to createdAt")
            state["filter"] = "createdAt"
            return self.client.create_lead_export(fields, "createdAt", start, end)

    def _wait_for_export(self, export_id: str) -> Optional[str]:
        """The export's file once it is Completed, or None when it ended without one (Failed, Canceled): the
        caller creates it again. Created: enqueue it; Queued, Processing: poll again. A status Marketo does not
        document fails the run at once rather than being polled until the timeout."""
        deadline = time.monotonic() + self.export_timeout
        while time.monotonic() < deadline:
            status = self.client.lead_export_status(export_id)["status"]
            if status == "Completed":
                return self.client.lead_export_file(export_id)
            if status in EXPORT_ENDED:
                log.warning("export %s ended %s: creating it again", export_id, status)
                return None
            if status == "Created":
                self.client.enqueue_lead_export(export_id)
            elif status not in EXPORT_WAITING:
                raise MarketoError("export_status", f"undocumented export status {status!r}",
                                   f"/bulk/v1/leads/export/{export_id}/status.json")
            time.sleep(max(0.0, min(self.poll_seconds, deadline - time.monotonic())))
        raise TimeoutError(f"export {export_id} did not complete in {self.export_timeout:g}s "
                           f"(--export-timeout-seconds)")

    def _progress(self, what: str) -> None:
        s = self.client.stats
        log.info("%s | calls %d (today %d), %.0fs", what, s.calls, s.calls_today, time.monotonic() - self._started)

    def summary(self, status: str) -> str:
        s, c = self.stats, self.client.stats
        return (f"marketo extractor {status}: pages={s.pages} changes={s.activities} published={s.published} "
                f"duplicates_skipped={s.duplicates} recovered={s.recovered} dead_letters={s.dead_letters} "
                f"exports={s.exports} calls={c.calls} api_calls={c.api_calls} calls_today={c.calls_today} "
                f"token_refreshes={c.token_refreshes} retries={dict(c.retries)} "
                f"rate_wait={self.client.gate.waited_seconds:.1f}s time={time.monotonic() - self._started:.1f}s")


def _record_run(store: "SyncStore", name: str, job: "Extractor", status: str, rc: int) -> None:
    """The run's summary in marketo_sync_state (the status service exports it to Prometheus)."""
    try:
        previous = store.load(name) or {}
        now = time.time()
        store.save(**{name: {
            "status": "ok" if rc == 0 else "failed", "detail": status[:500], "finished_at": now,
            "last_success_at": now if rc == 0 else previous.get("last_success_at"),
            "published": job.stats.published, "dead_letters": job.stats.dead_letters,
            "calls": job.client.stats.calls}})
    except Exception:  # noqa: BLE001 - the summary is for monitoring; the run's outcome stands
        log.exception("could not record the run summary in marketo_sync_state")


def _bulk_guid(row: Dict[str, str]) -> Optional[str]:
    ts = _ms(row.get("updatedAt")) or _ms(row.get("createdAt"))
    return f"bulk:{row.get('id')}:{ts}"


def _when(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m io_connectors.marketo_extractor", description=__doc__.split("\n")[0])
    p.add_argument("--cursor", default="marketo.leads", help="name of the durable cursor (marketo_sync_state)")
    p.add_argument("--ledger", default="marketo.calls", help="name of the calls ledger row (one per instance)")
    p.add_argument("--batch-size", type=int, default=300, help="activities per page (<= 300)")
    p.add_argument("--lead-chunk", type=int, default=300, help="lead ids per leads.json call (<= 300)")
    p.add_argument("--max-pages", type=int, default=10_000, help="stop after this many pages (resume next run)")
    p.add_argument("--calls-per-window", type=int, help="client rate limit (default 50, env MARKETO_CALLS_PER_WINDOW)")
    p.add_argument("--window-seconds", type=float, help="rate window (default 20, env MARKETO_WINDOW_SECONDS)")
    p.add_argument("--max-concurrency", type=int, help="concurrent calls (default 5, env MARKETO_MAX_CONCURRENCY)")
    p.add_argument("--backoff-base-seconds", type=float, help="first retry delay (default 1)")
    p.add_argument("--export-poll-seconds", type=float, default=60.0, help="bulk export status poll interval")
    p.add_argument("--export-window-days", type=float, default=31.0, help="bulk export window (<= 31 days)")
    p.add_argument("--export-chunk-rows", type=int, default=1000, help="export rows published per checkpoint")
    p.add_argument("--export-timeout-seconds", type=_positive,
                   help=f"give up on a bulk export that has not completed in this long (default "
                        f"{EXPORT_TIMEOUT_SECONDS}, env MARKETO_EXPORT_TIMEOUT_SECONDS)")
    p.add_argument("--topic", default=LEADS)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="mode")
    inc = sub.add_parser("incremental", help="lead changes since the cursor (the default)")
    inc.add_argument("--since", type=_when, help="start here when the cursor is new (default: 1 day ago)")
    bf = sub.add_parser("backfill", help="Bulk Lead Extract over [since, until)")
    bf.add_argument("--since", type=_when, required=True)
    bf.add_argument("--until", type=_when, default=dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    p.set_defaults(since=None)
    args = p.parse_args(argv)
    args.mode = args.mode or "incremental"
    if args.export_timeout_seconds is None:
        raw = settings.get("MARKETO_EXPORT_TIMEOUT_SECONDS")
        try:
            args.export_timeout_seconds = _positive(raw) if raw else float(EXPORT_TIMEOUT_SECONDS)
        except argparse.ArgumentTypeError as e:
            p.error(f"MARKETO_EXPORT_TIMEOUT_SECONDS: {e}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from events.logs import configure
    from io_connectors.settings import environment

    configure("marketo-extractor", logging.DEBUG if args.verbose else logging.INFO, environ=environment())
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # never log request lines
    overrides = {k: v for k, v in dict(calls_per_window=args.calls_per_window, window_seconds=args.window_seconds,
                                       max_concurrency=args.max_concurrency,
                                       backoff_base_seconds=args.backoff_base_seconds).items() if v is not None}
    try:
        config = MarketoConfig.from_env(**overrides)
    except ValueError as e:
        log.error("%s", e)
        return 2
    log.info("marketo extractor %s, cursor %s, limits %d calls/%gs, %d concurrent", args.mode, args.cursor,
             config.calls_per_window, config.window_seconds, config.max_concurrency)
    # its own principal on the local secured stack (a pod's POSTGRES_USER/KAFKA_USER win)
    store = SyncStore(PostgresSettings.from_env("marketo-extractor"))
    if not store.lock(args.cursor):
        log.error("another run holds cursor %s: exiting", args.cursor)
        store.close()
        return 1
    client = MarketoClient(config)
    publisher = LeadPublisher(KafkaSettings.from_env("marketo-extractor"), args.topic)
    job = Extractor(client, store, publisher, args.cursor, ledger=args.ledger, batch_size=args.batch_size,
                    lead_chunk=args.lead_chunk, max_pages=args.max_pages, export_window_days=args.export_window_days,
                    export_poll_seconds=args.export_poll_seconds, export_chunk_rows=args.export_chunk_rows,
                    export_timeout_seconds=args.export_timeout_seconds)
    status, rc = "done", 0
    try:
        job.open_ledger()
        if args.mode == "backfill":
            job.backfill(args.since, args.until)
        else:
            job.incremental(args.since)
    except MarketoQuotaExceeded as e:
        status, rc = f"stopped on quota ({e.code}: {e.message}); resume after the daily reset", 3
    except Exception as e:
        status, rc = f"failed: {e}", 1
        log.exception("run failed")
    finally:
        try:
            job.close_ledger()
        finally:
            publisher.close()
            client.close()
            _record_run(store, f"{args.cursor}.last_run", job, status, rc)
            store.close()
    log.info(job.summary(status))
    return rc


if __name__ == "__main__":
    sys.exit(main())
