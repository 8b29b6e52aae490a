"""Session KPIs per session_id and billing usage per account per event-time hour.

Both are totals in keyed state with timers (transforms.keyed_totals), not Beam windows: a session's row
counts the whole session_id however long it pauses, and the state of a key holds only its totals plus the
ids of the last allowed-lateness of its items. Rows come early (every `early_firing_s` while items arrive),
final (sessions: inactive for gap + lateness; hours: the watermark passed the hour), and corrected by late
items within the allowed lateness; later items are dead letters (`late_data`). Duplicates (replays, producer
retries) are counted once. Every row carries a version that only grows with data, so an idempotent sink
keeps the newest row even when an older one is replayed after it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import apache_beam as beam

from events.dead_letters import source_of
from transforms.keyed_totals import Aggregate, KeyedTotals, Slotted
from transforms.rows import utc
from transforms.sessions import SessionAggregate, SessionTotals, generation_base, generation_merge

HOUR_S = 3600

Source = Tuple[Optional[str], Optional[int], Optional[int]]  # (topic, partition, offset) of the Kafka record


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
    source: Optional[Source] = None  # where it came from, for its dead letter if it arrives too late


def turn_activity(turn, cost_usd: float = 0.0) -> Activity:
    # turn ids are per session ("t0003" exists in many sessions): the session makes them unique per account
    return Activity("turn", f"{turn.session_id}/{turn.turn_id}", turn.session_id, turn.account_id or "unassigned",
                    turn.user_id, turn.channel, turn.timestamp, turn.tokens_in, turn.tokens_out, turn.latency_ms,
                    cost_usd, source_of(turn))


def scored_turn_activity(scored) -> Activity:
    """A Scored turn -> its Activity, with the estimated cost from scoring."""
    return turn_activity(scored.event, scored.scores.get("estimated_cost_usd") or 0)


def tool_activity(tool) -> Activity:
    return Activity("tool", tool.invocation_id, tool.session_id, tool.account_id or "unassigned", tool.user_id,
                    None, tool.timestamp, latency_ms=tool.latency_ms, source=source_of(tool))


# --- usage totals shared by sessions and account-hours ----------------------------------------------------

class Usage(Slotted):
    """Totals of distinct activity (mutable; lives in keyed state, so kept small: no items, no ids)."""

    __slots__ = ("turns", "tools", "tokens_in", "tokens_out", "latency_sum", "cost", "first_ms", "last_ms",
                 "user_id", "channel", "account_id")

    def __init__(self):
        self.turns = self.tools = self.tokens_in = self.tokens_out = 0
        self.latency_sum = self.cost = 0.0
        self.first_ms: Optional[int] = None
        self.last_ms: Optional[int] = None
        self.user_id = self.channel = self.account_id = None

    def add(self, a: Activity) -> "Usage":
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


class _UsageAggregate(Aggregate):
    def item_id(self, a: Activity) -> str:
        return f"{a.kind}/{a.item_id}"

    def ts_ms(self, a: Activity) -> int:
        return a.ts_ms

    def empty(self) -> Usage:
        return Usage()

    def add(self, totals: Usage, a: Activity) -> None:
        totals.add(a)

    def last_ms(self, totals: Usage) -> int:
        return totals.last_ms


# --- session KPIs -----------------------------------------------------------------------------------------

SESSION_KPI_COLUMNS = ("session_id", "user_id", "account_id", "channel", "turns", "tokens_in", "tokens_out",
                       "latency_sum_ms", "avg_latency_ms", "tool_calls", "started_at", "ended_at", "is_final",
                       "pane_version")

# Rows are the totals of one generation of a session (transforms.sessions).
SESSION_KPI_MERGE = generation_merge(
    "session_id", ("turns", "tool_calls", "tokens_in", "tokens_out", "latency_sum_ms"),
    ["user_id = COALESCE(stored.user_id, EXCLUDED.user_id)",
     "account_id = COALESCE(stored.account_id, EXCLUDED.account_id)",
     "channel = COALESCE(stored.channel, EXCLUDED.channel)",
     f"avg_latency_ms = round((({generation_base('latency_sum_ms')} + EXCLUDED.latency_sum_ms) "
     f"/ NULLIF({generation_base('turns')} + EXCLUDED.turns, 0))::numeric, 3)"],
    updated_at="now()")


class SessionUsage(SessionAggregate, _UsageAggregate):
    """Usage per session_id; final once inactive for gap + allowed lateness (then the state is released)."""

    def row(self, session_id: str, u: Usage, final: bool, version: int) -> Dict[str, Any]:
        return {
            "session_id": session_id, "user_id": u.user_id, "account_id": u.account_id, "channel": u.channel,
            "turns": u.turns, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out,
            "latency_sum_ms": round(u.latency_sum, 3),
            "avg_latency_ms": round(u.latency_sum / u.turns, 3) if u.turns else None, "tool_calls": u.tools,
            "started_at": utc(u.first_ms), "ended_at": utc(u.last_ms), "is_final": final,
            "pane_version": version,
        }


class SessionizeActivity(SessionTotals):
    """PCollection[Activity] -> {"rows": session KPI rows (SESSION_KPI_COLUMNS), dead_letter: late activity}.

    One row per session_id over its whole life (transforms.sessions): early rows every `early_firing_s`, a
    final row once the session has been inactive for `gap_s` + `allowed_lateness_s`. Write the rows with
    SESSION_KPI_MERGE, which adds up the generations of a session that paused longer.
    """

    ITEM = Activity
    AGGREGATE = SessionUsage
    TOTALS_LABEL = "SessionTotals"
    STEP = "SessionKpis"


# --- billing usage per account per hour ---------------------------------------------------------------------

BILLING_COLUMNS = ("account_id", "hour_start", "turns", "tokens_in", "tokens_out", "tool_invocations",
                   "estimated_cost_usd", "revision", "is_final")


def hour_key(account_id: str, hour_start_ms: int) -> str:
    return f"{hour_start_ms}|{account_id}"


class HourlyUsage(_UsageAggregate):
    """Usage per (account, event-time hour): final at the end of the hour, released after the lateness."""

    def __init__(self, allowed_lateness_s: int):
        self._late_ms = allowed_lateness_s * 1000

    def key(self, a: Activity) -> str:
        return hour_key(a.account_id, a.ts_ms - a.ts_ms % (HOUR_S * 1000))

    def final_at_ms(self, key: str, u: Usage) -> int:
        return int(key.split("|", 1)[0]) + HOUR_S * 1000

    def release_at_ms(self, key: str, u: Usage) -> int:
        return self.final_at_ms(key, u) + self._late_ms

    def row(self, key: str, u: Usage, final: bool, version: int) -> Dict[str, Any]:
        hour_ms, account_id = key.split("|", 1)
        hour_start_ms = int(hour_ms)
        return {
            "account_id": account_id, "hour_start": utc(hour_start_ms), "hour_start_ms": hour_start_ms,
            "turns": u.turns, "tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "tool_invocations": u.tools,
            "estimated_cost_usd": round(u.cost, 6),
            # Distinct items counted: grows only when real data is added, equal for a replayed row.
            "revision": u.turns + u.tools, "is_final": final,
        }


@beam.typehints.with_input_types(Activity)
class HourlyUsagePerAccount(beam.PTransform):
    """PCollection[Activity] -> {"rows": billing rows per (account_id, event-time hour), dead_letter: late}.

    Early rows every `early_firing_s`, a final row when the watermark passes the end of the hour, corrections
    for items up to `allowed_lateness_s` behind the watermark; state per account-hour is released then.
    """

    def __init__(self, allowed_lateness_s: int = 6 * HOUR_S, early_firing_s: float = 10.0,
                 clock: Callable[[], float] = time.time, label: Optional[str] = None):
        super().__init__(label)
        if allowed_lateness_s < 0 or early_firing_s <= 0:
            raise ValueError("early_firing_s must be positive, allowed_lateness_s >= 0")
        self._late, self._early, self._clock = allowed_lateness_s, early_firing_s, clock

    def expand(self, activity):
        return activity | "HourTotals" >> KeyedTotals(HourlyUsage(self._late), self._late, self._early,
                                                      step="BillingUsage", clock=self._clock)
