"""Multi-topic wiring: split KafkaRecords by topic, validate each with its contract, merge dead letters."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Type

import apache_beam as beam

from transforms.contracts import EventModel
from transforms.validation import ValidateEvents, validated


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
        # Records of an unexpected topic cannot happen with a fixed subscription; they would fail validation
        # against the first contract and leave as dead letters rather than vanish.
        parts = records | "SplitByTopic" >> beam.Partition(lambda r, n: index.get(r.topic, 0), len(topics))
        valid: Dict[str, beam.PCollection] = {}
        dead = []
        for i, topic in enumerate(topics):
            v, d = validated(parts[i] | f"Validate[{topic}]" >> ValidateEvents(
                self._models[topic], max_payload_bytes=self._max))
            valid[topic] = v
            dead.append(d)
        return valid, tuple(dead) | "MergeValidationDeadLetters" >> beam.Flatten()
