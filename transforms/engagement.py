"""Per-session engagement over frontend events: distinct events, duration and the furthest funnel stage.

`SessionEngagement` windows `EngagementEvent`s into session windows per session_id (accumulating panes,
early processing-time firings, one late pane per late element within the allowed lateness) and emits one
`frontend_session_engagement` row (ENGAGEMENT_COLUMNS, sql/006) per pane. Duplicates (replays, producer
retries) are counted once: the accumulator is keyed by event_id. `engagement_version` only grows as data is
added, so the upsert keeps the newest pane even when an older one is replayed after it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Dict, Iterable, List, NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.rows import frontend_event_id
from transforms.scoring import FUNNEL, Scored
from transforms.windows import accumulating_trigger

ENGAGEMENT_COLUMNS = ("session_id", "user_id", "events", "duration_ms", "furthest_stage", "started_at", "ended_at",
                      "is_final", "pane_version", "updated_at")
ENGAGEMENT_KEYS = ("session_id",)
_STAGE_RANK = {stage: i for i, stage in enumerate(FUNNEL)}
_MAX_COUNTED = 9_999  # events folded into the version; more still count in `events`


class EngagementEvent(NamedTuple):
    """What engagement needs of one (redacted, enriched) frontend event."""

    event_id: str  # duplicates share it
    session_id: str
    user_id: Optional[str]
    ts_ms: int
    stage: Optional[str]  # a FUNNEL stage, or None (widget performance)


def engagement_event(scored: Scored) -> EngagementEvent:
    e = scored.event
    return EngagementEvent(frontend_event_id(e), e.session_id, e.user_id, e.timestamp,
                           scored.scores.get("conversion_stage"))


def _rank(stage: Optional[str]) -> int:
    return _STAGE_RANK.get(stage, -1) if stage else -1


def _preferred(a: EngagementEvent, b: EngagementEvent) -> EngagementEvent:
    """The copy of an event_id to keep: the same one whatever the arrival or merge order."""
    return max(a, b, key=lambda e: (e.ts_ms, _rank(e.stage), e.user_id or ""))


def engagement_version(last_ms: int, events: int) -> int:
    """Grows with later activity and with more distinct events at the same last activity."""
    return last_ms * 10_000 + min(events, _MAX_COUNTED)


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


class _EngagementCombineFn(beam.CombineFn):
    """{event_id: EngagementEvent}: exact and duplicate-free whatever the merge order."""

    def create_accumulator(self) -> Dict[str, EngagementEvent]:
        return {}

    def add_input(self, acc: Dict[str, EngagementEvent], e: EngagementEvent):
        seen = acc.get(e.event_id)
        acc[e.event_id] = e if seen is None else _preferred(seen, e)
        return acc

    def merge_accumulators(self, accs):
        out: Dict[str, EngagementEvent] = {}
        for acc in accs:
            for e in acc.values():
                self.add_input(out, e)
        return out

    def extract_output(self, acc) -> Dict[str, object]:
        return summarize(acc.values())


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class _EngagementRowFn(beam.DoFn):
    def __init__(self):
        self._panes = Metrics.counter(self.__class__, "engagement_panes")
        self._final = Metrics.counter(self.__class__, "engagement_final_panes")
        self._events = Metrics.distribution(self.__class__, "engagement_events_per_session")

    def process(self, kv, pane=beam.DoFn.PaneInfoParam):
        session_id, s = kv
        final = pane is not None and pane.timing in (PaneInfoTiming.ON_TIME, PaneInfoTiming.LATE)
        self._panes.inc()
        if final:
            self._final.inc()
            self._events.update(s["events"])
        yield {
            "session_id": session_id, "user_id": s["user_id"], "events": s["events"],
            "duration_ms": s["duration_ms"], "furthest_stage": s["furthest_stage"],
            "started_at": _utc(s["first_ms"]), "ended_at": _utc(s["last_ms"]), "is_final": final,
            "pane_version": engagement_version(s["last_ms"], s["events"]),
            "updated_at": datetime.now(tz=timezone.utc),
        }


class SessionEngagement(beam.PTransform):
    """PCollection[EngagementEvent] (timestamped) -> engagement rows (dicts, ENGAGEMENT_COLUMNS) per pane."""

    def __init__(self, gap_s: int = 1800, allowed_lateness_s: int = 3600, early_firing_s: float = 5.0,
                 label: Optional[str] = None):
        super().__init__(label)
        if gap_s <= 0 or allowed_lateness_s < 0 or early_firing_s <= 0:
            raise ValueError("gap_s and early_firing_s must be positive, allowed_lateness_s >= 0")
        self._gap, self._late, self._early = gap_s, allowed_lateness_s, early_firing_s

    def expand(self, events):
        return (events
                | "KeyBySessionId" >> beam.Map(lambda e: (e.session_id, e))
                | "EngagementSessionWindows" >> beam.WindowInto(
                    window.Sessions(self._gap), trigger=accumulating_trigger(self._early),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=Duration(seconds=self._late))
                | "CombineEngagement" >> beam.CombinePerKey(_EngagementCombineFn())
                | "ToEngagementRow" >> beam.ParDo(_EngagementRowFn()))
