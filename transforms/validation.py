"""Validation: raw Kafka records -> typed events, with a dead-letter output that never fails the job.

`parse_event` is the pure function (no Beam); `ValidateEvents` is the composite that counts every error
kind and emits dead letters tagged `Tags.DEAD_LETTER`. Rules (issue 3):

- unknown extra fields are kept on the event and listed in its `transformation_metadata()["extra_fields"]`;
- every valid event carries its record's (topic, partition, offset) (`event.source()`), and every dead
  letter names the record and the step (the ValidateEvents step's label);
- errors, each with its own `ErrorKind` and counter: payload over `max_payload_bytes` (default 1 MB),
  bytes that are not UTF-8, text that is not JSON, JSON that is not an object, a missing required field or
  a wrong type (`schema_violation`), a `timestamp` implausibly far in the past or future, and a record from
  a topic that has no contract.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Optional, Type, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from pydantic import ValidationError

from events.contracts import EventModel, Source, set_private_state
from events.topics import CONTRACTS
from events.metrics import step_namespace
from events.dead_letters import DeadLetter, ErrorKind, Tags
from events.records import KafkaRecord

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
                max_past_ms: int = DEFAULT_MAX_PAST_MS, source: Optional[Source] = None) -> EventModel:
    """Decode, parse and validate one payload; raise EventError with the kind and a readable reason.

    JSON parsing and validation happen in one pass (pydantic-core), which is what makes ~10 us/event
    possible; the error is then classified from pydantic's error type. `source` (topic, partition, offset)
    is attached to the event (`event.source()`), so later steps' dead letters name the record.
    """
    if raw is None:
        raise EventError(ErrorKind.NOT_JSON, "empty record (null value)")
    if len(raw) > max_payload_bytes:
        raise EventError(ErrorKind.TOO_LARGE, f"payload is {len(raw)} bytes, limit {max_payload_bytes}")
    if type(raw) is not bytes or not raw.isascii():  # ASCII bytes are UTF-8: skip the decode
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EventError(ErrorKind.NOT_UTF8, f"payload is not UTF-8: {e}") from None
    try:
        event = model.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise EventError(ErrorKind.NOT_JSON, first["msg"]) from None
        if first["type"] == "model_type" and not first["loc"]:
            raise EventError(ErrorKind.NOT_OBJECT, f"expected a JSON object: {first['msg']}") from None
        raise EventError(ErrorKind.SCHEMA, f"{model.__name__}: {_describe(e)}") from None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ts = event.timestamp
    if ts < MIN_PLAUSIBLE_MS or ts < now_ms - max_past_ms:
        raise EventError(ErrorKind.TIMESTAMP, f"timestamp {ts} is implausibly far in the past")
    if ts > now_ms + max_future_ms:
        raise EventError(ErrorKind.TIMESTAMP, f"timestamp {ts} is implausibly far in the future")
    extra = event.__pydantic_extra__
    if extra:  # our own fresh object: set, no copy needed
        set_private_state(event, {"_meta": {"extra_fields": sorted(extra)}, "_src": source})
    elif source is not None:
        set_private_state(event, {"_src": source})
    return event


def parse_record(record: KafkaRecord, model: Optional[Type[EventModel]] = None,
                 contracts: Mapping[str, Type[EventModel]] = CONTRACTS, **limits) -> EventModel:
    """parse_event with the model chosen by the record's topic when `model` is None; the event carries
    the record's (topic, partition, offset) as its source."""
    if model is None:
        model = contracts.get(record.topic)
        if model is None:
            raise EventError(ErrorKind.UNKNOWN_TOPIC, f"no contract for topic {record.topic!r}")
    return parse_event(record.value, model, source=(record.topic, record.partition, record.offset), **limits)


class _ParseEventFn(beam.DoFn):
    def __init__(self, model: Optional[Type[EventModel]], contracts: Mapping[str, Type[EventModel]], step: str,
                 max_payload_bytes: int, max_future_ms: int, max_past_ms: int):
        self._model = model
        self._contracts = dict(contracts)
        self._step = step
        self._limits = dict(max_payload_bytes=max_payload_bytes, max_future_ms=max_future_ms,
                            max_past_ms=max_past_ms)
        self._valid = Metrics.counter(step_namespace(step), "events_valid")
        self._with_extra = Metrics.counter(step_namespace(step), "events_with_extra_fields")
        self._errors = {k: Metrics.counter(step_namespace(step), f"dead_letters_{k.value}") for k in ErrorKind}

    def process(self, record: KafkaRecord) -> Iterable[Union[TimestampedValue, beam.pvalue.TaggedOutput]]:
        try:
            event = parse_record(record, self._model, self._contracts, **self._limits)
        except EventError as e:
            self._errors[e.kind].inc()
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of(
                record.value or b"", step=self._step, error_class=e.kind.value, error_message=str(e),
                topic=record.topic, partition=record.partition, offset=record.offset,
                event_time_ms=record.timestamp_ms))
            return
        self._valid.inc()
        if event.__pydantic_extra__:
            self._with_extra.inc()
        # Event time comes from the payload, not from when Kafka saw it.
        yield TimestampedValue(event, event.timestamp / 1000.0)


@beam.typehints.with_input_types(KafkaRecord)
class ValidateEvents(beam.PTransform):
    """PCollection[KafkaRecord] -> {valid: PCollection[model], dead_letter: PCollection[DeadLetter]}.

    `model=None` picks each record's model by its topic from `contracts` (for pipelines that read several
    topics, such as the archive); a record of a topic without a contract is a dead letter.
    """

    def __init__(self, model: Optional[Type[EventModel]] = None,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
                 max_past_ms: int = DEFAULT_MAX_PAST_MS, label: Optional[str] = None,
                 contracts: Mapping[str, Type[EventModel]] = CONTRACTS):
        super().__init__(label)
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        if max_future_ms < 0 or max_past_ms <= 0:
            raise ValueError("max_future_ms must be >= 0 and max_past_ms > 0")
        self._model = model
        self._contracts = contracts
        self._limits = (max_payload_bytes, max_future_ms, max_past_ms)

    def expand(self, records):
        return records | "Parse" >> beam.ParDo(
            _ParseEventFn(self._model, self._contracts, self.label, *self._limits)).with_outputs(
                Tags.DEAD_LETTER.value, main=Tags.VALID.value)
