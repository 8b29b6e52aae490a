"""Which topic an event goes to and which field keys it, from the topic registry (events.topics)."""

from __future__ import annotations

from typing import Dict, Optional

from events import topics
from events.topics import CONTRACTS

# Every topic is keyed by session (per-session order is what the pipelines need), except the two whose
# contracts have no session: billing rows per account and Marketo deltas per lead.
KEY_FIELDS: Dict[str, str] = {t.name: "session_id" for t in topics.TOPICS}
KEY_FIELDS.update({topics.BILLING: "account_id", topics.LEADS: "lead_id"})


def _default_event_type(model) -> Optional[str]:
    field = model.model_fields.get("event_type")
    return field.default if field is not None and isinstance(field.default, str) else None


# `event_type` -> topic: each contract's default event_type (e.g. "text_agent.turn_completed"), and the
# topic names themselves. `frontend.user.interaction` has no fixed type (click, widget_open, ...): callers
# name it with `topic=` or a client's `default_topic` (the HTTP collector's).
EVENT_TYPES: Dict[str, str] = {name: name for name in CONTRACTS}
EVENT_TYPES.update({et: name for name, model in CONTRACTS.items() if (et := _default_event_type(model))})

FRONTEND_TOPICS = (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET)


def topic_for(event_type: object, default_topic: Optional[str] = None) -> Optional[str]:
    return EVENT_TYPES.get(event_type, default_topic) if isinstance(event_type, str) else default_topic
