"""The reduced fault matrix for CI (issue 15), through the same code as the full one
(`python -m reliability.fault_matrix`): the KPI pipeline started with the README's command, 20,000 events per
cell, the fault injected once half of the rows landed, then agent_turns, session_kpis, Redis hot state and
both topics' dead letters compared exactly with the hand-computed expected state.

Cells: TaskManager killed (-9, the stack's supervisor starts a new one), Kafka broker stopped 20 s, Postgres
stopped 20 s; and two pipelines with their own sink's fault: the archive with the S3 server down for 60 s
(every record in exactly one Parquet object, in its hour, byte for byte; 100,000 events, since it reads 20,000
before its launcher returns) and the leads with the TaskManager killed, then the worker pool killed near the end, on
the same job (every lead's newest delta, scored; the second fault on one job is the cell that hung the job until
the cluster restarted whole jobs on a failure: README, "fault matrix").
Asserted: 0 lost, 0 duplicated, 0 wrong, every malformed record in its DLQ, the fault while records were in
flight, and the rows resume by themselves after the TaskManager kill. The resume time is a figure (the issue's
target is < 30 s; the README's tables report it: 35-65 s on 2026-12-02, 16-25 s on 2026-12-04 with a job per
cell), not a timed assertion: timings belong in the benchmark-style script, not in a test that a loaded CI
machine would fail at random.
IHEARDAI_FAULT_MATRIX_EVENTS overrides the event count.
"""

from __future__ import annotations

import os

import pytest

from reliability.fault_matrix import run_matrix, table

pytestmark = pytest.mark.e2e

EVENTS = int(os.environ.get("IHEARDAI_FAULT_MATRIX_EVENTS", "20000"))
CELLS = ("tm_kill", "kafka", "postgres")
# The archive reads 20,000 events in the few seconds its launcher takes to return, so its cell has the full
# matrix's 100,000 (the fault must come while records are in flight)
OTHER_CELLS = (("archive", "s3"), ("leads", "tm_kill"), ("leads", "pool_kill"))
# (fault, point) per pipeline, every cell of a pipeline on one job for the leads (its matrix has no job per cell)
OTHER_POINTS = {"archive": [("s3", "middle")], "leads": [("tm_kill", "middle"), ("pool_kill", "late")]}
OTHER_EVENTS = {"archive": max(EVENTS, 100_000), "leads": EVENTS}


@pytest.fixture(scope="module")
def matrix(stack, local_pii_key):
    from devstack.config import REPO

    out = str(REPO / "reliability" / "results" / "fault_matrix-ci.json")
    results = run_matrix(["kpi"], list(CELLS), ["middle"], EVENTS, out)
    print("\n" + table(results))
    return {r.fault: r for r in results}


@pytest.fixture(scope="module")
def other_pipelines(stack, local_pii_key):
    from devstack.config import REPO

    results = []
    for pipeline, cells in OTHER_POINTS.items():
        out = str(REPO / "reliability" / "results" / f"fault_matrix-ci-{pipeline}.json")
        results += run_matrix([pipeline], [f for f, _ in cells], sorted({pt for _, pt in cells}),
                              OTHER_EVENTS[pipeline], out, only=cells)
    print("\n" + table(results))
    return {(r.pipeline, r.fault): r for r in results}


@pytest.mark.parametrize("fault", CELLS)
def test_kpi_fault_loses_and_duplicates_nothing(matrix, fault):
    r = matrix[fault]
    assert r.error is None, r.error
    assert (r.lost, r.duplicated, r.wrong, r.dlq_missing) == (0, 0, 0, 0), r.details
    assert r.landed_at_fault is not None and r.landed_at_fault < r.target, "the fault came after the data"


def test_kpi_resumes_by_itself_after_a_taskmanager_kill(matrix):
    r = matrix["tm_kill"]
    assert r.error is None, r.error
    assert r.resume_s is not None, f"no new row after the kill (stall {r.stall_s}s, restarts {r.restarts})"
    print(f"kpi x tm_kill: first new row {r.resume_s:.1f}s after the kill (target < 30 s), {r.restarts} restarts")
    # where the time went, from the JobManager's log (reliability/resume_phases.py)
    ph = r.details["phases"]
    print(f"kpi x tm_kill phases (s after the kill): {ph}")
    assert None not in (ph["detected"], ph["registered"], ph["tasks_running"]), ph
    assert ph["detected"] <= ph["tasks_running"] and ph["registered"] <= ph["tasks_running"] <= r.resume_s + 1, ph


@pytest.mark.parametrize("pipeline, fault", OTHER_CELLS)
def test_the_archive_and_the_leads_lose_and_duplicate_nothing(other_pipelines, pipeline, fault):
    r = other_pipelines[(pipeline, fault)]
    assert r.error is None, r.error
    assert (r.lost, r.duplicated, r.wrong, r.dlq_missing) == (0, 0, 0, 0), r.details
    assert r.landed_at_fault is not None and r.landed_at_fault < r.target, "the fault came after the data"
