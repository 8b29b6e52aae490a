"""Upgrades (issue 15): a running KPI pipeline stopped with a savepoint through Flink's REST API
(`POST /jobs/<id>/stop`, as `flink-deploy/flinkctl.py stop` does), records produced while it is stopped, the
next version submitted with the README's command and `--savepoint_path`; then agent_turns, session_kpis,
Redis hot state and the dead letters are exact: nothing lost, nothing counted twice across the upgrade
(the checks of the fault matrix, reliability/fault_matrix.py)."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Tuple

import pytest

from events import topics
from reliability.fault_matrix import ArchiveCell, KpiCell, Pg
from tests.e2e.flink_helpers import (beam_counters, commit_group_at_end, end_offsets, flink_get, flink_url,
                                     jobs_by_name, kafka_config, poll, produce_with_offsets, readme_pipeline)

pytestmark = pytest.mark.e2e
HOUR_MS = 3_600_000


def _stop_with_savepoint(job_name: str, timeout_s: float = 120) -> Tuple[str, str]:
    jid = next(j["jid"] for j in jobs_by_name(job_name) if j["state"] == "RUNNING")
    req = urllib.request.Request(f"{flink_url()}/jobs/{jid}/stop", data=json.dumps({"drain": False}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    trigger = json.loads(urllib.request.urlopen(req, timeout=10).read())["request-id"]

    def done():
        with urllib.request.urlopen(f"{flink_url()}/jobs/{jid}/savepoints/{trigger}", timeout=5) as r:
            st = json.loads(r.read())
        if st.get("status", {}).get("id") != "COMPLETED":
            return None
        op = st.get("operation", {})
        assert not op.get("failure-cause"), op["failure-cause"].get("stack-trace", "")[:2000]
        return op["location"]

    location = poll(done, timeout_s, f"the savepoint of {job_name}", 1)
    poll(lambda: all(j["state"] == "FINISHED" for j in jobs_by_name(job_name)), 60, f"{job_name} to stop", 1)
    return location, jid


def _wait_idle(job_name: str, quiet_s: int = 5) -> None:
    """Until no vertex of the job has received a record for `quiet_s`, then `quiet_s` more (the last early
    firing and bundle are over)."""
    jid = next(j["jid"] for j in jobs_by_name(job_name) if j["state"] == "RUNNING")
    vids = [v["id"] for v in flink_get(f"/jobs/{jid}")["vertices"]]
    seen = []

    def quiet():
        total = 0
        for vid in vids:
            m = flink_get(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get=numRecordsIn")
            total += int(m[0]["sum"]) if m else 0
        seen.append(total)
        return len(seen) > quiet_s and seen[-1] == seen[-1 - quiet_s]
    poll(quiet, 180, f"{job_name} to receive no record for {quiet_s} s", 1)
    time.sleep(quiet_s)


def test_kpi_upgrade_through_a_savepoint_loses_and_double_counts_nothing(stack, local_pii_key):
    run_id = f"up{uuid.uuid4().hex[:8]}"
    bootstrap = kafka_config()["bootstrap.servers"]
    cell = KpiCell(run_id, 6000, int(time.time() * 1000) - 3 * HOUR_MS, seed=77)
    group, job_name = f"e2e-kpi-upgrade-{run_id}", f"e2e-kpi-upgrade-{run_id}"
    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in cell.produced}
    commit_group_at_end(group, cell.topics, bootstrap)
    # The records before a cut in event time are produced before the upgrade, the rest while no job runs. A cut
    # by event time, not by count: the generator's tool calls span ~15 min of event time and the turns ~80 min,
    # so the first half of each by count ended ~7 min (tools) and ~40 min (turns) in; the first job's watermark
    # followed the turns there (caught-up partitions move to processing time), and the second half of the tool
    # calls was then up to 30 min behind it: late data by the pipeline's rule, dead letters (CI, 2026-12-03:
    # 384 `late_data` tool calls, 156 sessions short of tool calls). The cut is the tool calls' median time, so
    # both topics have records on both sides, and nothing produced after the stop is behind the watermark.
    cut_ms = sorted(r.timestamp_ms for r in cell.produced[topics.TOOLS])[len(cell.produced[topics.TOOLS]) // 2]
    halves = {t: ([r for r in recs if r.timestamp_ms < cut_ms], [r for r in recs if r.timestamp_ms >= cut_ms])
              for t, recs in cell.produced.items()}
    for t, (first, second) in halves.items():
        assert first and second, t
        cell.produced[t] = first + second  # the order produced: positions[t][i] is produced[t][i]'s
    # The events are 1.7-3 h old, and the first job's reader catches up long before its sinks have landed half:
    # a caught-up partition then moves to processing time, close timers fire at "now", and the second half
    # (older than now - lateness) was late data (in-suite CI, 2026-12-07: 273 turns and 341 tool calls
    # dead-lettered, 181 sessions short; alone it passed). A lateness beyond the events' age takes that rule,
    # which this test is not about, out of the upgrade's check (the checks need totals, not final rows).
    args = ("--session_gap_seconds=600", "--allowed_lateness_seconds=14400", "--early_firing_seconds=2",
            "--health_period_seconds=10")
    pg = Pg()
    with readme_pipeline("kpi", run_id, None, *args, group=group, job_name=job_name):
        for t, (first, _) in halves.items():
            cell.positions[t] = produce_with_offsets(first, t, bootstrap)
        poll(lambda: cell.landed(pg) >= len(halves[topics.TURNS][0]) * 0.5, 120, "half of the first half", 0.5)
        # Stop once the session step is idle: it then fires every timer on the stop's end-of-time watermark
        # before the savepoint's barrier (below); a step inside a bundle (an early firing every 2 s while items
        # arrive) holds them back, which made this test catch the bug only sometimes (2026-12-07, stopped idle
        # without the fix: 8 sessions final in the savepoint, both times).
        _wait_idle(job_name)
        savepoint, first_jid = _stop_with_savepoint(job_name)
    at_stop = cell.landed(pg)
    # Beam's Flink source wrapper ends a stopped Kafka read with the end-of-time watermark, ahead of the savepoint's
    # barrier: every session timer fires. No session here has been inactive for gap + lateness, so none may be
    # final or released by the stop (2026-12-07, before transforms/keyed_totals.py deferred such firings: 9 sessions
    # final and released in the savepoint, the others marked with a watermark an hour past the clock; after the
    # upgrade 641 valid items were `late_data` and 180 of 200 sessions short).
    stopped = beam_counters(first_jid)
    assert not stopped.get("SessionKpis_final_rows") and not stopped.get("SessionKpis_keys_released"), stopped
    for t, (_, second) in halves.items():
        cell.positions[t] += produce_with_offsets(second, t, bootstrap)
    with readme_pipeline("kpi", run_id, None, *args, f"--savepoint_path={savepoint}", group=group,
                         job_name=job_name) as job:
        poll(lambda: cell.landed(pg) >= cell.target(), 240, f"{cell.target()} turns in agent_turns", 1)
        last = {}

        def exact():
            last["check"] = cell.check(pg, bootstrap, dlq_start, True)
            return last["check"] if last["check"].exact else None
        try:
            checked = poll(exact, 120, "the sinks to match the expected state exactly", 5)
        except AssertionError as e:
            raise AssertionError(f"{e}; at the deadline: {last.get('check')}") from None
        job.assert_running()
    print(f"upgrade: savepoint {savepoint}, {at_stop} of {cell.target()} turns before it, end-of-time firings "
          f"deferred at the stop: {stopped.get('SessionKpis_end_of_time_firings_deferred', 0)}, {checked.details}")


def test_archive_upgrade_through_a_savepoint_loses_and_duplicates_nothing(stack):
    """The archive across the same upgrade: its hourly windows are Beam's (the runner's GroupByKey), not our keyed
    state. Records of the same event-time hours before and after the stop; afterwards every produced record is in
    exactly one Parquet object of its topic and hour (the fault matrix's ArchiveCell check)."""
    run_id = f"ua{uuid.uuid4().hex[:8]}"
    bootstrap = kafka_config()["bootstrap.servers"]
    cell = ArchiveCell(run_id, 3000, int(time.time() * 1000) - 3 * HOUR_MS, seed=78)
    cell.prefix = f"e2e-upgrade/{run_id}/"
    group, job_name = f"e2e-archive-upgrade-{run_id}", f"e2e-archive-upgrade-{run_id}"
    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in cell.produced}
    commit_group_at_end(group, ArchiveCell.topics, bootstrap)
    # cut at the median event time of everything: both halves have records in the hour around it
    stamps = sorted(r.timestamp_ms for recs in cell.produced.values() for r in recs)
    cut_ms = stamps[len(stamps) // 2]
    halves = {t: ([r for r in recs if r.timestamp_ms < cut_ms], [r for r in recs if r.timestamp_ms >= cut_ms])
              for t, recs in cell.produced.items()}
    for t, (first, second) in halves.items():
        cell.produced[t] = first + second
    args = (*ArchiveCell.job_args, f"--archive_prefix={cell.prefix}")
    try:
        with readme_pipeline("archive", run_id, None, *args, group=group, job_name=job_name):
            for t, (first, _) in halves.items():
                cell.positions[t] = produce_with_offsets(first, t, bootstrap)
            first = {(t, *pos) for t, ps in cell.positions.items() for pos in ps}

            def archived() -> int:
                return len({(t, p, o) for rows in cell._rows().values() for t, p, o, _ in rows} & first)
            poll(lambda: archived() >= len(first), 180, f"the first {len(first)} records archived", 2)
            _wait_idle(job_name)
            savepoint, _ = _stop_with_savepoint(job_name)
        at_stop = archived()
        for t, (_, second) in halves.items():
            cell.positions[t] += produce_with_offsets(second, t, bootstrap)
        with readme_pipeline("archive", run_id, None, *args, f"--savepoint_path={savepoint}", group=group,
                             job_name=job_name) as job:
            last = {}

            def exact():
                last["check"] = cell.check(None, bootstrap, dlq_start, True)
                return last["check"] if last["check"].exact else None
            try:
                checked = poll(exact, 240, "every record in exactly one object", 5)
            except AssertionError as e:
                raise AssertionError(f"{e}; at the deadline: {last.get('check')}") from None
            job.assert_running()
        print(f"archive upgrade: savepoint {savepoint}, {at_stop} of {cell.target()} records before it, "
              f"{checked.details}, objects {sorted(k[len(cell.prefix):] for k in cell._rows())}")
    finally:
        cell.cleanup()

