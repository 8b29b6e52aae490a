"""benchmarks/bench_mixed.py's interleaving: every cell's records of a topic merged by event time, each cell's own
order kept (its out-of-order records stay out of order), nothing lost or repeated, positions mapped back."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_mixed  # noqa: E402
from workloads.generator import ProducedRecord  # noqa: E402


def _recs(cell: str, times):
    return [ProducedRecord(f"{cell}{i}".encode(), b"{}", t, "valid") for i, t in enumerate(times)]


def test_cells_are_merged_by_event_time_and_keep_their_own_order():
    cells = {"a": {"t1": _recs("a", [10, 30, 20, 50]), "t2": _recs("a", [5])},
             "b": {"t1": _recs("b", [15, 25, 60])}}
    order = bench_mixed.interleave(cells)
    assert set(order) == {"t1", "t2"}
    assert order["t2"] == [("a", 0)]
    t1 = order["t1"]
    assert sorted(t1) == sorted([("a", i) for i in range(4)] + [("b", i) for i in range(3)])  # each record once
    for cell in ("a", "b"):
        mine = [i for c, i in t1 if c == cell]
        assert mine == sorted(mine)  # the cell's order, out-of-order record included
    times = [cells[c]["t1"][i].timestamp_ms for c, i in t1]
    assert times == [10, 15, 25, 30, 20, 50, 60]  # merged by event time around a's out-of-order 20
