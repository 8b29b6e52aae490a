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

from typing import Iterable, Mapping, Optional, Type, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from events.contracts import EventModel
from events.topics import CONTRACTS
from events.metrics import step_namespace
from events.dead_letters import DeadLetter, ErrorKind, Tags
from events.records import KafkaRecord
# The pure parsing core lives in events.parsing (Beam-free, shared with the producers); re-exported here.
from events.parsing import (DEFAULT_MAX_FUTURE_MS, DEFAULT_MAX_PAST_MS, DEFAULT_MAX_PAYLOAD_BYTES,  # noqa: F401
                            MIN_PLAUSIBLE_MS, EventError, parse_event, parse_record)


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
