"""The project's one dead-letter envelope, and the tag names of failed outputs.

Every record that fails (parsing, validation, a permanent sink error) becomes a `DeadLetter` carrying the
original payload (base64 when it is not UTF-8), where it came from, which step failed and why. Writers send
it as JSON to `<source topic>.dlq` (io_connectors.kafka.WriteDeadLetters).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Optional


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
    TRANSFORM = "transform_error"  # a bug in redaction or scoring: the event is kept as a dead letter
    SINK_PERMANENT = "sink_permanent_error"


@dataclass(frozen=True)
class DeadLetter:
    payload: str
    payload_encoding: str  # "utf-8" or "base64"
    source_topic: Optional[str]
    source_partition: Optional[int]
    source_offset: Optional[int]
    step: str
    error_class: str
    error_message: str
    event_time_ms: Optional[int]
    processing_time_ms: int

    @classmethod
    def of(cls, raw: bytes, *, step: str, error_class: str, error_message: str, topic: Optional[str] = None,
           partition: Optional[int] = None, offset: Optional[int] = None,
           event_time_ms: Optional[int] = None) -> "DeadLetter":
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        return cls(payload, encoding, topic, partition, offset, step, error_class, error_message[:2000],
                   event_time_ms, int(time.time() * 1000))

    @classmethod
    def of_event(cls, event, *, step: str, error: BaseException, topic: Optional[str] = None) -> "DeadLetter":
        """A dead letter for a typed event that a later step (redaction, scoring) could not handle."""
        return cls.of(event.model_dump_json(by_alias=True).encode(), step=step, error_class=ErrorKind.TRANSFORM.value,
                      error_message=f"{type(error).__name__}: {error}", topic=topic,
                      event_time_ms=getattr(event, "timestamp", None))

    def raw_payload(self) -> bytes:
        return base64.b64decode(self.payload) if self.payload_encoding == "base64" else self.payload.encode()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "DeadLetter":
        return cls(**json.loads(data))
