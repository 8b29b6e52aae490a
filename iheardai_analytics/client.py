"""The producer client: `Analytics.track_event(...)` -> local spill (write-ahead) -> Kafka, on one sender thread.

    analytics = Analytics.from_env()            # Kafka settings as the pipelines read them (KAFKA_*)
    analytics.track_event({"event_type": "text_agent.turn_completed", "session_id": ..., ...})
    await analytics.track_event({...})          # the same call from asyncio code: never suspends
    analytics.turn_completed(session_id=..., turn_id=..., model_name=..., ...)   # typed helpers

What happens to an event:
1. On the caller's thread (microseconds, no I/O, no lock held across a syscall): routed to its topic by
   `event_type` (events.topics' registry), serialized once, validated against the pipelines' own contract
   when `on_invalid="raise"` (development: a bad event raises `InvalidEvent` with the reasons), keyed by
   `session_id`, and appended to the spill (iheardai_analytics.spill): from then on it survives the death of
   the process.
2. The sender thread reads the spill in order and hands it to librdkafka (idempotent producer, acks=all,
   batching with `linger_ms`, lz4, unlimited delivery timeout) with at most `max_in_flight` events in memory.
   With `on_invalid="dead_letter"` (production) it validates there, off the caller's thread, and sends a bad
   event's `DeadLetter` envelope to `<topic>.dlq` instead, counted by reason.
3. Kafka's acknowledgement marks the event in the spill; fully acknowledged segments are deleted.

When Kafka is unreachable nothing new is handed to librdkafka (memory stays flat): events wait in the spill
(counted `spilled`) and are sent in order when the broker answers again. librdkafka's retries of what was
already in flight are idempotent, and the spill hands out every other event once, so a broker outage gives
exactly-once arrival, in order per session. After a crash (kill -9) the next process that opens the same
`spill_dir` sends what was not acknowledged; events acknowledged in the last few milliseconds before the
crash may arrive twice (at-least-once across crashes: every pipeline sink is idempotent on the natural key).

`close()` (also registered with atexit) sends what it can within `flush_timeout_s` and leaves the rest in the
spill for the next start. Metrics (prometheus_client, default registry): `iheardai_producer_events_*_total`
(queued, sent, failed by reason, spilled, recovered) and gauges of the spill and the in-flight window.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import threading
import time
import weakref
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

from events import topics
from events.dead_letters import DeadLetter, ErrorKind
from events.parsing import EventError, parse_event
from events.topics import CONTRACTS, dlq_topic
from iheardai_analytics.routing import EVENT_TYPES, KEY_FIELDS, topic_for
from iheardai_analytics.spill import Segment, SpillLog, SpillRecord, encode

log = logging.getLogger("iheardai_analytics")

ON_INVALID = ("raise", "dead_letter")
DEFAULT_SPILL_ROOT = Path("/var/tmp/iheardai-analytics")
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
_DOWN = {KafkaError._ALL_BROKERS_DOWN}


class InvalidEvent(ValueError):
    """An event the pipelines would dead-letter: `kind` (an ErrorKind value) and the readable reasons."""

    def __init__(self, kind: str, message: str, topic: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.topic = topic


class Prepared(NamedTuple):
    """An event ready for the spill: routed, keyed and serialized (and validated, unless deferred)."""

    topic: str
    key: Optional[bytes]
    value: bytes
    timestamp_ms: int


class _Done:
    """What track_event returns: usable as a plain call or awaited (completes without suspending)."""

    __slots__ = ()

    def __await__(self):
        return iter(())

    def __repr__(self) -> str:
        return "<tracked>"


DONE = _Done()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Analytics:
    """One producer client (one sender thread, one spill directory per `name`). Thread-safe."""

    def __init__(self, producer_config: Optional[Mapping[str, Any]] = None, *, name: str = "analytics",
                 on_invalid: str = "raise", spill_dir: Optional[os.PathLike] = None,
                 default_topic: Optional[str] = None, linger_ms: int = 5, max_in_flight: int = 10_000,
                 spill_max_bytes: int = 1024 ** 3, spill_segment_bytes: int = 64 * 1024 * 1024,
                 fsync_interval_ms: int = 100, flush_timeout_s: float = 10.0, poll_interval_ms: int = 5):
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        if default_topic is not None and default_topic not in CONTRACTS:
            raise ValueError(f"default_topic {default_topic!r} is not in the registry: {sorted(CONTRACTS)}")
        if max_in_flight < 1 or linger_ms < 0 or fsync_interval_ms < 1 or flush_timeout_s < 0:
            raise ValueError("max_in_flight >= 1, linger_ms >= 0, fsync_interval_ms >= 1, flush_timeout_s >= 0")
        self.name = name
        self.on_invalid = on_invalid
        self._raise = on_invalid == "raise"
        self.default_topic = default_topic
        self._max_in_flight = max_in_flight
        self._fsync_s = fsync_interval_ms / 1000
        self._poll_s = poll_interval_ms / 1000
        self.flush_timeout_s = flush_timeout_s
        base = {"bootstrap.servers": "localhost:9092"}
        base.update(producer_config or {})
        self._config = {
            **base,
            "enable.idempotence": True, "acks": "all",
            "linger.ms": linger_ms, "compression.type": "lz4",
            "message.timeout.ms": 0,  # never give up: the spill holds the event, idempotence dedupes retries
            "queue.buffering.max.messages": max(2 * max_in_flight, 1000),
            "queue.buffering.max.kbytes": 256 * 1024,
            "client.id": f"iheardai-analytics-{name}",
            "error_cb": self._on_error,
            "logger": logging.getLogger("iheardai_analytics.librdkafka"),
        }
        self.spill = SpillLog(Path(spill_dir) if spill_dir else DEFAULT_SPILL_ROOT / name,
                              max_bytes=spill_max_bytes, segment_bytes=spill_segment_bytes)
        self._lock = self.spill.lock
        self._producer = Producer(self._config)
        self._callbacks: Dict[tuple, Callable[[Optional[BaseException]], None]] = {}
        # counters (plain ints: cheaper than prometheus Counters on the hot path; exported by _MetricsCollector)
        self.queued = 0
        self.sent = 0
        self.spilled = 0
        self.recovered = self.spill.recovered
        self.failed: Dict[str, int] = {}
        self._written = self.recovered  # records put in the spill (queued + recovered)
        self._handed = 0  # records handed to librdkafka
        self._spill_mark = 0
        self._in_flight = 0
        self.connected = True
        self._fatal: Optional[KafkaError] = None
        self._warned: Dict[str, int] = {}
        self._closing = threading.Event()
        self._close_deadline = float("inf")
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"iheardai-analytics-{name}", daemon=True)
        _CLIENTS.add(self)
        self._thread.start()
        if self.recovered:
            log.info("analytics %s: %d events left by an earlier process found in %s; sending them first",
                     name, self.recovered, self.spill.dir)

    @classmethod
    def from_env(cls, name: str = "analytics", **options: Any) -> "Analytics":
        """Kafka settings from the environment (KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_USER,
        KAFKA_PASSWORD[_FILE], KAFKA_SSL_CA_FILE; the local stack's settings file as fallback), and
        IHEARDAI_ANALYTICS_ON_INVALID (raise | dead_letter), IHEARDAI_ANALYTICS_SPILL_DIR."""
        from io_connectors.settings import KafkaSettings, get

        options.setdefault("on_invalid", get("IHEARDAI_ANALYTICS_ON_INVALID", "raise"))
        spill = get("IHEARDAI_ANALYTICS_SPILL_DIR")
        if spill:
            options.setdefault("spill_dir", Path(spill) / name)
        return cls(KafkaSettings.from_env().librdkafka_config(), name=name, **options)

    # --- the caller's side ------------------------------------------------------------------------------

    def prepare(self, event: Mapping[str, Any], topic: Optional[str] = None, validate: Optional[bool] = None,
                now_ms: Optional[int] = None) -> Prepared:
        """Route, key, serialize and (when `validate`, default: on_invalid == "raise") validate one event.
        A missing `timestamp` becomes now. Raises InvalidEvent."""
        if not isinstance(event, Mapping):
            raise InvalidEvent(ErrorKind.NOT_OBJECT.value, f"an event is a JSON object (dict), got {type(event).__name__}")
        if topic is None:
            topic = topic_for(event.get("event_type"), self.default_topic)
            if topic is None:
                raise InvalidEvent(ErrorKind.UNKNOWN_TOPIC.value,
                                   f"event_type {event.get('event_type')!r} names no topic: pass topic=, or use one "
                                   f"of {sorted(set(EVENT_TYPES) - set(CONTRACTS))}")
        elif topic not in CONTRACTS:
            raise InvalidEvent(ErrorKind.UNKNOWN_TOPIC.value, f"unknown topic {topic!r}; known: {sorted(CONTRACTS)}")
        ts = event.get("timestamp")
        if ts is None:
            ts = _now_ms() if now_ms is None else now_ms
            event = {**event, "timestamp": ts}
        try:
            value = orjson.dumps(event)
        except (TypeError, orjson.JSONEncodeError) as e:
            raise InvalidEvent(ErrorKind.NOT_JSON.value, f"not serializable as JSON: {e}", topic) from None
        if validate if validate is not None else self._raise:
            try:
                parse_event(value, CONTRACTS[topic], now_ms=now_ms)
            except EventError as e:
                raise InvalidEvent(e.kind.value, str(e), topic) from None
        k = event.get(KEY_FIELDS[topic])
        key = None if k is None else (k if isinstance(k, bytes) else str(k).encode())
        return Prepared(topic, key, value, ts if type(ts) is int else _now_ms())

    def send(self, prepared: Prepared,
             on_delivery: Optional[Callable[[Optional[BaseException]], None]] = None) -> bool:
        """Put a prepared event in the spill; False (counted failed: spill_full or closed) when it cannot.

        `on_delivery(error_or_None)` runs on the sender thread once Kafka acknowledged (None) or refused it."""
        body = encode(prepared.topic, prepared.key, prepared.value, prepared.timestamp_ms)
        with self._lock:
            if self._closed:
                ref = None
                reason = "closed"
            else:
                ref = self.spill.append(body)
                reason = "spill_full"
            if ref is None:
                self._count_failed(reason)
            else:
                self.queued += 1
                self._written += 1
        if ref is None:
            self._warn(reason, f"analytics {self.name}: event dropped ({reason}; spill {self.spill.dir})")
            if on_delivery is not None:
                on_delivery(BufferError(reason))
            return False
        if on_delivery is not None:
            self._callbacks[ref] = on_delivery
            if ref[0].acks[ref[1]]:  # acknowledged before we registered: call it here (exactly one pop wins)
                cb = self._callbacks.pop(ref, None)
                if cb is not None:
                    cb(None)
        return True

    def track_event(self, event: Mapping[str, Any], topic: Optional[str] = None,
                    on_delivery: Optional[Callable[[Optional[BaseException]], None]] = None) -> _Done:
        """Track one event (a dict following its topic's contract). Never blocks; returns an awaitable that
        completes at once, so both `track_event(...)` and `await track_event(...)` work.

        Bad events raise InvalidEvent when on_invalid="raise"; with "dead_letter" they are counted and their
        DeadLetter goes to `<topic>.dlq` (an event whose topic cannot be told is counted and logged)."""
        try:
            prepared = self.prepare(event, topic)
        except InvalidEvent as e:
            if self._raise:
                raise
            self._dead_letter_unsent(event, e)
            return DONE
        self.send(prepared, on_delivery)
        return DONE

    def track(self, event, on_delivery=None) -> _Done:
        """Track a contract instance (events.contracts), e.g. `track(AgentTurnCompleted(...))`."""
        topic = _TOPIC_OF_MODEL.get(type(event))
        if topic is None:
            raise TypeError(f"{type(event).__name__} is not a contract of events.topics")
        return self.track_event(event.model_dump(mode="json", by_alias=True, exclude_none=True), topic, on_delivery)

    def _dead_letter_unsent(self, event: Any, e: InvalidEvent) -> None:
        self._count_failed(e.kind)
        if e.topic is None:
            self._warn(e.kind, f"analytics {self.name}: event not sent ({e.kind}): {e}")
            return
        try:
            raw = orjson.dumps(event, default=repr)
        except Exception:  # noqa: BLE001 - whatever it is, keep its repr
            raw = repr(event).encode()
        dl = DeadLetter.of(raw, step=f"producer[{self.name}]", error_class=e.kind, error_message=str(e),
                           topic=e.topic)
        self.send(Prepared(dlq_topic(e.topic), None, dl.to_json(), _now_ms()))

    def _count_failed(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    def _warn(self, what: str, message: str) -> None:
        n = self._warned[what] = self._warned.get(what, 0) + 1
        if n <= 10 or n % 1000 == 0:
            log.warning("%s (%d so far)", message, n)

    # --- lifecycle ----------------------------------------------------------------------------------------

    def flush(self, timeout_s: Optional[float] = None) -> int:
        """Wait until everything tracked so far is acknowledged by Kafka; the number still unacknowledged."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        while True:
            left = self.spill.unacked()
            if left == 0 or time.monotonic() >= deadline or not self._thread.is_alive():
                return left
            time.sleep(0.005)

    async def aflush(self, timeout_s: Optional[float] = None) -> int:
        return await asyncio.to_thread(self.flush, timeout_s)

    def close(self, timeout_s: Optional[float] = None) -> int:
        """Send what can be sent within the timeout, stop the sender, close the spill; returns the number of
        events left in the spill (sent by the next process that opens it)."""
        if self._closed:
            return 0
        timeout = self.flush_timeout_s if timeout_s is None else timeout_s
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._thread.join(timeout + 5)
        with self._lock:
            self._closed = True
        left = self.spill.close()
        _CLIENTS.discard(self)
        if left:
            log.warning("analytics %s: %d events not acknowledged by Kafka at close; kept in %s for the next start",
                        self.name, left, self.spill.dir)
        return left

    def __enter__(self) -> "Analytics":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "Analytics":
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.close)

    def stats(self) -> Dict[str, Any]:
        return {"queued": self.queued, "sent": self.sent, "spilled": self.spilled, "recovered": self.recovered,
                "failed": dict(self.failed), "in_flight": self._in_flight, "spill_backlog": self.spill.backlog(),
                "spill_unacked": self.spill.unacked(), "spill_bytes": self.spill.used_bytes(),
                "kafka_connected": self.connected, "fatal": str(self._fatal) if self._fatal else None}

    # --- the sender thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        last_sync = last_gc = time.monotonic()
        try:
            while True:
                closing = self._closing.is_set()
                if self._fatal is not None:
                    self._restart_producer()
                self._pump(closing)
                self._producer.poll(0 if closing else self._poll_s)
                now = time.monotonic()
                if now - last_sync >= self._fsync_s:
                    self.spill.sync()
                    last_sync = now
                if now - last_gc >= 1.0:
                    self.spill.collect()
                    last_gc = now
                if closing and ((self._in_flight == 0 and self.spill.backlog() == 0)
                                or now >= self._close_deadline):
                    self._producer.poll(0)
                    break
        except Exception:  # noqa: BLE001 - a bug here must not die silently: the spill keeps the events
            log.exception("analytics %s: sender thread failed; events stay in %s", self.name, self.spill.dir)
        finally:
            self.spill.sync()

    def _pump(self, closing: bool) -> None:
        room = self._max_in_flight - self._in_flight
        if not self.connected and not closing:
            room = min(room, 0 if self._in_flight else 1)  # one probe; the rest waits in the spill
        if room <= 0:
            self._note_spilled()
            return
        records = self.spill.read(room)
        produce = self._producer.produce
        for i, r in enumerate(records):
            topic, value = r.topic, r.value
            dead = topic.endswith(".dlq")  # a dead letter queued by track_event: not counted as sent
            if not self._raise and not dead:
                try:
                    parse_event(value, CONTRACTS[topic])
                except EventError as e:
                    self._count_failed(e.kind.value)
                    topic, dead = dlq_topic(topic), True
                    value = DeadLetter.of(value, step=f"producer[{self.name}]", error_class=e.kind.value,
                                          error_message=str(e), topic=r.topic, event_time_ms=r.timestamp_ms).to_json()
            try:
                produce(topic, value, r.key, timestamp=r.timestamp_ms,
                        on_delivery=partial(self._delivered, r.segment, r.index, dead))
            except BufferError:
                for rest in records[i:]:
                    rest.segment.rewind(rest.index)
                self._note_spilled()
                return
            except KafkaException as e:  # refused locally (e.g. larger than message.max.bytes): permanent
                self._fail_permanently(r, e.args[0] if e.args else KafkaError(KafkaError._INVALID_ARG))
                continue
            self._in_flight += 1
            self._handed += 1
        if self._in_flight >= self._max_in_flight:
            self._note_spilled()

    def _note_spilled(self) -> None:
        """Records written but not handed to Kafka because it is not taking them: count each once."""
        written = self._written
        start = max(self._spill_mark, self._handed)
        if written > start:
            self.spilled += written - start
            self._spill_mark = written

    def _delivered(self, seg: Segment, idx: int, dead: bool, err: Optional[KafkaError], msg) -> None:
        self._in_flight -= 1
        if err is None:
            self.connected = True
            if not dead:
                self.sent += 1
        elif err.code() in _PURGED:
            return  # not sent: stays unacknowledged in the spill for the next start
        elif not dead:
            self._fail_permanently(SpillRecord(seg, idx, msg.topic(), msg.key(), msg.value(), 0), err)
            return
        else:
            self._count_failed(f"dead_letter_{err.name().lower()}")
            self._warn("dead_letter_failed", f"analytics {self.name}: a dead letter to {msg.topic()} failed: {err}")
        seg.ack(idx)
        cb = self._callbacks.pop((seg, idx), None) if self._callbacks else None
        if cb is not None:
            cb(None if err is None else KafkaException(err))

    def _fail_permanently(self, r: SpillRecord, err: KafkaError) -> None:
        """Kafka refused the event for good: count it and send its dead letter (acknowledging it then)."""
        reason = err.name().lower()
        self._count_failed(reason)
        self._warn(reason, f"analytics {self.name}: Kafka refused an event for {r.topic}: {err}")
        dl = DeadLetter.of(r.value or b"", step=f"producer[{self.name}]", error_class="producer_delivery_failed",
                           error_message=str(err), topic=r.topic)
        try:
            self._producer.produce(dlq_topic(r.topic), dl.to_json(), r.key,
                                   on_delivery=partial(self._delivered, r.segment, r.index, True))
            self._in_flight += 1
        except (BufferError, KafkaException):
            r.segment.ack(r.index)  # the DLQ cannot take it either: counted and logged above
        cb = self._callbacks.pop((r.segment, r.index), None) if self._callbacks else None
        if cb is not None:
            cb(KafkaException(err))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            log.error("analytics %s: fatal producer error %s; recreating the producer", self.name, err)
        elif err.code() in _DOWN:
            if self.connected:
                log.warning("analytics %s: Kafka unreachable (%s); events wait in the spill %s", self.name, err,
                            self.spill.dir)
            self.connected = False

    def _restart_producer(self) -> None:
        """A fatal idempotence error: new producer, and everything unacknowledged is handed out again."""
        self._fatal = None
        self._producer = Producer(self._config)
        for seg in self.spill.segments:
            first = seg.acks.find(b"\x00", 0, seg.count)
            seg.rewind(seg.count if first < 0 else first)
        self._in_flight = 0


class _MetricsCollector:
    """Every live client's counters and gauges for prometheus_client (registered once, on REGISTRY)."""

    def collect(self) -> Iterator:
        c = {n: CounterMetricFamily(f"iheardai_producer_events_{n}", doc, labels=["client"]) for n, doc in (
            ("queued", "events accepted by track_event (written to the spill)"),
            ("sent", "events acknowledged by Kafka"),
            ("spilled", "events that waited in the spill because Kafka was not taking them"),
            ("recovered", "events found in the spill of an earlier process at start"))}
        failed = CounterMetricFamily("iheardai_producer_events_failed", "events not sent, by reason",
                                     labels=["client", "reason"])
        g = {n: GaugeMetricFamily(f"iheardai_producer_{n}", doc, labels=["client"]) for n, doc in (
            ("in_flight_events", "events handed to librdkafka, not yet acknowledged"),
            ("spill_backlog_events", "events in the spill not yet handed to Kafka"),
            ("spill_bytes", "bytes of the spill's live segments"),
            ("kafka_connected", "1 unless librdkafka reported all brokers down"))}
        for a in list(_CLIENTS):
            for n in c:
                c[n].add_metric([a.name], getattr(a, n))
            for reason, v in list(a.failed.items()):
                failed.add_metric([a.name, reason], v)
            g["in_flight_events"].add_metric([a.name], a._in_flight)
            g["spill_backlog_events"].add_metric([a.name], a.spill.backlog())
            g["spill_bytes"].add_metric([a.name], a.spill.used_bytes())
            g["kafka_connected"].add_metric([a.name], 1 if a.connected else 0)
        yield from c.values()
        yield failed
        yield from g.values()


_CLIENTS: "weakref.WeakSet[Analytics]" = weakref.WeakSet()
REGISTRY.register(_MetricsCollector())
_TOPIC_OF_MODEL = {t.contract: t.name for t in topics.TOPICS if t.contract is not None}


@atexit.register
def _close_all() -> None:
    for a in list(_CLIENTS):
        try:
            a.close()
        except Exception:  # noqa: BLE001
            log.exception("analytics %s: close at exit failed", a.name)


# --- typed helpers: one per contract, with the contract's fields as keyword arguments -----------------------

def _helper(topic_name: str, model) -> Callable[..., _Done]:
    fixed_type = model.model_fields["event_type"].default if "event_type" in model.model_fields else None

    def helper(self: Analytics, **fields: Any) -> _Done:
        if isinstance(fixed_type, str):
            fields.setdefault("event_type", fixed_type)
        return self.track_event(fields, topic_name)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for fname, f in model.model_fields.items():
        if fname == "timestamp":
            default = None  # now
        elif f.is_required():
            default = inspect.Parameter.empty
        else:
            default = f.get_default(call_default_factory=True)
        params.append(inspect.Parameter(f.alias or fname, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=f.annotation))
    helper.__signature__ = inspect.Signature(params, return_annotation=_Done)
    helper.__doc__ = f"Track one `{topic_name}` event ({model.__name__}); `timestamp` defaults to now.\n\n" \
                     f"{inspect.cleandoc(model.__doc__ or '')}"
    return helper


HELPERS = {
    "turn_completed": topics.TURNS,
    "tool_invoked": topics.TOOLS,
    "session_updated": topics.SESSIONS,
    "user_interaction": topics.FRONTEND_INTERACTION,
    "session_analytics": topics.FRONTEND_SESSION,
    "widget_performance": topics.FRONTEND_WIDGET,
}
for _name, _topic in HELPERS.items():
    _fn = _helper(_topic, CONTRACTS[_topic])
    _fn.__name__ = _fn.__qualname__ = _name
    setattr(Analytics, _name, _fn)
