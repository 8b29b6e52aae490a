"""Scored frontend events and leads -> `frontend_analytics` and `marketo_leads` rows (pure functions).

Column tuples match sql/002_frontend_analytics.sql and sql/005_marketo_leads.sql (+ sql/008); pass them with the key and
JSON column tuples to io_connectors.postgres.WriteToPostgres. Agent turn rows live in transforms.turns.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from events.contracts import EventModel, FrontendUserInteraction, MarketoLeadDelta
from transforms.field_crypto import is_encrypted
from transforms.scoring import Scored

FRONTEND_COLUMNS = (
    "event_id", "session_id", "user_id", "event_type", "page_url", "widget_id", "interaction_type",
    "page_category", "device_type", "browser", "user_segment", "engagement_score", "conversion_stage",
    "quality_score", "ts_ms", "timestamp", "metadata", "scorer_version", "transformation_metadata",
)
FRONTEND_KEYS = ("event_id",)
FRONTEND_JSON = ("metadata", "transformation_metadata")

LEAD_COLUMNS = (
    "lead_id", "email", "full_name", "phone", "company", "lead_source", "email_domain", "lead_quality_score",
    "engagement_level", "conversion_probability", "recommended_action", "geographic_info",
    "transformation_metadata", "scorer_version", "source_ts_ms", "created_at", "updated_at",
)
LEAD_KEYS = ("lead_id",)
LEAD_JSON = ("geographic_info", "transformation_metadata")
# Columns that may hold field_crypto tokens, with the event fields (of one topic) they come from: what
# `python -m transforms.field_crypto decrypt --jsonl --table <table>` accepts in each column.
ENCRYPTED_COLUMNS = {
    "marketo_leads": ("marketo.leads.delta", {"email": ("email",), "full_name": ("first_name", "last_name"),
                                              "phone": ("phone",)}),
}

_FRONTEND_ROW_FIELDS = frozenset(("event_id", "session_id", "user_id", "event_type", "page_url", "widget_id",
                                  "interaction_type", "timestamp", "schema_version"))


def utc(ms: Optional[int]) -> Optional[datetime]:
    """Epoch milliseconds -> an aware UTC datetime (None stays None)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def frontend_event_id(event: EventModel) -> str:
    """The producer's event_id, else a deterministic one (replays of the same payload get the same id):
    `fe_` + 32 hex of SHA-256 over event type, session, timestamp, element and page."""
    given = getattr(event, "event_id", None)
    if given:
        return given
    basis = json.dumps([event.event_type, event.session_id, event.timestamp, getattr(event, "element_id", None),
                        event.page_url], separators=(",", ":"))
    return "fe_" + hashlib.sha256(basis.encode()).hexdigest()[:32]


def frontend_to_row(scored: Scored) -> Dict[str, Any]:
    """One `frontend_analytics` row; fields without a column go to `metadata` (nulls left out)."""
    event, s = scored.event, scored.scores
    meta = {k: v for k, v in event.model_dump(exclude=_FRONTEND_ROW_FIELDS).items() if v not in (None, {}, [])}
    tmeta = event.transformation_metadata()
    tmeta["scorer_version"] = s["scorer_version"]
    return {
        "event_id": frontend_event_id(event),
        "session_id": event.session_id,
        "user_id": event.user_id,
        "event_type": event.event_type,
        "page_url": event.page_url,
        "widget_id": getattr(event, "widget_id", None),
        "interaction_type": event.interaction_type if isinstance(event, FrontendUserInteraction) else None,
        "page_category": s["page_category"],
        "device_type": s["device_type"],
        "browser": s["browser"],
        "user_segment": s["user_segment"],
        "engagement_score": s["engagement_score"],
        "conversion_stage": s["conversion_stage"],
        "quality_score": s["quality_score"],
        "ts_ms": event.timestamp,
        "timestamp": utc(event.timestamp),
        "metadata": meta,
        "scorer_version": s["scorer_version"],
        "transformation_metadata": tmeta,
    }


def _clip(text: str, n: int) -> str:
    """At most n characters of clear text; a value holding encryption tokens is never cut (a cut token cannot
    be decrypted; the column is TEXT since sql/008)."""
    return text if is_encrypted(text) else text[:n]


def lead_to_row(scored: Scored) -> Dict[str, Any]:
    """One `marketo_leads` row. A delta may carry only the changed fields; the leads pipeline decides how
    partial deltas merge (the email column is NOT NULL, so a missing email becomes '')."""
    lead: MarketoLeadDelta = scored.event
    s = scored.scores
    tmeta = lead.transformation_metadata()
    tmeta.update(scorer_version=s["scorer_version"], email_type=s["email_type"], marketo_guid=lead.marketo_guid)
    return {
        "lead_id": lead.lead_id,
        "email": lead.email or "",
        "full_name": (s["full_name"] or None) and _clip(s["full_name"], 200),
        "phone": lead.phone,
        # VARCHAR columns (sql/005): a longer clear value is cut rather than the whole lead refused (issue 15)
        "company": lead.company and _clip(lead.company, 255),
        "lead_source": lead.lead_source and _clip(lead.lead_source, 100),
        "email_domain": s["email_domain"] and _clip(s["email_domain"], 100),
        "lead_quality_score": s["lead_quality_score"],
        "engagement_level": s["engagement_level"],
        "conversion_probability": s["conversion_probability"],
        "recommended_action": s["recommended_action"],
        "geographic_info": s["geographic_info"],
        "transformation_metadata": tmeta,
        "scorer_version": s["scorer_version"],
        "source_ts_ms": lead.timestamp,
        "created_at": utc(lead.created_at_ms),
        "updated_at": utc(lead.updated_at_ms if lead.updated_at_ms is not None else lead.timestamp),
    }
