"""Validation: raw Kafka records -> typed events, with a dead-letter output that never fails the job.

`parse_event` is the pure function (no Beam); `ValidateEvents` is the composite that counts every error
kind and emits dead letters tagged `Tags.DEAD_LETTER`.
"""

from __future__ import annotations

import json
import time
from typing import Iterable, Optional, Tuple, Type, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from pydantic import ValidationError

from transforms.contracts import EventModel
from transforms.dead_letters import DeadLetter, ErrorKind, Tags
from transforms.records import KafkaRecord

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_FUTURE_MS = 24 * 3600 * 1000  # clock skew we accept from producers
DEFAULT_MAX_PAST_MS = 400 * 24 * 3600 * 1000  # older than this is a unit error or garbage
MIN_PLAUSIBLE_MS = 946684800000  # 2000-01-01: anything before is seconds-not-millis or garbage


class EventError(ValueError):
    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind


def _describe(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()[:10])


def parse_event(raw: bytes, model: Type[EventModel], *, now_ms: Optional[int] = None,
                max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
                max_past_ms: int = DEFAULT_MAX_PAST_MS) -> EventModel:
    """Decode, parse and validate one payload; raise EventError with the kind and a readable reason."""
    if raw is None:
        raise EventError(ErrorKind.NOT_JSON, "empty record (null value)")
    if len(raw) > max_payload_bytes:
        raise EventError(ErrorKind.TOO_LARGE, f"payload is {len(raw)} bytes, limit {max_payload_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EventError(ErrorKind.NOT_UTF8, f"payload is not UTF-8: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise EventError(ErrorKind.NOT_JSON, f"invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise EventError(ErrorKind.NOT_OBJECT, f"expected a JSON object, got {type(doc).__name__}")
    try:
        event = model.model_validate(doc)
    except ValidationError as e:
        raise EventError(ErrorKind.SCHEMA, f"{model.__name__}: {_describe(e)}") from None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ts = event.timestamp
    if ts < MIN_PLAUSIBLE_MS or ts < now_ms - max_past_ms:
        raise EventError(ErrorKind.TIMESTAMP, f"timestamp {ts} is implausibly far in the past")
    if ts > now_ms + max_future_ms:
        raise EventError(ErrorKind.TIMESTAMP, f"timestamp {ts} is implausibly far in the future")
    return event


class _ParseEventFn(beam.DoFn):
    def __init__(self, model: Type[EventModel], step: str, max_payload_bytes: int, max_future_ms: int,
                 max_past_ms: int):
        self._model = model
        self._step = step
        self._limits = dict(max_payload_bytes=max_payload_bytes, max_future_ms=max_future_ms,
                            max_past_ms=max_past_ms)
        self._valid = Metrics.counter(self.__class__, "events_valid")
        self._errors = {k: Metrics.counter(self.__class__, f"dead_letters_{k.value}") for k in ErrorKind}

    def process(self, record: KafkaRecord) -> Iterable[Union[TimestampedValue, beam.pvalue.TaggedOutput]]:
        try:
            event = parse_event(record.value, self._model, **self._limits)
        except EventError as e:
            self._errors[e.kind].inc()
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
                record.value or b"", step=self._step, error_class=e.kind.value, error_message=str(e),
                topic=record.topic, partition=record.partition, offset=record.offset,
                event_time_ms=record.timestamp_ms))
            return
        self._valid.inc()
        # Event time comes from the payload, not from when Kafka saw it.
        yield TimestampedValue(event, event.timestamp / 1000.0)


class ValidateEvents(beam.PTransform):
    """PCollection[KafkaRecord] -> {valid: PCollection[model], dead_letter: PCollection[DeadLetter]}."""

    def __init__(self, model: Type[EventModel], max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 max_future_ms: int = DEFAULT_MAX_FUTURE_MS, max_past_ms: int = DEFAULT_MAX_PAST_MS,
                 label: Optional[str] = None):
        super().__init__(label)
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        self._model = model
        self._limits = (max_payload_bytes, max_future_ms, max_past_ms)

    def expand(self, records):
        return records | "Parse" >> beam.ParDo(
            _ParseEventFn(self._model, self.label, *self._limits)).with_outputs(
                Tags.DEAD_LETTER.value, main=Tags.VALID.value)


def validated(results) -> Tuple[beam.PCollection, beam.PCollection]:
    """(valid, dead_letters) from ValidateEvents' tagged result."""
    return results[Tags.VALID.value], results[Tags.DEAD_LETTER.value]
