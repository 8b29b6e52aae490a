"""Event-time windowing: session KPIs per session_id and billing usage per account per hour.

Both use accumulating panes with early (processing-time) firings, an on-time pane at the watermark and
one late pane per late element within the allowed lateness, so downstream upserts see fresh values within
seconds and exact values after late data. Duplicates (replays, producer retries) are counted once: the
accumulators keep the ids they have seen. Every output carries a `version` that only grows as data is
added, so an idempotent sink keeps the newest pane even when an older one is replayed after it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Iterable, NamedTuple, Optional, Set, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

HOUR_S = 3600


class Activity(NamedTuple):
    """One countable thing that happened in a session or an account-hour."""

    kind: str  # "turn" | "tool"
    item_id: str  # "<session_id>/<turn_id>" or invocation_id: unique per item, duplicates share it
    session_id: str
    account_id: str
    user_id: Optional[str]
    channel: Optional[str]
    ts_ms: int
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0


def turn_activity(turn, cost_usd: float = 0.0) -> Activity:
    # turn ids are per session ("t0003" exists in many sessions): the session makes them unique per account
    return Activity("turn", f"{turn.session_id}/{turn.turn_id}", turn.session_id, turn.account_id or "unassigned", turn.user_id,
                    turn.channel, turn.timestamp, turn.tokens_in, turn.tokens_out, turn.latency_ms, cost_usd)


def tool_activity(tool) -> Activity:
    return Activity("tool", tool.invocation_id, tool.session_id, tool.account_id or "unassigned", tool.user_id,
                    None, tool.timestamp, latency_ms=tool.latency_ms)


def _utc(ms: Optional[int]) -> Optional[datetime]:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def accumulating_trigger(early_firing_s: float):
    # The portable runner API takes whole seconds here (a float fails to translate).
    return trigger.AfterWatermark(early=trigger.AfterProcessingTime(max(1, int(round(early_firing_s)))),
                                  late=trigger.AfterCount(1))


# --- usage accumulator shared by both windows -----------------------------------------------------------

class _Usage:
    __slots__ = ("seen", "turns", "tools", "tokens_in", "tokens_out", "latency_sum", "cost", "first_ms",
                 "last_ms", "user_id", "channel", "account_id")

    def __init__(self):
        self.seen: Set[Tuple[str, str]] = set()
        self.turns = self.tools = self.tokens_in = self.tokens_out = 0
        self.latency_sum = self.cost = 0.0
        self.first_ms: Optional[int] = None
        self.last_ms: Optional[int] = None
        self.user_id = self.channel = self.account_id = None

    def add(self, a: Activity) -> "_Usage":
        key = (a.kind, a.item_id)
        if key in self.seen:
            return self
        self.seen.add(key)
        if a.kind == "turn":
            self.turns += 1
            self.tokens_in += a.tokens_in
            self.tokens_out += a.tokens_out
            self.latency_sum += a.latency_ms
            self.cost += a.cost_usd
            self.channel = self.channel or a.channel
        else:
            self.tools += 1
        self.user_id = self.user_id or a.user_id
        self.account_id = self.account_id or a.account_id
        self.first_ms = a.ts_ms if self.first_ms is None else min(self.first_ms, a.ts_ms)
        self.last_ms = a.ts_ms if self.last_ms is None else max(self.last_ms, a.ts_ms)
        return self


class _UsageCombineFn(beam.CombineFn):
    """Exact, duplicate-free usage over a window. Merge re-adds nothing twice (ids are kept)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc: Dict[Tuple[str, str], Activity], a: Activity):
        acc.setdefault((a.kind, a.item_id), a)
        return acc

    def merge_accumulators(self, accs):
        out: Dict[Tuple[str, str], Activity] = {}
        for acc in accs:
            for k, v in acc.items():
                out.setdefault(k, v)
        return out

    def extract_output(self, acc) -> _Usage:
        u = _Usage()
        for a in sorted(acc.values(), key=lambda a: (a.ts_ms, a.kind, a.item_id)):
            u.add(a)
        return u


# --- session KPIs -----------------------------------------------------------------------------------------

SESSION_KPI_COLUMNS = ("session_id", "user_id", "account_id", "channel", "turns", "tokens_in", "tokens_out",
                       "avg_latency_ms", "tool_calls", "started_at", "ended_at", "is_final", "pane_version")


