"""The KPI pipeline on the local Flink cluster against the hand-rolled consumer (benchmarks/handrolled.py), side by
side on the same records, in one run (`./run stack up` first):

    .venv/bin/python benchmarks/bench_pipelines.py [--turns 100000] [--rate 2000 --rate-seconds 30]
                                                   [--parallelism 2] [--json benchmarks/results/pipelines.json]
                                                   [-- <extra pipeline flags, e.g. --max_bundle_size=5000>]

Throughput (per contender): the consumer (the job, started with the README's command and `--start_from=latest`,
or the hand-rolled process) waits at the topic end; N turns (the project's generator: 10% duplicates, 5%
malformed, 20% out of order; plus tool calls) are produced to the real broker as fast as it takes them; the
clock runs from the first record produced to the last `agent_turns` row counted in Postgres with every
session's `session_kpis` turn count and Redis `total_turns` complete. Each contender gets its own run id
(session ids differ only in one letter), and the rows both wrote are compared column by column.

CPU-seconds per 1,000 events: utime+stime from /proc of the processes that do the work (the TaskManager JVM
and the Python SDK workers under the worker pool; the hand-rolled process), and of the services both use
(Kafka, Postgres, Redis) separately. Peak RSS: sampled every 0.5 s.

Latency (`--rate`): the KPI job alone, turns offered at a fixed rate; event-to-sink lag = the row's
`updated_at` (insert time) minus the time the benchmark produced it, p50/p95/p99; meanwhile this process
reads `HGETALL session:<id>:state` in a loop and times a 500-row probe upsert into `agent_turns` every second
(under a bench- prefix, deleted afterwards).

Prints one table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.config import RUN  # noqa: E402
from events import topics  # noqa: E402
from io_connectors.settings import KafkaSettings, PostgresSettings, RedisSettings, environment  # noqa: E402
from workloads.generator import ToolWorkload, TurnWorkload  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
KPI_TOPICS = (topics.TURNS, topics.TOOLS, topics.SESSIONS)
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- processes --------------------------------------------------------------------------------------------

def _pid(name: str) -> Optional[int]:
    try:
        return int((RUN / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def descendants(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: List[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
        except OSError:
            pass
    return total / TICK


def rss_mib(pids: List[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total / 2 ** 20


class Sampler:
    """CPU-seconds over a span and peak RSS (sampled) of process groups, re-resolving children as they come."""

    def __init__(self, groups: Dict[str, callable]):
        self.groups = groups
        self.peak = {g: 0.0 for g in groups}
        self.cpu0: Dict[str, float] = {}
        self.seen: Dict[str, set] = {g: set() for g in groups}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _pids(self, g):
        pids = self.groups[g]()
        self.seen[g].update(pids)
        return pids

    def _run(self):
        while not self._stop.wait(0.5):
            for g in self.groups:
                self.peak[g] = max(self.peak[g], rss_mib(self._pids(g)))

    def start(self):
        self.cpu0 = {g: cpu_seconds(self._pids(g)) for g in self.groups}
        self._t.start()
        return self

    def stop(self) -> Dict[str, float]:
        self._stop.set()
        self._t.join()
        # processes that ended during the span (SDK workers) count through their parent's cutime/cstime
        return {g: cpu_seconds(self._pids(g)) - self.cpu0[g] for g in self.groups}


def beam_pids() -> List[int]:
    return jvm_pids() + python_worker_pids()


def jvm_pids() -> List[int]:
    root = _pid("flink-taskmanager")
    return descendants(root) if root else []


def python_worker_pids() -> List[int]:
    root = _pid("worker-pool")
    return descendants(root) if root else []


def service_pids() -> List[int]:
    return [p for root in (_pid("kafka"), _pid("postgres"), _pid("redis")) if root for p in descendants(root)]


# --- data -------------------------------------------------------------------------------------------------

def workload(run_id: str, n_turns: int, start: int, seed: int = 11):
    """The same events for every contender (only the run id in the session ids differs)."""
    sessions = max(50, n_turns // 40)
    turns = TurnWorkload(seed=seed, run_id=run_id, start_ms=start, sessions=sessions).generate(n_turns)
    tools = ToolWorkload(seed=seed + 1, run_id=run_id, start_ms=start, sessions=sessions).generate(n_turns // 10)
    return turns, tools


def produce(records_by_topic: Dict[str, list], bootstrap: str, rate: Optional[float] = None
            ) -> Tuple[float, Dict[Tuple[str, str], float]]:
    """Produce (round-robin over topics when paced); return the time of the first record and, when paced,
    the produce time of each turn (session_id, turn_id)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                  "queue.buffering.max.messages": 1_000_000})
    sent_at: Dict[Tuple[str, str], float] = {}
    stream = [(t, r) for t, recs in records_by_topic.items() for r in recs]
    if rate:
        stream.sort(key=lambda tr: tr[1].timestamp_ms)
    t0 = time.time()
    for i, (topic, r) in enumerate(stream):
        if rate:
            due = t0 + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            if topic == topics.TURNS and r.kind == "valid":
                d = json.loads(r.value)
                sent_at[(d["session_id"], d["turn_id"])] = time.time()
        while True:
            try:
                p.produce(topic, key=r.key, value=r.value, timestamp=r.timestamp_ms)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(120)
    return t0, sent_at


