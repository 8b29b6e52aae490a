"""All five pipelines together on the local Flink cluster, on one mixed workload: sustained events/s until the
backlog is drained, with every pipeline's results checked exactly (`./run stack up` first):

    .venv/bin/python benchmarks/bench_mixed.py [--events 20000] [--parallelism 1] [--json benchmarks/results/mixed.json]

The workload is the fault matrix's cells (reliability/fault_matrix.py) without a fault, one per pipeline, each
with its own run id: turns and tool calls for kpi, billing and archive, the three frontend topics, Marketo lead
deltas; duplicates, out-of-order and malformed records mixed in as the cells make them. The cells' records are
produced first, interleaved per topic in event-time order (each cell's own order kept, so its out-of-order
records stay out of order), as a backlog; then the five jobs are submitted at once with the README's command
(`python -m beam_pipelines.<name> --runner=FlinkRunner ...`, each on its own consumer group committed at the
topics' end before producing) and read everything on their topics: kpi and billing read every cell's turns and
tool calls, the archive every record. A pipeline is drained when its cell's sinks are exact (the cell's
`check`: rows, totals, Redis state); the dead letters are checked once all are drained.

Figures: records produced (all topics) / seconds from the first submission to the last pipeline drained (the
job start-up included) and from the moment all five jobs ran; each pipeline's drain time; CPU-seconds per 1,000
records produced of the TaskManager JVM (with the Java harness), the Python SDK workers and the services (Kafka,
Postgres, Redis); peak RSS. Writes the table as JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_pipelines as bp  # noqa: E402  (the process sampling: TaskManager, SDK workers, services)

PIPELINES = ("kpi", "frontend", "billing", "archive", "leads")


def interleave(cells: Dict[str, Dict[str, list]]) -> Dict[str, List[Tuple[str, int]]]:
    """{topic: [(cell, index in that cell's list)]}: every cell's records of a topic merged by event time, each
    cell's own order kept (a k-way merge: a cell's out-of-order record stays where its cell put it)."""
    out: Dict[str, List[Tuple[str, int]]] = {}
    for topic in sorted({t for produced in cells.values() for t in produced}):
        streams = [[(r.timestamp_ms, name, i) for i, r in enumerate(produced[topic])]
                   for name, produced in sorted(cells.items()) if topic in produced]
        out[topic] = [(name, i) for _, name, i in heapq.merge(*streams, key=lambda x: x[0])]
    return out


def produce_interleaved(cells: Dict[str, object], bootstrap: str) -> float:
    """Produce every cell's records (interleave()), fill each cell's `positions`; returns the seconds it took."""
    from tests.e2e.flink_helpers import kafka_config
    from workloads.produce import produce

    t0 = time.monotonic()
    order = interleave({name: c.produced for name, c in cells.items()})
    for topic, seq in order.items():
        positions = produce([cells[name].produced[topic][i] for name, i in seq], topic, bootstrap,
                            kafka_config(bootstrap))
        for name in {n for n, _ in seq}:
            cells[name].positions[topic] = [None] * len(cells[name].produced[topic])
        for (name, i), pos in zip(seq, positions):
            cells[name].positions[topic][i] = pos
    return time.monotonic() - t0


ARCHIVE_STEPS = ("WriteHourlyParquet", "SplitByTopic")  # the archive's own dead-letter steps (parquet_archive)


def archive_dead_letters(cell, bootstrap: str, dlq_start) -> int:
    """Dead letters of the archive cell's records written by the archive itself."""
    from events.dead_letters import DeadLetter
    from events.topics import dlq_topic
    from tests.e2e.flink_helpers import read_from

    n = 0
    for topic in cell.produced:
        mine = set(cell.positions[topic])
        for v in read_from(dlq_topic(topic), bootstrap, dlq_start[topic]):
            dl = DeadLetter.from_json(v)
            n += (dl.source_topic == topic and (dl.source_partition, dl.source_offset) in mine
                  and dl.step.startswith(ARCHIVE_STEPS))
    return n


def run(pipelines: Sequence[str], events: int, parallelism: int, timeout_s: float) -> Dict[str, object]:
    from events import topics
    from reliability.fault_matrix import PIPELINES as CELLS, ArchiveCell, Pg
    from tests.e2e.flink_helpers import (cancel_by_name, commit_group_at_end, end_offsets, flink_get, kafka_config,
                                         readme_pipeline)

    bootstrap = kafka_config()["bootstrap.servers"]
    free = flink_get("/overview")["slots-available"]
    if free < parallelism * len(pipelines):
        raise SystemExit(f"{len(pipelines)} jobs x --parallelism {parallelism} need {parallelism * len(pipelines)} "
                         f"task slots; the cluster has {free} free (cancel running jobs, or DEVSTACK_FLINK_SLOTS)")
    tag = uuid.uuid4().hex[:6]
    # event times in the past, as in the fault matrix (the jobs read them as a backlog, from before they start)
    start_ms = int(time.time() * 1000) - int(events * 1.2 * 1000) - 3_600_000
    cells = {p: CELLS[p](f"mx{tag}{p[:2]}", events, start_ms, seed=3000 + i) for i, p in enumerate(pipelines)}
    launchers = {}
    for p, cell in cells.items():
        extra: Tuple[str, ...] = ()
        if isinstance(cell, ArchiveCell):
            cell.prefix = f"bench-mixed/{tag}/"
            extra = (f"--archive_prefix={cell.prefix}",)
        launchers[p] = readme_pipeline(p, tag, None, *type(cell).job_args, *extra, f"--parallelism={parallelism}",
                                       group=f"e2e-{p}-mixed-{tag}", job_name=f"bench-mixed-{p}-{tag}")
        commit_group_at_end(launchers[p].group, type(cell).topics, bootstrap)
    dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for c in cells.values() for t in c.produced}
    records = sum(c.records for c in cells.values())
    print(f"[mixed] producing {records} records of {len(cells)} cells (run {tag}) ...", flush=True)
    produce_s = produce_interleaved(cells, bootstrap)
    print(f"[mixed] produced in {produce_s:.1f} s; submitting {len(cells)} jobs (--parallelism={parallelism})",
          flush=True)

    sampler = bp.Sampler({"work": bp.beam_pids, "jvm": bp.jvm_pids, "python": bp.python_worker_pids,
                          "services": bp.service_pids}).start()
    pg = Pg()
    running_at: Dict[str, float] = {}
    errors: Dict[str, str] = {}
    drained_at: Dict[str, float] = {}
    t0 = time.monotonic()

    def submit(p: str) -> None:
        try:
            launchers[p].__enter__()
            running_at[p] = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported in the table
            errors[p] = f"{type(e).__name__}: {e}"[-1500:]

    threads = [threading.Thread(target=submit, args=(p,), daemon=True) for p in cells]
    try:
        for t in threads:
            t.start()
        deadline = t0 + timeout_s
        last_note = 0.0
        while len(drained_at) + len(errors) < len(cells) and time.monotonic() < deadline:
            for p, cell in cells.items():
                if p in drained_at or p in errors:
                    continue
                if cell.landed(pg) >= cell.target() and cell.check(pg, bootstrap, dlq_start, with_dlq=False).exact:
                    drained_at[p] = time.monotonic()
                    print(f"[mixed] {p} drained after {drained_at[p] - t0:.1f} s", flush=True)
            if time.monotonic() - last_note > 30:
                last_note = time.monotonic()
                print(f"[mixed] {time.monotonic() - t0:.0f} s: " + ", ".join(
                    f"{p} {cells[p].landed(pg)}/{cells[p].target()}" for p in cells if p not in drained_at),
                    flush=True)
            time.sleep(1.0)
        t_end = time.monotonic()
        for t in threads:
            t.join(1)
    finally:
        cpu = sampler.stop()
        results = {}
        for p, cell in cells.items():
            try:
                # the archive's check counts any dead letter of its records as wrong; here kpi and billing read
                # them too and dead-letter the malformed ones: only the archive's own steps count
                chk = cell.check(pg, bootstrap, dlq_start, with_dlq=not isinstance(cell, ArchiveCell))
                if isinstance(cell, ArchiveCell):
                    own = archive_dead_letters(cell, bootstrap, dlq_start)
                    chk.wrong += own
                    chk.details["archive dead letters"] = own
                results[p] = {"lost": chk.lost, "duplicated": chk.duplicated, "wrong": chk.wrong,
                              "dlq_missing": chk.dlq_missing, "details": chk.details}
            except Exception as e:  # noqa: BLE001
                results[p] = {"error": f"{type(e).__name__}: {e}"}
        for launcher in launchers.values():
            cancel_by_name(launcher.job_name)
        for cell in cells.values():
            if hasattr(cell, "cleanup"):
                cell.cleanup()

    all_running = max(running_at.values()) if len(running_at) == len(cells) else None
    done = len(drained_at) == len(cells)
    out: Dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"), "events_per_pipeline": events, "parallelism": parallelism,
        "records": records, "produce_s": round(produce_s, 1), "all_drained": done,
        "seconds_from_submit": round(t_end - t0, 1),
        "seconds_from_all_running": round(t_end - all_running, 1) if all_running else None,
        "records_per_s_from_submit": round(records / (t_end - t0)) if done else None,
        "records_per_s_from_all_running": round(records / (t_end - all_running)) if done and all_running else None,
        "cpu_s_per_1k_records_jvm": round(cpu["jvm"] / records * 1000, 3),
        "cpu_s_per_1k_records_python": round(cpu["python"] / records * 1000, 3),
        "service_cpu_s_per_1k_records": round(cpu["services"] / records * 1000, 3),
        "peak_rss_mib": round(sampler.peak["work"]),
        "pipelines": {p: {"records": cells[p].records, "read": sum(len(recs) for c in cells.values() for t, recs in c.produced.items()
                                      if t in type(cells[p]).topics),
                          "running_s": round(running_at[p] - t0, 1) if p in running_at else None,
                          "drained_s": round(drained_at[p] - t0, 1) if p in drained_at else None,
                          "error": errors.get(p), **results.get(p, {})} for p in cells},
    }
    return out