def session_version(last_ms: int, turns: int, tools: int) -> int:
    """Grows with later activity and with more items at the same last activity (bounded to 10^4 items)."""
    return last_ms * 10_000 + min(turns + tools, 9_999)


class _SessionRowFn(beam.DoFn):
    def __init__(self):
        self._panes = Metrics.counter(self.__class__, "session_panes")
        self._final = Metrics.counter(self.__class__, "session_final_panes")

    def process(self, kv, pane=beam.DoFn.PaneInfoParam):
        session_id, u = kv
        final = pane is not None and pane.timing in (beam.utils.windowed_value.PaneInfoTiming.ON_TIME,
                                                     beam.utils.windowed_value.PaneInfoTiming.LATE)
        self._panes.inc()
        if final:
            self._final.inc()
        yield {
            "session_id": session_id, "user_id": u.user_id, "account_id": u.account_id, "channel": u.channel,
            "turns": u.turns, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out,
            "avg_latency_ms": round(u.latency_sum / u.turns, 3) if u.turns else None, "tool_calls": u.tools,
            "started_at": _utc(u.first_ms), "ended_at": _utc(u.last_ms), "is_final": final,
            "pane_version": session_version(u.last_ms, u.turns, u.tools),
        }


class SessionizeActivity(beam.PTransform):
    """PCollection[Activity] (timestamped) -> session KPI rows (dicts with SESSION_KPI_COLUMNS) per pane."""

    def __init__(self, gap_s: int = 1800, allowed_lateness_s: int = 3600, early_firing_s: float = 5.0,
                 label: Optional[str] = None):
        super().__init__(label)
        if gap_s <= 0 or allowed_lateness_s < 0 or early_firing_s <= 0:
            raise ValueError("gap_s and early_firing_s must be positive, allowed_lateness_s >= 0")
        self._gap, self._late, self._early = gap_s, allowed_lateness_s, early_firing_s

    def expand(self, activity):
        return (activity
                | "KeyBySession" >> beam.Map(lambda a: (a.session_id, a))
                | "SessionWindows" >> beam.WindowInto(
                    window.Sessions(self._gap), trigger=accumulating_trigger(self._early),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=Duration(seconds=self._late))
                | "CombineSession" >> beam.CombinePerKey(_UsageCombineFn())
                | "ToSessionKpiRow" >> beam.ParDo(_SessionRowFn()))


# --- billing usage per account per hour ---------------------------------------------------------------------

BILLING_COLUMNS = ("account_id", "hour_start", "turns", "tokens_in", "tokens_out", "tool_invocations",
                   "estimated_cost_usd", "revision", "is_final")


class _BillingRowFn(beam.DoFn):
    def process(self, kv, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        account_id, u = kv
        final = pane is not None and pane.timing in (beam.utils.windowed_value.PaneInfoTiming.ON_TIME,
                                                     beam.utils.windowed_value.PaneInfoTiming.LATE)
        hour_start_ms = int(win.start.micros // 1000)
        yield {
            "account_id": account_id, "hour_start": _utc(hour_start_ms), "hour_start_ms": hour_start_ms,
            "turns": u.turns, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "tool_invocations": u.tools,
            "estimated_cost_usd": round(u.cost, 6),
            # Distinct items counted: grows only when real data is added, equal for a replayed pane.
            "revision": u.turns + u.tools, "is_final": final,
        }


class HourlyUsagePerAccount(beam.PTransform):
    """PCollection[Activity] -> billing rows per (account_id, event-time hour) per pane, exact after late data."""

    def __init__(self, allowed_lateness_s: int = 6 * HOUR_S, early_firing_s: float = 10.0,
                 label: Optional[str] = None):
        super().__init__(label)
        if allowed_lateness_s < 0 or early_firing_s <= 0:
            raise ValueError("early_firing_s must be positive, allowed_lateness_s >= 0")
        self._late, self._early = allowed_lateness_s, early_firing_s

    def expand(self, activity):
        return (activity
                | "KeyByAccount" >> beam.Map(lambda a: (a.account_id, a))
                | "HourlyWindows" >> beam.WindowInto(
                    window.FixedWindows(HOUR_S), trigger=accumulating_trigger(self._early),
                    accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                    allowed_lateness=Duration(seconds=self._late))
                | "CombineHour" >> beam.CombinePerKey(_UsageCombineFn())
                | "ToBillingRow" >> beam.ParDo(_BillingRowFn()))
