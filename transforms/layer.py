"""The whole transform layer as one pure function per record: validate -> redact PII -> score/enrich.

Used by the benchmark (benchmarks/bench_transforms.py) and handy for demos and debugging; pipelines compose
the Beam transforms (ValidateEvents, RedactPii, ScoreAgentTurns, EnrichFrontendEvents, ScoreLeads) instead.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

from events.contracts import EventModel
from events.topics import TOPICS
from transforms.pii import PiiPolicy, Redactor
from transforms.scoring import SCORERS, PriceTable, Scored
from transforms.validation import parse_event


class TransformLayer:
    """`apply(topic, raw)` -> Scored (turns, frontend events, leads) or the redacted event (other topics).
    Raises transforms.validation.EventError for records that would be dead letters."""

    def __init__(self, policy: Optional[PiiPolicy] = None, hmac_key: Optional[bytes] = None,
                 prices: Optional[PriceTable] = None, now_ms: Optional[int] = None):
        self.redactor = Redactor(policy or PiiPolicy.load(), hmac_key)
        prices = prices or PriceTable.load()
        self.now_ms = now_ms
        self.contracts = {t.name: t.contract for t in TOPICS}
        # the registry names each topic's scorer (None: validated and redacted only)
        self.scorers: Dict[str, Callable[[Any], Dict[str, Any]]] = {
            t.name: SCORERS[t.scorer](prices) for t in TOPICS if t.scorer}

    def apply(self, topic: str, raw: bytes) -> Union[Scored, EventModel]:
        event = parse_event(raw, self.contracts[topic], now_ms=self.now_ms)
        event, _ = self.redactor.event(event)
        scorer = self.scorers.get(topic)
        return Scored(event, scorer(event)) if scorer else event
