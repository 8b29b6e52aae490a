"""Per-session engagement over frontend events: distinct events, duration and the furthest funnel stage.

`SessionEngagement` keeps one engagement total per session_id in keyed state with timers
(transforms.keyed_totals) and emits `frontend_session_engagement` rows (ENGAGEMENT_COLUMNS, sql/006, sql/007):
early rows every `early_firing_s`, a final row once the session has been inactive for gap + allowed
lateness, corrections by late events within the lateness, dead letters for later ones. Duplicates
(replays, producer retries) are counted once (by event_id). ENGAGEMENT_MERGE adds the generations of a
session that paused longer than gap + lateness, so the row is the whole session_id.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple


from events.dead_letters import source_of
from transforms.keyed_totals import Slotted
from transforms.rows import frontend_event_id, utc
from transforms.sessions import SessionAggregate, SessionTotals, generation_base, generation_merge
from transforms.scoring import FUNNEL, Scored

ENGAGEMENT_COLUMNS = ("session_id", "user_id", "events", "duration_ms", "furthest_stage", "started_at", "ended_at",
                      "is_final", "pane_version", "updated_at")
ENGAGEMENT_KEYS = ("session_id",)
_STAGE_RANK = {stage: i for i, stage in enumerate(FUNNEL)}


class EngagementEvent(NamedTuple):
    """What engagement needs of one (redacted, enriched) frontend event."""

    event_id: str  # duplicates share it
    session_id: str
    user_id: Optional[str]
    ts_ms: int
    stage: Optional[str]  # a FUNNEL stage, or None (widget performance)
    source: Optional[Tuple[Optional[str], Optional[int], Optional[int]]] = None  # Kafka position


def engagement_event(scored: Scored) -> EngagementEvent:
    e = scored.event
    return EngagementEvent(frontend_event_id(e), e.session_id, e.user_id, e.timestamp,
                           scored.scores.get("conversion_stage"), source_of(e))


def _rank(stage: Optional[str]) -> int:
    return _STAGE_RANK.get(stage, -1) if stage else -1


def summarize(events: Iterable[EngagementEvent]) -> Dict[str, object]:
    """Engagement of a set of distinct events (pure; the expected values in tests use it too).

    events: count; started/ended: first/last event time (ms); duration_ms = last - first; furthest_stage:
    the latest FUNNEL stage reached (None when no event has one); user_id: the first non-null one in time.
    """
    ordered: List[EngagementEvent] = sorted(events, key=lambda e: (e.ts_ms, e.event_id))
    if not ordered:
        raise ValueError("summarize needs at least one event")
    best = max(ordered, key=lambda e: _rank(e.stage))
    first, last = ordered[0].ts_ms, ordered[-1].ts_ms
    return {"user_id": next((e.user_id for e in ordered if e.user_id), None), "events": len(ordered),
            "duration_ms": last - first, "furthest_stage": best.stage if _rank(best.stage) >= 0 else None,
            "first_ms": first, "last_ms": last}


class Engagement(Slotted):
    """Totals of a session's distinct events (lives in keyed state: small, no events kept)."""

    __slots__ = ("events", "first_ms", "last_ms", "best_rank", "user_id", "user_ms")

    def __init__(self):
        self.events = 0
        self.first_ms = self.last_ms = None
        self.best_rank = -1
        self.user_id: Optional[str] = None
        self.user_ms: Optional[int] = None

    def add(self, e: EngagementEvent) -> None:
        self.events += 1
        self.first_ms = e.ts_ms if self.first_ms is None else min(self.first_ms, e.ts_ms)
        self.last_ms = e.ts_ms if self.last_ms is None else max(self.last_ms, e.ts_ms)
        self.best_rank = max(self.best_rank, _rank(e.stage))
        if e.user_id and (self.user_ms is None or e.ts_ms < self.user_ms):
            self.user_id, self.user_ms = e.user_id, e.ts_ms


class SessionEngagementAggregate(SessionAggregate):
    def item_id(self, e: EngagementEvent) -> str:
        return e.event_id

    def ts_ms(self, e: EngagementEvent) -> int:
        return e.ts_ms

    def empty(self) -> Engagement:
        return Engagement()

    def add(self, totals: Engagement, e: EngagementEvent) -> None:
        totals.add(e)

    def last_ms(self, totals: Engagement) -> int:
        return totals.last_ms

    def row(self, session_id: str, g: Engagement, final: bool, version: int) -> Dict[str, Any]:
        return {
            "session_id": session_id, "user_id": g.user_id, "events": g.events,
            "duration_ms": g.last_ms - g.first_ms,
            "furthest_stage": FUNNEL[g.best_rank] if g.best_rank >= 0 else None,
            "started_at": utc(g.first_ms), "ended_at": utc(g.last_ms), "is_final": final,
            "pane_version": version, "updated_at": datetime.now(tz=timezone.utc),
        }


_STAGES = "ARRAY[" + ", ".join(f"'{s}'" for s in FUNNEL) + "]::text[]"
_BASE_STAGE = generation_base("furthest_stage")
# Rows are one generation of a session each (transforms.sessions).
ENGAGEMENT_MERGE = generation_merge(
    "session_id", ("events",),
    ["user_id = COALESCE(stored.user_id, EXCLUDED.user_id)",
     f"base_furthest_stage = {_BASE_STAGE}",
     f"furthest_stage = CASE WHEN coalesce(array_position({_STAGES}, ({_BASE_STAGE})::text), 0) "
     f"> coalesce(array_position({_STAGES}, EXCLUDED.furthest_stage::text), 0) "
     f"THEN {_BASE_STAGE} ELSE EXCLUDED.furthest_stage END",
     f"duration_ms = (extract(epoch FROM EXCLUDED.ended_at - LEAST({generation_base('started_at')}, "
     "EXCLUDED.started_at)) * 1000)::bigint"],
    updated_at="EXCLUDED.updated_at")


class SessionEngagement(SessionTotals):
    """PCollection[EngagementEvent] -> {"rows": engagement rows (ENGAGEMENT_COLUMNS), dead_letter: late}."""

    ITEM = EngagementEvent
    AGGREGATE = SessionEngagementAggregate
    TOTALS_LABEL = "EngagementTotals"
    STEP = "SessionEngagement"