def print_table(out: Dict[str, object]) -> None:
    print()
    print(f"| pipeline (events={out['events_per_pipeline']} each, parallelism={out['parallelism']}) | records "
          f"(its cell) | records read | running after s | drained after s | lost | duplicated | wrong | DLQ missing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p, r in out["pipelines"].items():
        print(f"| {p} | {r['records']:,} | {r['read']:,} | {r['running_s']} | {r['drained_s']} | {r.get('lost')} | "
              f"{r.get('duplicated')} | {r.get('wrong')} | {r.get('dlq_missing')} |")
    print()
    print(f"| all five, {out['records']:,} records | |")
    print("|---|---|")
    print(f"| events/s, first submission -> all drained | {out['records_per_s_from_submit']} "
          f"({out['seconds_from_submit']} s) |")
    print(f"| events/s, all jobs running -> all drained | {out['records_per_s_from_all_running']} "
          f"({out['seconds_from_all_running']} s) |")
    print(f"| CPU-s per 1,000 records: JVM / Python / services | {out['cpu_s_per_1k_records_jvm']} / "
          f"{out['cpu_s_per_1k_records_python']} / {out['service_cpu_s_per_1k_records']} |")
    print(f"| peak RSS MiB (TaskManager + SDK workers) | {out['peak_rss_mib']} |")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipelines", default=",".join(PIPELINES), help="comma-separated: " + ",".join(PIPELINES))
    ap.add_argument("--events", type=int, default=20_000, help="valid events per pipeline's cell")
    ap.add_argument("--parallelism", type=int, default=1,
                    help="per job (five jobs share the TaskManager's slots: 8 on the local stack)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "mixed.json"))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=@tm:KEY=VALUE ...",
                    help="A/B: the whole run once per variant, back to back, each on a new TaskManager started with "
                         "these devstack settings (e.g. 'all=@tm:DEVSTACK_FLINK_METRICS_FILTER=off'; 'name=' for the "
                         "stack's own); the stack's settings are restored after")
    a = ap.parse_args(argv)
    pipelines = a.pipelines.split(",")
    bad = [p for p in pipelines if p not in PIPELINES]
    if bad:
        ap.error(f"unknown pipeline(s) {bad}")
    from beam_pipelines.options import _export_local_secrets
    from io_connectors.settings import environment
    import os

    _export_local_secrets()
    os.environ.update(environment())
    if not a.variant:
        runs = {"": run(pipelines, a.events, a.parallelism, a.timeout)}
    else:
        runs = {}
        try:
            for v in a.variant:
                label, _, tokens = v.partition("=")
                env = dict(t[len("@tm:"):].split("=", 1) for t in tokens.split())
                bp.restart_taskmanager(env)
                print(f"[mixed] variant {label}", flush=True)
                runs[label] = run(pipelines, a.events, a.parallelism, a.timeout)
        finally:
            bp.restart_taskmanager({})
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(runs[""] if list(runs) == [""] else {"variants": runs}, indent=2, default=str))
    for label, out in runs.items():
        if label:
            print(f"\n### variant {label}")
        print_table(out)
    print(f"\nwritten to {a.json}")
    ok = all(out["all_drained"] and all(not r.get("error") and r.get("lost") == 0 and r.get("duplicated") == 0
                                        and r.get("wrong") == 0 and r.get("dlq_missing") == 0
                                        for r in out["pipelines"].values()) for out in runs.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
