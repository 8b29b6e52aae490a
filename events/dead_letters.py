"""The project's one dead-letter envelope, and the tag names of failed outputs.

Every record that fails (parsing, validation, redaction, scoring, a permanent sink error) becomes a
`DeadLetter` carrying the original payload (base64 when it is not UTF-8), where it came from (source topic,
partition, offset), which step refused it and why. Writers send it as JSON to `<source topic>.dlq`
(io_connectors.kafka.WriteDeadLetters).

Where a dead letter comes from:

- validation knows the Kafka record: `DeadLetter.of(raw, topic=, partition=, offset=)`;
- later steps hold a typed event, which carries its record's position since validation
  (`EventModel.source()`): `DeadLetter.of_event(event, ...)` takes it from there;
- sinks get plain dicts: the pipelines add the position under `SOURCE_KEY` (`KeepSource(fn)` wraps the
  row builder), and the sink passes `source=source_of(row)` to `DeadLetter.of` (a sink that aggregates
  several records keeps its `topic=` fallback).

The envelope is bounded (issue 19): `to_json(max_payload_bytes)` keeps a payload whose JSON form is larger
than `max_payload_bytes` by reference only: `payload` then holds a prefix (valid UTF-8, or base64 of a byte
prefix), `payload_truncated` is true, and `payload_bytes` / `payload_sha256` describe the whole original,
which is still in its source topic at (source_topic, source_partition, source_offset) and in the Parquet
archive. Every other text field is clamped, so an envelope is never larger than
`max_payload_bytes + MAX_ENVELOPE_OVERHEAD_BYTES` whatever the record was. `from_json` reads envelopes
with and without the newer fields.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, Optional, Tuple

Source = Tuple[Optional[str], Optional[int], Optional[int]]  # (topic, partition, offset)

SOURCE_KEY = "_source"  # where dict rows/sink inputs carry their record's (topic, partition, offset)

# Inline payloads up to this size (bytes of the payload's JSON string); larger ones by reference. The broker
# accepts 1 MiB per message (Kafka's message.max.bytes 1048588 and producer max.request.size 1048576, both
# defaults, both the local stack's); 256 KiB stays far below it with any envelope overhead.
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
MIN_MAX_PAYLOAD_BYTES = 1024
# Clamps (characters) of the other text fields; one character is at most 6 bytes of JSON (\u00XX).
MAX_CHARS = {"error_message": 2000, "step": 200, "error_class": 100, "source_topic": 255, "payload_encoding": 10,
             "payload_sha256": 64}
# Bound of everything but the payload: the clamped text fields at 6 bytes a character, plus keys, numbers
# and punctuation (< 1 KiB).
MAX_ENVELOPE_OVERHEAD_BYTES = 6 * sum(MAX_CHARS.values()) + 1024


class Tags(str, Enum):
    """Names of tagged outputs, one enum for the whole project."""

    VALID = "valid"
    DEAD_LETTER = "dead_letter"


class ErrorKind(str, Enum):
    """Error classes; each has a Beam counter in the step that raises it."""

    NOT_UTF8 = "not_utf8"
    TOO_LARGE = "payload_too_large"
    NOT_JSON = "invalid_json"
    NOT_OBJECT = "not_a_json_object"
    SCHEMA = "schema_violation"
    TIMESTAMP = "implausible_timestamp"
    UNKNOWN_TOPIC = "unknown_topic"
    NO_PII_POLICY = "no_pii_policy"  # an event whose model has no entry in the PII policy (never written)
    TRANSFORM = "transform_error"  # a bug in redaction or scoring: the event is kept as a dead letter
    SINK_PERMANENT = "sink_permanent_error"


class PayloadTruncated(ValueError):
    """The envelope holds only a prefix of the payload; fetch the original from its source position."""


def _dumps(obj: Any) -> bytes:
    # ensure_ascii=False: non-ASCII text costs its UTF-8 bytes, not 6-12 bytes of \u escapes. A lone
    # surrogate (possible in a str decoded from JSON escapes) becomes its JSON escape via backslashreplace.
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8",
                                                                                              "backslashreplace")


def _json_len(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "backslashreplace"))


def _utf8_prefix(raw: bytes, budget: int) -> str:
    """The longest prefix of UTF-8 `raw` (cut on a character boundary) whose JSON string fits `budget`."""
    n = min(len(raw), budget)
    while True:
        text = raw[:n].decode("utf-8", "ignore")  # raw is valid UTF-8: only a cut last character is dropped
        size = _json_len(text)
        if size <= budget or n == 0:
            return text
        n = max(0, min(n - 1, int(n * budget / size) - 8))  # escapes cost up to 6x: shrink proportionally


def _clamp(value: Optional[str], field: str) -> Optional[str]:
    limit = MAX_CHARS[field]
    return value if value is None or len(value) <= limit else value[:limit - 1] + "…"


@dataclass(frozen=True)
class DeadLetter:
    payload: str  # the original payload, or its prefix when payload_truncated
    payload_encoding: str  # "utf-8" or "base64"
    source_topic: Optional[str]
    source_partition: Optional[int]
    source_offset: Optional[int]
    step: str  # the step that refused the record (a Beam step name)
    error_class: str
    error_message: str
    event_time_ms: Optional[int]
    processing_time_ms: int
    # since issue 19 (older envelopes lack them; from_json fills the defaults)
    payload_bytes: Optional[int] = None  # size of the whole original payload
    payload_sha256: Optional[str] = None  # hex SHA-256 of the whole original payload
    payload_truncated: bool = False  # payload is a prefix: fetch the original from the source position
    unrouted: bool = False  # the source topic has no DLQ: this landed in the writer's fallback DLQ

    @classmethod
    def of(cls, raw: bytes, *, step: str, error_class: str, error_message: str, topic: Optional[str] = None,
           partition: Optional[int] = None, offset: Optional[int] = None,
           event_time_ms: Optional[int] = None, source: Optional[Source] = None) -> "DeadLetter":
        """`source` (topic, partition, offset), when known, wins over `topic`/`partition`/`offset`, which
        then serve as the fallback of a step that only knows its topic."""
        if source is not None and source[0] is not None:
            topic, partition, offset = source
        raw = bytes(raw)
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return cls(payload, encoding, topic, partition, offset, _clamp(step, "step"),
                   _clamp(error_class, "error_class"), _clamp(error_message, "error_message"), event_time_ms,
                   int(time.time() * 1000), len(raw), hashlib.sha256(raw).hexdigest())

    @classmethod
    def of_event(cls, event, *, step: str, error: BaseException, topic: Optional[str] = None,
                 error_class: str = ErrorKind.TRANSFORM.value) -> "DeadLetter":
        """A dead letter for a typed event that a later step (redaction, scoring) could not handle; the
        source position comes from the event (set by validation), `topic` is only a fallback."""
        return cls.of(event.model_dump_json(by_alias=True).encode(), step=step, error_class=error_class,
                      error_message=f"{type(error).__name__}: {error}", topic=topic, source=source_of(event),
                      event_time_ms=getattr(event, "timestamp", None))

    def raw_payload(self) -> bytes:
        """The original payload; raises PayloadTruncated when the envelope holds only its prefix."""
        if self.payload_truncated:
            raise PayloadTruncated(
                f"payload of {self.payload_bytes} bytes stored by reference: fetch {self.source_topic} partition "
                f"{self.source_partition} offset {self.source_offset} (sha256 {self.payload_sha256})")
        return self.prefix_bytes()

    def prefix_bytes(self) -> bytes:
        """The payload bytes the envelope holds (the whole payload, or its prefix when truncated)."""
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8", "surrogatepass")  # a lone surrogate only in a hand-made envelope

    def bounded(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> "DeadLetter":
        """This dead letter with every field clamped and, when the payload's JSON string is larger than
        `max_payload_bytes`, the payload stored by reference (prefix, size, digest). Idempotent."""
        if max_payload_bytes < MIN_MAX_PAYLOAD_BYTES:
            raise ValueError(f"max_payload_bytes must be >= {MIN_MAX_PAYLOAD_BYTES}")
        changes: Dict[str, Any] = {}
        for name in MAX_CHARS:
            value = getattr(self, name)
            clamped = _clamp(value if isinstance(value, str) or value is None else str(value), name)
            if clamped is not value:
                changes[name] = clamped
        if self.payload_encoding not in ("utf-8", "base64"):
            changes["payload_encoding"] = "utf-8"
        payload = self.payload
        # a UTF-8 payload's JSON string is at most 6 bytes per character + quotes: measure only when it may not fit
        small = len(payload) + 2 <= max_payload_bytes if self.payload_encoding == "base64" else \
            6 * len(payload) + 2 <= max_payload_bytes
        if not small and (self.payload_encoding == "base64" or _json_len(payload) > max_payload_bytes):
            raw = self.prefix_bytes()
            if self.payload_truncated or (self.payload_bytes is not None and self.payload_sha256):
                size, digest = self.payload_bytes, self.payload_sha256  # the original's, set by `of`
            else:
                size, digest = len(raw), hashlib.sha256(raw).hexdigest()
            budget = max_payload_bytes - 2  # the quotes
            if self.payload_encoding == "base64":
                prefix = base64.b64encode(raw[:budget // 4 * 3]).decode("ascii")
            else:
                prefix = _utf8_prefix(raw, budget)
            changes.update(payload=prefix, payload_truncated=True, payload_bytes=size, payload_sha256=digest)
        elif self.payload_bytes is None or self.payload_sha256 is None:
            raw = self.prefix_bytes()
            changes.update(payload_bytes=len(raw), payload_sha256=hashlib.sha256(raw).hexdigest())
        return dataclasses.replace(self, **changes) if changes else self

    def to_json(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
        """The JSON envelope, never larger than max_payload_bytes + MAX_ENVELOPE_OVERHEAD_BYTES."""
        return _dumps(dataclasses.asdict(self.bounded(max_payload_bytes)))

    @classmethod
    def from_json(cls, data: bytes) -> "DeadLetter":
        """Envelopes of every version: missing newer fields take their defaults, unknown fields are ignored."""
        doc = json.loads(data)
        return cls(**{k: v for k, v in doc.items() if k in _FIELDS})

    def kafka_key(self) -> bytes:
        """`topic:partition:offset`: a replay writes the same key again (consumers can dedupe)."""
        return f"{self.source_topic}:{self.source_partition}:{self.source_offset}".encode("utf-8",
                                                                                          "backslashreplace")


_FIELDS = frozenset(f.name for f in dataclasses.fields(DeadLetter))


def source_of(obj: Any) -> Optional[Source]:
    """(topic, partition, offset) of a typed event (EventModel.source()), a Scored (its event) or a dict
    carrying SOURCE_KEY; None when unknown."""
    if isinstance(obj, dict):
        src = obj.get(SOURCE_KEY)
        return tuple(src) if src else None
    # An event first: asking a pydantic model for an attribute it lacks ("event") goes through its __getattr__,
    # which builds an AttributeError each time (py-spy: 4 % of the KPI job's SDK worker, once per turn).
    private = getattr(obj, "__pydantic_private__", None)
    if private is None:
        event = getattr(obj, "event", None)  # Scored(event, scores)
        private = getattr(event, "__pydantic_private__", None) if event is not None else None
    return private.get("_src") if private else None


class KeepSource:
    """Wraps a function that turns an event (or a Scored) into a dict for a sink, so that the dict carries
    the event's source position under SOURCE_KEY (sinks ignore unknown keys and use it for dead letters)."""

    def __init__(self, fn: Callable[[Any], Dict[str, Any]]):
        self.fn = fn

    def __call__(self, element: Any) -> Dict[str, Any]:
        out = self.fn(element)
        src = source_of(element)
        if src is not None:
            out[SOURCE_KEY] = src
        return out


def without_source(row: Dict[str, Any]) -> Dict[str, Any]:
    """The dict without SOURCE_KEY (for a dead letter's payload)."""
    return {k: v for k, v in row.items() if k != SOURCE_KEY} if SOURCE_KEY in row else row


def split_dead_letters(results) -> Tuple[Any, Any]:
    """(main output, dead letters) of a step tagged with Tags.VALID and Tags.DEAD_LETTER (ValidateEvents,
    RedactPii, the scorers)."""
    return results[Tags.VALID.value], results[Tags.DEAD_LETTER.value]
