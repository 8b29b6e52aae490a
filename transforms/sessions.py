"""Totals per whole session_id, in keyed state (transforms.keyed_totals), and the SQL that adds them up.

`SessionTotals` is the one session composite: a subclass names its aggregate (what a session's totals are)
and the labels of its stateful step; `SessionizeActivity` (session KPIs) and `SessionEngagement` (frontend
engagement) are the two. Rows come early every `early_firing_s`, final once the session has been inactive
for gap + allowed lateness, corrected by late items within the lateness; later items are dead letters.

A session that pauses longer than gap + lateness is released and starts a new generation in state; its rows
are that generation's totals. `generation_merge` writes them so that the stored row is the whole session:
a row that starts after the stored row's last activity, when that row is final, is a new generation and is
added to it; a newer row
of the same generation replaces that generation's part (`base_*` columns hold the generations before it);
an older row (a replay) changes nothing.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, Type

import apache_beam as beam

from transforms.keyed_totals import Aggregate, KeyedTotals

# A new generation exists only after the previous one was released, and its release wrote its final row:
# a row that starts after a stored row that is not final is the same generation seen in another order (a
# replay after a restore reads the session's topics in another interleaving: a tool call before an earlier
# turn), not a new one. Without `stored.is_final` the fault matrix (a TaskManager killed early) counted a
# session's first turn twice: the stored early row {turn} became a "generation" below the replayed one.
NEW_GENERATION = "(stored.is_final AND EXCLUDED.started_at > stored.ended_at)"


class SessionAggregate(Aggregate):
    """Keyed by the item's session_id; final once inactive for gap + allowed lateness."""

    def __init__(self, gap_s: int, allowed_lateness_s: int):
        self._close_after_ms = (gap_s + allowed_lateness_s) * 1000

    def key(self, item) -> str:
        return item.session_id

    def final_at_ms(self, key: str, totals) -> int:
        return self.last_ms(totals) + self._close_after_ms


class SessionTotals(beam.PTransform):
    """PCollection[item] -> {"rows": one row per session_id (the aggregate's), dead_letter: too-late items}.

    Subclasses set ITEM (the input's type), AGGREGATE (a SessionAggregate), TOTALS_LABEL (the stateful step's
    label: it names the Flink state, so it never changes) and STEP (the name dead letters and metrics carry)."""

    AGGREGATE: Type[SessionAggregate]
    ITEM: type  # the input's element type, checked when the graph is built
    TOTALS_LABEL: str
    STEP: str

    def __init__(self, gap_s: int = 1800, allowed_lateness_s: int = 3600, early_firing_s: float = 5.0,
                 clock: Callable[[], float] = time.time, label: Optional[str] = None):
        super().__init__(label)
        if gap_s <= 0 or allowed_lateness_s < 0 or early_firing_s <= 0:
            raise ValueError("gap_s and early_firing_s must be positive, allowed_lateness_s >= 0")
        self._gap, self._late, self._early, self._clock = gap_s, allowed_lateness_s, early_firing_s, clock
        self.with_input_types(self.ITEM)

    def expand(self, items):
        return items | self.TOTALS_LABEL >> KeyedTotals(self.AGGREGATE(self._gap, self._late), self._late,
                                                        self._early, step=self.STEP, clock=self._clock)


def generation_base(column: str) -> str:
    """The stored value of `column` before the incoming row's generation."""
    return f"CASE WHEN {NEW_GENERATION} THEN stored.{column} ELSE stored.base_{column} END"


def generation_merge(key: str, sums: Sequence[str], sets: Sequence[str], updated_at: str) -> str:
    """`ON CONFLICT (key) DO UPDATE ...` for rows that are one generation of a session each (module doc).

    sums: columns added up over generations (each with a base_ column); sets: the table's own assignments
    (may use generation_base); started_at/ended_at/generations/is_final/pane_version are common."""
    assignments = [*sets]
    for c in sums:
        assignments += [f"base_{c} = {generation_base(c)}", f"{c} = {generation_base(c)} + EXCLUDED.{c}"]
    assignments += [
        f"base_started_at = {generation_base('started_at')}",
        f"started_at = LEAST({generation_base('started_at')}, EXCLUDED.started_at)",
        "ended_at = EXCLUDED.ended_at",
        f"generations = stored.generations + CASE WHEN {NEW_GENERATION} THEN 1 ELSE 0 END",
        "is_final = EXCLUDED.is_final", "pane_version = EXCLUDED.pane_version", f"updated_at = {updated_at}",
    ]
    return (f" ON CONFLICT ({key}) DO UPDATE SET " + ", ".join(assignments)
            + f" WHERE {NEW_GENERATION} OR stored.pane_version <= EXCLUDED.pane_version")