def _pg():
    import psycopg2

    conn = psycopg2.connect(**PostgresSettings.from_env().connect_kwargs())
    conn.autocommit = True
    return conn


def expected_counts(turns, tools) -> Dict[str, int]:
    per: Dict[str, int] = {}
    for (sid, _), _t in turns.expected.items():
        per[sid] = per.get(sid, 0) + 1
    return per


def landed(conn, run_id: str, n: int, per_session: Dict[str, int], rds) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
        if cur.fetchone()[0] < n:
            return False
        cur.execute("SELECT session_id, turns FROM session_kpis WHERE session_id LIKE %s", (f"{run_id}-%",))
        got = dict(cur.fetchall())
    if any(got.get(s) != c for s, c in per_session.items()):
        return False
    pipe = rds.pipeline(transaction=False)
    for s in per_session:
        pipe.hget(f"session:{s}:metrics", "total_turns")
    return all(int(v or 0) == per_session[s] for s, v in zip(per_session, pipe.execute()))


def wait_landed(run_id, n, per_session, timeout_s) -> Tuple[float, float]:
    """(when every agent_turns row was there, when session_kpis and Redis were complete too)."""
    conn, rds = _pg(), _redis()
    deadline = time.time() + timeout_s
    turns_at = None
    try:
        while time.time() < deadline:
            if turns_at is None:
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
                    if cur.fetchone()[0] >= n:
                        turns_at = time.time()
            if turns_at is not None and landed(conn, run_id, n, per_session, rds):
                return turns_at, time.time()
            time.sleep(0.25)
    finally:
        conn.close()
    raise SystemExit(f"{run_id}: not all rows landed within {timeout_s:.0f} s")


def _redis():
    import redis

    s = RedisSettings.from_env()
    return redis.Redis(host=s.host, port=s.port, password=s.password or None)


def snapshot(run_id: str):
    """The rows a run wrote, with its run id taken out of the session ids (for comparing two runs)."""
    conn = _pg()
    cols = ("turn_id, user_id, account_id, channel, model, model_family, tokens_in, tokens_out, total_tokens, "
            "latency_ms, tokens_per_second, efficiency_score, quality_score, business_value_score, sentiment, "
            "topics, language, estimated_cost_usd, response_text, tools_used, ts_ms, \"timestamp\", scorer_version")
    with conn.cursor() as cur:
        cur.execute(f"SELECT substr(session_id, {len(run_id) + 1}), {cols} FROM agent_turns WHERE session_id LIKE %s",
                    (f"{run_id}-%",))
        turns = {(r[0], r[1]): tuple(map(str, r)) for r in cur.fetchall()}
        cur.execute("SELECT substr(session_id, %s), user_id, account_id, channel, turns, tokens_in, tokens_out, "
                    "latency_sum_ms, avg_latency_ms, tool_calls, started_at, ended_at FROM session_kpis "
                    "WHERE session_id LIKE %s", (len(run_id) + 1, f"{run_id}-%"))
        sessions = {r[0]: tuple(map(str, r)) for r in cur.fetchall()}
    conn.close()
    rds = _redis()
    state = {}
    for sid in sessions:
        h = rds.hgetall(f"session:{run_id}{sid}:state")
        state[sid] = (h.get(b"last_turn_id"), h.get(b"seq"))
    return turns, sessions, state


