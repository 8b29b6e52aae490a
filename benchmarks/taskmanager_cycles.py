"""Does the TaskManager stay healthy across job cancels and resubmits? (issue 15)

    .venv/bin/python benchmarks/taskmanager_cycles.py --cycles 20 [--turns 400] [--json out.json] [-- pipeline flags]

On the local stack, `--cycles` times: start the KPI pipeline with the README's command (from the topic end), produce
`--turns` turns, wait until every row, session total and Redis counter landed, cancel the job and wait until it and
its Java harness processes are gone. After each cancel (no job running) it reads the TaskManager JVM's thread
count (/proc), metaspace and direct memory in use (Flink's REST metrics), and counts the processes the TaskManager
still has and every Java harness JVM left on the machine (an orphan has another parent). Prints one row per cycle and the verdict: the last cycle's threads and metaspace within 10% of the
first cycle's, every cycle's job read and wrote everything, no harness left behind.

Runs one job at a time on the stack's TaskManager: do not run it while the test suite uses the stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pipelines as bp  # noqa: E402  (puts the repository on sys.path)

from devstack.config import PORTS  # noqa: E402
from io_connectors.settings import KafkaSettings  # noqa: E402

FLINK = f"http://localhost:{PORTS['flink']}"


def _get(path: str):
    import requests

    return requests.get(FLINK + path, timeout=10).json()


def taskmanager_jvm() -> int:
    for pid in bp.jvm_pids():
        try:
            if b"TaskManagerRunner" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise SystemExit("no TaskManager JVM found (is the local stack up?)")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no Threads line")


def children(pid: int) -> List[int]:
    return [p for p in bp.descendants(pid) if p != pid]


def java_harnesses() -> List[int]:
    """Every live Java SDK harness JVM on the machine, whoever its parent (an orphan is not the TaskManager's)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if b"org.apache.beam.fn.harness.FnHarness" in (d / "cmdline").read_bytes() and \
                    (d / "stat").read_text().split(") ", 1)[1][0] != "Z":
                found.append(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def tm_metrics() -> Dict[str, float]:
    tms = _get("/taskmanagers")["taskmanagers"]
    if len(tms) != 1:
        raise SystemExit(f"expected one TaskManager, found {len(tms)}")
    names = ("Status.JVM.Memory.Metaspace.Used", "Status.JVM.Memory.Direct.MemoryUsed",
             "Status.JVM.Memory.Heap.Used", "Status.JVM.ClassLoader.ClassesLoaded")
    got = {m["id"]: float(m["value"]) for m in _get(f"/taskmanagers/{tms[0]['id']}/metrics?get={','.join(names)}")}
    return {"tm_id": tms[0]["id"], "metaspace_mib": got[names[0]] / 2**20, "direct_mib": got[names[1]] / 2**20,
            "heap_mib": got[names[2]] / 2**20, "classes_loaded": got[names[3]]}


def job_gone(job_name: str) -> bool:
    return not any(j["name"] == job_name and j["state"] not in ("CANCELED", "FAILED", "FINISHED")
                   for j in _get("/jobs/overview")["jobs"])


def cycle(i: int, args, bootstrap: str, tm_pid: int) -> Dict[str, object]:
    sc = bp.SCENARIOS["kpi"]
    run_id = f"tmc{i:02d}{uuid.uuid4().hex[:6]}"
    t0 = time.time()
    job = bp.start_job("kpi", run_id, args.parallelism, args.pipeline_args)
    started = time.time() - t0
    harnesses_running = len(children(tm_pid))
    try:
        records, n_rows, per_session = sc.make(run_id, args.turns, int(time.time() * 1000) - 60_000)
        bp.produce(records, bootstrap)
        bp.wait_landed(sc, run_id, n_rows, per_session, args.timeout)
    finally:
        bp.cancel_job(job)
    deadline = time.time() + 60
    while time.time() < deadline and not (job_gone(job) and not children(tm_pid) and not java_harnesses()):
        time.sleep(0.5)
    left = set(children(tm_pid)) | set(java_harnesses())
    time.sleep(args.settle)
    return {"cycle": i, "start_s": round(started, 1), "cycle_s": round(time.time() - t0, 1), "rows": n_rows,
            "landed": True, "harness_processes_while_running": harnesses_running,
            "processes_left_after_cancel": len(left), "threads": threads(tm_pid),
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in tm_metrics().items()}}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--turns", type=int, default=400, help="turns produced per cycle (default 400)")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--timeout", type=float, default=180, help="seconds for a cycle's rows to land")
    p.add_argument("--settle", type=float, default=5, help="seconds after a cancel before measuring")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.pipeline_args = extra
    bootstrap = KafkaSettings.from_env().bootstrap_servers
    tm_pid = taskmanager_jvm()
    before = {"threads": threads(tm_pid), **tm_metrics()}
    print(f"TaskManager pid {tm_pid} before the first job: {before['threads']} threads, "
          f"metaspace {before['metaspace_mib']:.1f} MiB, direct {before['direct_mib']:.1f} MiB", flush=True)
    cols = ("cycle", "start_s", "cycle_s", "rows", "harness_processes_while_running", "processes_left_after_cancel",
            "threads", "metaspace_mib", "direct_mib", "heap_mib", "classes_loaded")
    print(" | ".join(cols), flush=True)
    rows = []
    for i in range(1, args.cycles + 1):
        if taskmanager_jvm() != tm_pid:
            raise SystemExit(f"cycle {i}: the TaskManager JVM was replaced (pid {tm_pid} gone): it died")
        r = cycle(i, args, bootstrap, tm_pid)
        rows.append(r)
        print(" | ".join(str(r[c]) for c in cols), flush=True)
    first, last = rows[0], rows[-1]
    growth = {k: (last[k] - first[k]) / first[k] for k in ("threads", "metaspace_mib")}
    ok = (all(abs(g) <= 0.10 for g in growth.values()) and all(r["processes_left_after_cancel"] == 0 for r in rows)
          and rows[-1]["tm_id"] == rows[0]["tm_id"])
    verdict = (f"{args.cycles} cycles on one TaskManager: threads {first['threads']} -> {last['threads']} "
               f"({growth['threads']:+.1%}), metaspace {first['metaspace_mib']} -> {last['metaspace_mib']} MiB "
               f"({growth['metaspace_mib']:+.1%}), processes left after a cancel: "
               f"{max(r['processes_left_after_cancel'] for r in rows)}; every job landed all its rows: "
               f"{'PASS' if ok else 'FAIL'} (target: within 10% of the first cycle)")
    print(verdict, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"before": before, "cycles": rows, "growth": growth, "ok": ok,
                                         "verdict": verdict, "taskmanager_pid": tm_pid}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
