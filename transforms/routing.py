"""Multi-topic wiring: split KafkaRecords by topic, validate each with its contract, merge dead letters.

Every valid event carries its record's (topic, partition, offset) (`event.source()`), and every dead letter
names its record, so that WriteDeadLetters sends it to its own topic's DLQ."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Type

import apache_beam as beam

from events.contracts import EventModel
from events.records import KafkaRecord
from transforms.validation import ValidateEvents
from events.dead_letters import split_dead_letters


@beam.typehints.with_input_types(KafkaRecord)
class ValidateByTopic(beam.PTransform):
    """PCollection[KafkaRecord] of several topics -> ({topic: PCollection[model]}, PCollection[DeadLetter])."""

    def __init__(self, models: Mapping[str, Type[EventModel]], max_payload_bytes: int = 1024 * 1024,
                 label: Optional[str] = None):
        super().__init__(label)
        if not models:
            raise ValueError("ValidateByTopic needs at least one topic")
        self._models = dict(models)
        self._max = max_payload_bytes

    def expand(self, records):
        topics = list(self._models)
        index = {t: i for i, t in enumerate(topics)}
        unexpected = len(topics)
        # Records of an unexpected topic cannot happen with a fixed subscription; if one does, it leaves as an
        # `unknown_topic` dead letter naming its own topic/partition/offset rather than vanish.
        parts = records | "SplitByTopic" >> beam.Partition(lambda r, n: index.get(r.topic, unexpected),
                                                           len(topics) + 1)
        valid: Dict[str, beam.PCollection] = {}
        dead = []
        for i, topic in enumerate(topics):
            v, d = split_dead_letters(parts[i] | f"Validate[{topic}]" >> ValidateEvents(
                self._models[topic], max_payload_bytes=self._max))
            valid[topic] = v
            dead.append(d)
        _, d = split_dead_letters(parts[unexpected] | "UnexpectedTopic" >> ValidateEvents(
            None, max_payload_bytes=self._max, contracts={}))
        dead.append(d)
        return valid, tuple(dead) | "MergeValidationDeadLetters" >> beam.Flatten()