def compare(a, b) -> str:
    diffs = []
    for name, x, y in zip(("agent_turns", "session_kpis", "redis state"), a, b):
        if x != y:
            only = len(set(x) ^ set(y))
            changed = sum(1 for k in set(x) & set(y) if x[k] != y[k])
            diffs.append(f"{name}: {only} keys in one only, {changed} differ")
    return "identical" if not diffs else "; ".join(diffs)


# --- contenders -------------------------------------------------------------------------------------------

def start_kpi_job(run_id: str, parallelism: int, extra: List[str]) -> str:
    job = f"bench-kpi-{run_id}"
    cmd = [PY, "-m", "beam_pipelines.kpi", "--runner=FlinkRunner", "--flink_master=localhost:8081",
           f"--job_name={job}", f"--consumer_group=bench-{run_id}", "--start_from=latest",
           f"--parallelism={parallelism}", "--no_wait_until_finish", *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise SystemExit(f"the KPI job did not start:\n{(r.stdout + r.stderr)[-3000:]}")
    return job


def cancel_job(job_name: str) -> None:
    import requests

    for j in requests.get("http://localhost:8081/jobs/overview", timeout=10).json()["jobs"]:
        if j["name"] == job_name and j["state"] in ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING"):
            requests.patch(f"http://localhost:8081/jobs/{j['jid']}?mode=cancel", timeout=10)


def commit_group_at_end(group: str, bootstrap: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = []
        for t in KPI_TOPICS:
            for p in c.list_topics(t, timeout=10).topics[t].partitions:
                offsets.append(TopicPartition(t, p, c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]))
        c.commit(offsets=offsets, asynchronous=False)
    finally:
        c.close()


def run_contender(kind: str, run_id: str, n_turns: int, args, bootstrap: str) -> Dict[str, float]:
    turns, tools = workload(run_id, n_turns, args.start_ms)
    per_session = expected_counts(turns, tools)
    n_records = len(turns.records) + len(tools.records)
    proc = None
    if kind == "beam":
        job = start_kpi_job(run_id, args.parallelism, args.pipeline_args)
        work = beam_pids
        split = {"jvm": jvm_pids, "python": python_worker_pids}
    else:
        group = f"bench-{run_id}"
        commit_group_at_end(group, bootstrap)
        proc = subprocess.Popen([PY, str(REPO / "benchmarks" / "handrolled.py"), f"--group={group}"], cwd=REPO,
                                env={**os.environ, **environment()}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        time.sleep(3)  # subscribed and assigned
        work = lambda: descendants(proc.pid)  # noqa: E731
        split = {}
    sampler = Sampler({"work": work, "services": service_pids, **split}).start()
    profiling = Profiles(args.profile, kind, work if kind == "handrolled" else None) if args.profile else None
    try:
        t0, _ = produce({topics.TURNS: turns.records, topics.TOOLS: tools.records}, bootstrap)
        t_turns, t_end = wait_landed(run_id, len(turns.expected), per_session, args.timeout)
    finally:
        cpu = sampler.stop()
        if profiling:
            profiling.stop()
        if kind == "beam":
            cancel_job(job)
        else:
            proc.terminate()
            proc.wait(30)
    secs = t_end - t0
    return {"records": n_records, "turns": len(turns.expected), "seconds": round(secs, 2),
            "agent_turns_seconds": round(t_turns - t0, 2),
            "records_per_s": round(n_records / secs), "turns_per_s": round(len(turns.expected) / secs),
            "cpu_s_per_1k_records": round(cpu["work"] / n_records * 1000, 3),
            "service_cpu_s_per_1k_records": round(cpu["services"] / n_records * 1000, 3),
            "peak_rss_mib": round(sampler.peak["work"]),
            **{f"cpu_s_per_1k_records_{g}": round(cpu[g] / n_records * 1000, 3) for g in split},
            **{f"peak_rss_mib_{g}": round(sampler.peak[g]) for g in split}}


class Profiles:
    """While the records flow: py-spy (GIL-holding samples, i.e. Python CPU) of every Python SDK worker (or the
    hand-rolled process) and a Java Flight Recording of the TaskManager, written under `out_dir`.
    Summarise with `python benchmarks/profile_summary.py DIR`."""

    def __init__(self, out_dir: str, kind: str, pids=None):
        self.dir = Path(out_dir) / kind
        self.dir.mkdir(parents=True, exist_ok=True)
        pool = _pid("worker-pool")
        targets = pids() if pids else [p for p in python_worker_pids() if p != pool]
        spy = str(Path(PY).parent / "py-spy")
        self.procs = [subprocess.Popen([spy, "record", "--pid", str(p), "--gil", "--rate", "200", "--format", "raw",
                                        "--nonblocking", "--output", str(self.dir / f"py-{p}.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in targets]
        self.tm = _pid("flink-taskmanager") if not pids else None
        if self.tm:
            subprocess.run(["jcmd", str(self.tm), "JFR.start", "name=bench", "settings=profile"],
                           capture_output=True, timeout=30)

    def stop(self) -> None:
        import signal

        for p in self.procs:
            p.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for p in self.procs:
            p.wait(60)
        if self.tm:
            subprocess.run(["jcmd", str(self.tm), "JFR.stop", "name=bench", f"filename={self.dir / 'taskmanager.jfr'}"],
                           capture_output=True, timeout=60)
        print(f"[bench] profiles in {self.dir}", flush=True)


# --- latency under a fixed rate ---------------------------------------------------------------------------

def pct(values: List[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def latency_run(run_id: str, args, bootstrap: str) -> Dict[str, float]:
    n = int(args.rate * args.rate_seconds)
    turns, tools = workload(run_id, n, int(time.time() * 1000) - n * 1100)
    per_session = expected_counts(turns, tools)
    job = start_kpi_job(run_id, args.parallelism, args.pipeline_args)
    stop = threading.Event()
    hget_ms: List[float] = []
    pg_ms: List[float] = []
    sids = list(per_session)[:200]

    def read_redis():
        rds = _redis()
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            rds.hgetall(f"session:{sids[i % len(sids)]}:state")
            hget_ms.append((time.perf_counter() - t) * 1000)
            i += 1
            time.sleep(0.002)

    def probe_pg():
        from io_connectors.postgres import PostgresUpserter
        from transforms.turns import AGENT_TURN_COLUMNS, AGENT_TURN_JSON, AGENT_TURN_KEYS
        from datetime import datetime, timezone

        up = PostgresUpserter("agent_turns", AGENT_TURN_KEYS, AGENT_TURN_COLUMNS, version_column="ts_ms",
                              json_columns=AGENT_TURN_JSON)
        k = 0
        while not stop.wait(1.0):
            now = int(time.time() * 1000)
            rows = [{"session_id": f"bench-probe-{run_id}", "turn_id": f"p{k}-{i}", "user_id": "u", "account_id": "a",
                     "channel": "web_chat", "model": "gpt-4o", "tokens_in": 10, "tokens_out": 10, "total_tokens": 20,
                     "latency_ms": 1.0, "response_text": "probe", "tools_used": [], "ts_ms": now,
                     "timestamp": datetime.fromtimestamp(now / 1000, tz=timezone.utc),
                     "transformation_metadata": {}} for i in range(500)]
            t = time.perf_counter()
            up.write(rows)
            pg_ms.append((time.perf_counter() - t) * 1000)
            k += 1
        up.close()

    readers = [threading.Thread(target=read_redis, daemon=True), threading.Thread(target=probe_pg, daemon=True)]
    for t in readers:
        t.start()
    try:
        _, sent_at = produce({topics.TURNS: turns.records, topics.TOOLS: tools.records}, bootstrap, rate=args.rate)
        wait_landed(run_id, len(turns.expected), per_session, args.timeout)
    finally:
        stop.set()
        for t in readers:
            t.join(10)
        cancel_job(job)
    conn = _pg()
    with conn.cursor() as cur:
        cur.execute("SELECT session_id, turn_id, extract(epoch from updated_at) FROM agent_turns "
                    "WHERE session_id LIKE %s", (f"{run_id}-%",))
        lags = [(float(ts) - sent_at[(s, t)]) * 1000 for s, t, ts in cur.fetchall() if (s, t) in sent_at]
        cur.execute("DELETE FROM agent_turns WHERE session_id = %s", (f"bench-probe-{run_id}",))
    conn.close()
    return {"offered_per_s": args.rate, "turns": len(turns.expected), "lag_p50_ms": round(pct(lags, 50)),
            "lag_p95_ms": round(pct(lags, 95)), "lag_p99_ms": round(pct(lags, 99)),
            "hgetall_p95_ms": round(pct(hget_ms, 95), 3), "pg_write_500_p95_ms": round(pct(pg_ms, 95), 1)}


# --- report -----------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=100_000)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2000, help="offered turns/s for the latency run (0: skip)")
    ap.add_argument("--rate-seconds", type=float, default=30)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--skip", choices=("beam", "handrolled"), action="append", default=[])
    ap.add_argument("--profile", metavar="DIR", help="profile the contenders while records flow (py-spy, JFR)")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "pipelines.json"))
    ap.add_argument("pipeline_args", nargs="*", help="after --: extra flags for the KPI job")
    args = ap.parse_args()
    os.environ.update(environment())
    args.start_ms = int(time.time() * 1000) - args.turns * 1100  # event times end about now
    bootstrap = KafkaSettings.from_env().bootstrap_servers
    tag = uuid.uuid4().hex[:8]
    out: Dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "turns": args.turns, "parallelism": args.parallelism,
                              "pipeline_args": args.pipeline_args, "cores": os.cpu_count()}
    for kind in ("beam", "handrolled"):
        if kind in args.skip:
            continue
        print(f"[bench] {kind}: {args.turns} turns ...", flush=True)
        out[kind] = run_contender(kind, f"{kind[0]}{tag}", args.turns, args, bootstrap)
        print(f"[bench] {kind}: {out[kind]}", flush=True)
    if "beam" in out and "handrolled" in out:
        out["same_rows"] = compare(snapshot(f"b{tag}"), snapshot(f"h{tag}"))
        out["ratio"] = round(out["beam"]["turns_per_s"] / out["handrolled"]["turns_per_s"], 2)
    if args.rate:
        print(f"[bench] latency at {args.rate:.0f} turns/s for {args.rate_seconds:.0f} s ...", flush=True)
        out["latency"] = latency_run(f"l{tag}", args, bootstrap)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    print()
    print(f"| figure | KPI pipeline (Flink, p={args.parallelism}) | hand-rolled consumer |")
    print("|---|---|---|")
    b, h = out.get("beam", {}), out.get("handrolled", {})
    for key, label in (("turns_per_s", "turns/s"), ("records_per_s", "records/s (turns+dups+bad+tools)"),
                       ("seconds", "seconds, first produced -> all rows and Redis state"),
                       ("agent_turns_seconds", "seconds, first produced -> last agent_turns row"),
                       ("cpu_s_per_1k_records", "CPU-s per 1,000 records (workers)"),
                       ("service_cpu_s_per_1k_records", "CPU-s per 1,000 records (Kafka+PG+Redis)"),
                       ("peak_rss_mib", "peak RSS MiB (TaskManager + SDK workers / process)")):
        print(f"| {label} | {b.get(key, '-')} | {h.get(key, '-')} |")
    if "ratio" in out:
        print(f"| ratio Beam / hand-rolled | {out['ratio']} | rows: {out['same_rows']} |")
    if "latency" in out:
        lat = out["latency"]
        print(f"| lag p50/p95/p99 ms at {lat['offered_per_s']:.0f}/s | {lat['lag_p50_ms']}/{lat['lag_p95_ms']}/"
              f"{lat['lag_p99_ms']} | |")
        print(f"| Redis HGETALL p95 ms / PG 500-row upsert p95 ms | {lat['hgetall_p95_ms']} / "
              f"{lat['pg_write_500_p95_ms']} | |")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
