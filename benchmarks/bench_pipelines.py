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

Floor (`--floor read,validate,transform`): the KPI job cut down to its first steps (benchmarks/floor_pipeline.py:
the Kafka read alone, + validation, + redaction and scoring, + the two per-turn sinks), on the same records,
timed until every element is counted (the sinks: until every row and Redis count landed): what Beam on Flink
costs per record before the keyed session totals.

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
from io_connectors.settings import librdkafka_for

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


_EXTRA_POOLS: List[int] = []  # a stock worker pool started for --variant runs (--stock-pool-port)


def python_worker_pids() -> List[int]:
    roots = [r for r in (_pid("worker-pool"), *_EXTRA_POOLS) if r]
    return [p for r in roots for p in descendants(r)]


def prometheus_pids() -> List[int]:
    root = _pid("prometheus")
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


class Scenario:
    """A pipeline under test: its topics, the events produced, and how to tell that everything landed."""

    def __init__(self, name: str, topics_: Tuple[str, ...], rows_table: str, sessions_table: str,
                 session_count: str, redis_turns: bool):
        self.name, self.topics, self.rows_table, self.sessions_table = name, topics_, rows_table, sessions_table
        self.session_count, self.redis_turns = session_count, redis_turns

    def make(self, run_id: str, n: int, start: int):
        """({topic: records}, distinct rows expected, {session_id: distinct items counted in its row})."""
        sessions = max(50, n // 40)
        if self.name == "kpi":
            turns, tools = workload(run_id, n, start)
            return ({topics.TURNS: turns.records, topics.TOOLS: tools.records}, len(turns.expected),
                    expected_counts(turns, tools))
        from workloads.generator import FrontendSessionWorkload, FrontendWorkload, WidgetPerformanceWorkload

        parts = [FrontendWorkload(seed=21, run_id=run_id, start_ms=start, sessions=sessions).generate(n * 7 // 10),
                 FrontendSessionWorkload(seed=22, run_id=run_id, start_ms=start, sessions=sessions).generate(
                     n * 15 // 100),
                 WidgetPerformanceWorkload(seed=23, run_id=run_id, start_ms=start, sessions=sessions).generate(
                     n - n * 7 // 10 - n * 15 // 100)]
        per: Dict[str, int] = {}
        for w in parts:
            for ev in w.events:
                per[ev["session_id"]] = per.get(ev["session_id"], 0) + 1
        return {w.topic: w.records for w in parts}, sum(len(w.events) for w in parts), per


SCENARIOS = {
    "kpi": Scenario("kpi", KPI_TOPICS, "agent_turns", "session_kpis", "turns", True),
    "frontend": Scenario("frontend", (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET),
                         "frontend_analytics", "frontend_session_engagement", "events", False),
}


def produce(records_by_topic: Dict[str, list], bootstrap: str, rate: Optional[float] = None
            ) -> Tuple[float, Dict[Tuple[str, str], float]]:
    """Produce (round-robin over topics when paced); return the time of the first record and, when paced,
    the produce time of each turn (session_id, turn_id)."""
    from confluent_kafka import Producer

    p = Producer({**librdkafka_for(bootstrap), "enable.idempotence": True, "acks": "all", "linger.ms": 5,
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


def landed(conn, sc: Scenario, run_id: str, n: int, per_session: Dict[str, int], rds) -> bool:
    from psycopg2 import sql

    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE session_id LIKE %s").format(sql.Identifier(sc.rows_table)),
                    (f"{run_id}-%",))
        if cur.fetchone()[0] < n:
            return False
        cur.execute(sql.SQL("SELECT session_id, {} FROM {} WHERE session_id LIKE %s").format(
            sql.Identifier(sc.session_count), sql.Identifier(sc.sessions_table)), (f"{run_id}-%",))
        got = dict(cur.fetchall())
    if any(got.get(s) != c for s, c in per_session.items()):
        return False
    if not sc.redis_turns:
        return True
    pipe = rds.pipeline(transaction=False)
    for s in per_session:
        pipe.hget(f"session:{s}:metrics", "total_turns")
    return all(int(v or 0) == per_session[s] for s, v in zip(per_session, pipe.execute()))


def wait_landed(sc: Scenario, run_id, n, per_session, timeout_s) -> Tuple[float, float]:
    """(when every row of the main table was there, when the session table and Redis were complete too)."""
    from psycopg2 import sql

    conn, rds = _pg(), _redis()
    deadline = time.time() + timeout_s
    rows_at = None
    count = sql.SQL("SELECT count(*) FROM {} WHERE session_id LIKE %s").format(sql.Identifier(sc.rows_table))
    try:
        while time.time() < deadline:
            if rows_at is None:
                with conn.cursor() as cur:
                    cur.execute(count, (f"{run_id}-%",))
                    if cur.fetchone()[0] >= n:
                        rows_at = time.time()
            if rows_at is not None and landed(conn, sc, run_id, n, per_session, rds):
                return rows_at, time.time()
            time.sleep(0.25)
    finally:
        conn.close()
    raise SystemExit(f"{run_id}: not all rows landed within {timeout_s:.0f} s")


def _redis():
    from io_connectors.clients import redis_client

    return redis_client(RedisSettings.from_env())


# Bookkeeping that legitimately differs between the two contenders: write time, pane versions, and how a
# session's totals split into generations (base_*: the pipeline releases a session's state after gap +
# lateness of event time and starts a new generation; the hand-rolled process keeps it in memory). The
# session totals themselves are compared.
_NOT_COMPARED = ("updated_at", "pane_version", "is_final", "generations", "base_events", "base_furthest_stage",
                 "base_started_at", "base_turns", "base_tool_calls", "base_tokens_in", "base_tokens_out",
                 "base_latency_sum_ms")


def snapshot(sc: Scenario, run_id: str):
    """The rows a run wrote (both tables, and the Redis state for kpi), with its run id taken out."""
    from psycopg2 import sql

    conn = _pg()
    out = []
    for table, key in ((sc.rows_table, None), (sc.sessions_table, "session_id")):
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT to_jsonb(t) FROM {} t WHERE session_id LIKE %s").format(sql.Identifier(table)),
                        (f"{run_id}-%",))
            rows = {}
            for (doc,) in cur.fetchall():
                for c in _NOT_COMPARED:
                    doc.pop(c, None)
                text = json.dumps(doc, sort_keys=True).replace(run_id, "RUN")
                if key:
                    k = doc.get(key)
                elif "turn_id" in doc:
                    k = (doc["session_id"], doc["turn_id"])
                else:  # derived event ids (fe_<hash of the session id, ...>) differ with the run id
                    k = (doc["session_id"], doc.get("event_type"), doc.get("ts_ms"), doc.get("page_url"))
                    if str(doc.get("event_id", "")).startswith("fe_"):
                        doc.pop("event_id")
                        text = json.dumps(doc, sort_keys=True).replace(run_id, "RUN")
                rows[str(k).replace(run_id, "RUN")] = text
            out.append(rows)
    conn.close()
    state = {}
    if sc.redis_turns:
        rds = _redis()
        for sid in out[1]:
            h = rds.hgetall(f"session:{sid.replace('RUN', run_id)}:state")
            state[sid] = (h.get(b"last_turn_id"), h.get(b"seq"))
    out.append(state)
    return out


def compare(a, b) -> str:
    diffs = []
    for name, x, y in zip(("rows", "session rows", "redis state"), a, b):
        if x != y:
            only = len(set(x) ^ set(y))
            changed = sum(1 for k in set(x) & set(y) if x[k] != y[k])
            diffs.append(f"{name}: {only} keys in one only, {changed} differ")
    return "identical" if not diffs else "; ".join(diffs)


# --- contenders -------------------------------------------------------------------------------------------

def start_job(pipeline: str, run_id: str, parallelism: int, extra: List[str]) -> str:
    """The README's command, from the topic end (--start_from=latest); returns once the job is RUNNING."""
    job = f"bench-{pipeline}-{run_id}"
    cmd = [PY, "-m", f"beam_pipelines.{pipeline}", "--runner=FlinkRunner", "--flink_master=localhost:8081",
           f"--job_name={job}", f"--consumer_group=bench-{pipeline}-{run_id}", "--start_from=latest",
           f"--parallelism={parallelism}", "--no_wait_until_finish", *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise SystemExit(f"the {pipeline} job did not start:\n{(r.stdout + r.stderr)[-3000:]}")
    return job


def cancel_job(job_name: str) -> None:
    import requests

    for j in requests.get("http://localhost:8081/jobs/overview", timeout=10).json()["jobs"]:
        if j["name"] == job_name and j["state"] in ("RUNNING", "CREATED", "RESTARTING", "INITIALIZING"):
            requests.patch(f"http://localhost:8081/jobs/{j['jid']}?mode=cancel", timeout=10)


def commit_group_at_end(group: str, topics_: Tuple[str, ...], bootstrap: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**librdkafka_for(bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        offsets = []
        for t in topics_:
            for p in c.list_topics(t, timeout=10).topics[t].partitions:
                offsets.append(TopicPartition(t, p, c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]))
        c.commit(offsets=offsets, asynchronous=False)
    finally:
        c.close()


def start_floor_job(stage: str, run_id: str, parallelism: int, extra: List[str]) -> Tuple[str, str]:
    """benchmarks/floor_pipeline.py at `stage`, with the KPI job's flags; returns (job name, Redis count key)."""
    job, key = f"bench-floor-{stage}-{run_id}", f"session:bench-floor-{run_id}:count"
    cmd = [PY, "-m", "benchmarks.floor_pipeline", "--runner=FlinkRunner", "--flink_master=localhost:8081",
           f"--job_name={job}", f"--consumer_group=bench-kpi-{run_id}", "--start_from=latest",
           f"--parallelism={parallelism}", "--no_wait_until_finish", f"--stage={stage}", f"--count_key={key}",
           *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise SystemExit(f"the floor job ({stage}) did not start:\n{(r.stdout + r.stderr)[-3000:]}")
    return job, key


def wait_counted(key: str, n: int, timeout_s: float, job_name: str) -> float:
    """When the floor job's bundles (a hash field each) add up to n; fails at once when the job has failed."""
    rds = _redis()
    deadline, next_look = time.time() + timeout_s, time.time() + 5
    while time.time() < deadline:
        if sum(int(v) for v in rds.hvals(key)) >= n:
            return time.time()
        if time.time() > next_look:
            next_look = time.time() + 5
            failure = job_failure(job_name)
            if failure:
                raise SystemExit(f"the floor job {job_name} failed: {failure}")
        time.sleep(0.1)
    raise SystemExit(f"{key}: fewer than {n} elements counted within {timeout_s:.0f} s")


def wait_sinks(run_id: str, n_rows: int, per_session: Dict[str, int], timeout_s: float) -> float:
    conn, rds = _pg(), _redis()
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
                if cur.fetchone()[0] >= n_rows:
                    pipe = rds.pipeline(transaction=False)
                    for sid in per_session:
                        pipe.hget(f"session:{sid}:metrics", "total_turns")
                    if all(int(v or 0) == per_session[s] for s, v in zip(per_session, pipe.execute())):
                        return time.time()
            time.sleep(0.25)
    finally:
        conn.close()
    raise SystemExit(f"{run_id}: the floor job's agent_turns rows and Redis state not complete within {timeout_s:.0f} s")


def job_failure(job_name: str) -> Optional[str]:
    """The last line of the newest exception of the running job of this name, if it has any."""
    import requests

    for j in requests.get("http://localhost:8081/jobs/overview", timeout=10).json()["jobs"]:
        if j["name"] == job_name and j["state"] not in ("FINISHED", "CANCELED"):
            entries = requests.get(f"http://localhost:8081/jobs/{j['jid']}/exceptions", timeout=10).json().get(
                "exceptionHistory", {}).get("entries", [])
            if entries:
                lines = [l for l in entries[0].get("stacktrace", "").splitlines() if "Error" in l or "Exception" in l]
                return (lines[-1] if lines else entries[0].get("exceptionName", "?")).strip()[:500]
    return None


def run_contender(sc: Scenario, kind: str, run_id: str, n: int, args, bootstrap: str) -> Dict[str, float]:
    records, n_rows, per_session = sc.make(run_id, n, args.start_ms)
    n_records = sum(len(r) for r in records.values())
    proc = None
    floor = kind[len("floor-"):] if kind.startswith("floor-") else None
    if floor:
        job, count_key = start_floor_job(floor, run_id, args.parallelism, args.pipeline_args)
        work = beam_pids
        split = {"jvm": jvm_pids, "python": python_worker_pids}
    elif kind == "beam":
        job = start_job(sc.name, run_id, args.parallelism, args.pipeline_args)
        work = beam_pids
        split = {"jvm": jvm_pids, "python": python_worker_pids, "prometheus": prometheus_pids}
    else:
        group = f"bench-{run_id}"
        commit_group_at_end(group, sc.topics, bootstrap)
        proc = subprocess.Popen([PY, str(REPO / "benchmarks" / "handrolled.py"), f"--group={group}",
                                 f"--pipeline={sc.name}"], cwd=REPO, env={**os.environ, **environment()},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)  # subscribed and assigned
        work = lambda: descendants(proc.pid)  # noqa: E731
        split = {}
    sampler = Sampler({"work": work, "services": service_pids, **split}).start()
    profiling = None
    try:  # the job is cancelled whatever fails from here on (a job left running skews every later run)
        if args.profile:
            profiling = Profiles(args.profile, f"{sc.name}-{kind}", work if kind == "handrolled" else None)
        t0, _ = produce(records, bootstrap)
        if floor == "sinks":  # the per-turn sinks: every agent_turns row and Redis turn count, no session_kpis
            t_rows = t_end = wait_sinks(run_id, n_rows, per_session, args.timeout)
        elif floor:
            t_rows = t_end = wait_counted(count_key, n_records, args.timeout, job)
        else:
            t_rows, t_end = wait_landed(sc, run_id, n_rows, per_session, args.timeout)
    finally:
        cpu = sampler.stop()
        if profiling:
            profiling.stop()
        if kind != "handrolled":
            cancel_job(job)
        else:
            proc.terminate()
            proc.wait(30)
    secs = t_end - t0
    return {"records": n_records, "rows": n_rows, "seconds": round(secs, 2),
            "rows_seconds": round(t_rows - t0, 2),
            "records_per_s": round(n_records / secs), "rows_per_s": round(n_rows / secs),
            "rows_per_s_main_table": round(n_rows / (t_rows - t0)),
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
        pools = {_pid("worker-pool"), *_EXTRA_POOLS}
        targets = pids() if pids else [p for p in python_worker_pids() if p not in pools]
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
    # The generator spaces turns ~1.1 s of event time apart: offered at 2,000/s, 30 s of records carry ~18 h of event
    # time ending now. The job keeps up at moments, and Kafka's CreateTime watermark of a caught-up partition is the
    # clock (Beam's create_time_policy), so with the default lateness (1 h) most of the run's records would arrive
    # late by the pipeline's own rule (`late_data` dead letters, sessions short: 4,145 of 60,000 turns on
    # 2026-12-07). Real traffic's event times follow the clock; a lateness beyond the records' age stands in for it.
    extra = list(args.pipeline_args)
    if not any(a.startswith("--allowed_lateness_seconds") for a in extra):
        extra.append(f"--allowed_lateness_seconds={int(n * 1.1) + 3600}")
    job = start_job("kpi", run_id, args.parallelism, extra)
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
        wait_landed(SCENARIOS["kpi"], run_id, len(turns.expected), per_session, args.timeout)
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
    ap.add_argument("--pipelines", default="kpi,frontend", help="comma-separated: kpi, frontend")
    ap.add_argument("--events", "--turns", type=int, default=100_000, dest="events",
                    help="distinct valid events per pipeline (kpi: turns; plus duplicates, bad records, tool calls)")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2000, help="offered turns/s for the latency run (0: skip)")
    ap.add_argument("--rate-seconds", type=float, default=30)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--skip", choices=("beam", "handrolled"), action="append", default=[])
    ap.add_argument("--floor", default="", metavar="STAGES",
                    help="also run the KPI job cut down to its first steps (benchmarks/floor_pipeline.py) on the "
                         "same records, once per stage: comma-separated read,validate,transform,sinks")
    ap.add_argument("--profile", metavar="DIR", help="profile the contenders while records flow (py-spy, JFR)")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "pipelines.json"))
    ap.add_argument("pipeline_args", nargs="*", help="after --: extra flags for the jobs (e.g. --max_bundle_size=1000)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                    help="A/B: run only the Beam contender of each pipeline once per variant, with these extra job "
                         "flags (space-separated), e.g. --variant 'beam-defaults=--max_bundle_size=1000 "
                         "--max_bundle_time_millis=1000 --sdk_worker_parallelism=1'; a token @tm:KEY=VALUE restarts "
                         "the TaskManager with that devstack setting before the variant (e.g. "
                         "@tm:DEVSTACK_FLINK_METRICS_FILTER=off), and the stack's own settings are restored after")
    ap.add_argument("--stock-pool-port", type=int, default=0,
                    help="also start Beam's own worker pool (no state cache) on this port for the run, for "
                         "variants with --environment_config=localhost:PORT")
    ap.add_argument("--extra-pool", action="append", default=[], metavar="PORT=FLAGS",
                    help="also start `python -m beam_pipelines.worker_pool --service_port=PORT FLAGS` for the run, "
                         "for variants with --environment_config=localhost:PORT (e.g. 50001=--stock_state_weigher); a "
                         "token @repo:DIR runs that pool's workers on the code in DIR (A/B of two commits: "
                         "`git worktree add DIR COMMIT`)")
    args = ap.parse_args()
    bad = [s for s in filter(None, args.floor.split(",")) if s not in ("read", "validate", "transform", "sinks")]
    if bad:
        ap.error(f"unknown --floor stage {bad}")
    os.environ.update(environment())
    if args.variant:
        return run_variants(args)
    args.start_ms = int(time.time() * 1000) - args.events * 1100  # event times end about now
    bootstrap = KafkaSettings.from_env().bootstrap_servers
    tag = uuid.uuid4().hex[:7]
    out: Dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "events": args.events,
                              "parallelism": args.parallelism, "pipeline_args": args.pipeline_args,
                              "cores": os.cpu_count()}
    for name in args.pipelines.split(","):
        sc, res = SCENARIOS[name], {}
        for kind in ("beam", "handrolled"):
            if kind in args.skip:
                continue
            print(f"[bench] {name} {kind}: {args.events} events ...", flush=True)
            res[kind] = run_contender(sc, kind, f"{kind[0]}{name[0]}{tag}", args.events, args, bootstrap)
            print(f"[bench] {name} {kind}: {res[kind]}", flush=True)
        if "beam" in res and "handrolled" in res:
            res["same_rows"] = compare(snapshot(sc, f"b{name[0]}{tag}"), snapshot(sc, f"h{name[0]}{tag}"))
            res["ratio"] = round(res["beam"]["rows_per_s"] / res["handrolled"]["rows_per_s"], 2)
        if name == "kpi":
            for stage in filter(None, args.floor.split(",")):
                print(f"[bench] kpi floor ({stage}): {args.events} events ...", flush=True)
                res[f"floor_{stage}"] = run_contender(sc, f"floor-{stage}", f"f{stage[0]}{tag}", args.events, args,
                                                      bootstrap)
                print(f"[bench] kpi floor ({stage}): {res[f'floor_{stage}']}", flush=True)
        out[name] = res
        _save(args.json, out)  # after each part: a later one that fails leaves the figures measured so far
    if args.rate:
        print(f"[bench] latency at {args.rate:.0f} turns/s for {args.rate_seconds:.0f} s ...", flush=True)
        out["latency"] = latency_run(f"l{tag}", args, bootstrap)
    _save(args.json, out)
    print_table(out)
    print(f"\nwritten to {args.json}")


def _save(path: str, out: Dict[str, object]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str))


def restart_taskmanager(env: Dict[str, str]) -> None:
    """A new TaskManager whose configuration is written with these environment settings (a variant's `@tm:K=V`
    tokens, e.g. @tm:DEVSTACK_FLINK_METRICS_FILTER=off); devstack.services.flink reads them."""
    print(f"[bench] restarting the TaskManager with {env or 'the stack settings'}", flush=True)
    subprocess.run([PY, "-m", "devstack", "restart-taskmanager"], cwd=REPO, check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO), **env}, stdout=subprocess.DEVNULL)
    time.sleep(5)  # the JobManager has registered its slots


def run_variants(args) -> None:
    """The Beam contender once per variant, back to back in this run, on the same events."""
    bootstrap = KafkaSettings.from_env().bootstrap_servers
    args.start_ms = int(time.time() * 1000) - args.events * 1100
    pools = []
    commands = [[PY, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={args.stock_pool_port}"]] \
        if args.stock_pool_port else []
    repos = [REPO] * len(commands)
    for spec in args.extra_pool:
        port, _, flags = spec.partition("=")
        # @repo:DIR: the pool's workers import the project's code from DIR (a worktree of another commit), so
        # that a variant with --environment_config=localhost:PORT runs that commit's transforms and sinks
        repo = next((Path(t[len("@repo:"):]) for t in flags.split() if t.startswith("@repo:")), REPO)
        commands.append([PY, "-m", "beam_pipelines.worker_pool", f"--service_port={int(port)}",
                         *[t for t in flags.split() if not t.startswith("@repo:")]])
        repos.append(repo)
    for command, repo in zip(commands, repos):
        pools.append(subprocess.Popen(command, cwd=repo,
                                      env={**os.environ, **environment(), "PYTHONPATH": str(repo),
                                           "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _EXTRA_POOLS.append(pools[-1].pid)
    if pools:
        time.sleep(3)
    out: Dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "events": args.events, "variants": {}}
    tm_changed = False
    try:
        for name in args.pipelines.split(","):
            for v in args.variant:
                label, _, flags = v.partition("=")
                tm_env = dict(t[len("@tm:"):].split("=", 1) for t in flags.split() if t.startswith("@tm:"))
                args.pipeline_args = [t for t in flags.split() if not t.startswith("@tm:")]
                if tm_env:
                    restart_taskmanager(tm_env)
                    tm_changed = True
                tag = uuid.uuid4().hex[:7]
                print(f"[bench] {name} {label}: {args.events} events ...", flush=True)
                res = run_contender(SCENARIOS[name], "beam", f"v{name[0]}{tag}", args.events, args, bootstrap)
                print(f"[bench] {name} {label}: {res}", flush=True)
                out["variants"][f"{name} {label}"] = {"flags": flags, **res}
    finally:
        for pool in pools:
            pool.terminate()
            pool.wait(30)
        if tm_changed:
            restart_taskmanager({})  # back to the stack's own settings
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    print(f"\n| variant (events={args.events}) | events/s, all rows | events/s, main table | CPU-s / 1k records |")
    print("|---|---|---|---|")
    for label, r in out["variants"].items():
        print(f"| {label} | {r['rows_per_s']} | {r['rows_per_s_main_table']} | {r['cpu_s_per_1k_records']} |")
    print(f"\nwritten to {args.json}")


def print_table(out: Dict[str, object]) -> None:
    print()
    print(f"| figure (events={out['events']}, parallelism={out['parallelism']}) | Beam on Flink | hand-rolled |")
    print("|---|---|---|")
    for name in ("kpi", "frontend"):
        res = out.get(name)
        if not res:
            continue
        b, h = res.get("beam", {}), res.get("handrolled", {})
        for key, label in (("rows_per_s", "events/s, first produced -> all rows (and Redis) complete"),
                           ("rows_per_s_main_table", "events/s, first produced -> last row of the main table"),
                           ("records_per_s", "records/s (incl. duplicates, bad records, tool calls)"),
                           ("cpu_s_per_1k_records", "CPU-s per 1,000 records (TaskManager + SDK workers / process)"),
                           ("cpu_s_per_1k_records_jvm", "  of which the TaskManager JVM"),
                           ("service_cpu_s_per_1k_records", "CPU-s per 1,000 records (Kafka + Postgres + Redis)"),
                           ("peak_rss_mib", "peak RSS MiB (TaskManager + SDK workers / process)")):
            print(f"| {name}: {label} | {b.get(key, '-')} | {h.get(key, '-')} |")
        if "ratio" in res:
            print(f"| {name}: ratio Beam / hand-rolled | {res['ratio']} | rows: {res['same_rows']} |")
    floors = [(k[len("floor_"):], v) for k, v in (out.get("kpi") or {}).items() if k.startswith("floor_")]
    if floors:
        print("\n| the KPI job cut down (benchmarks/floor_pipeline.py) | records/s, first produced -> all counted | "
              "CPU-s per 1,000 records | of which JVM / Python |")
        print("|---|---|---|---|")
        for stage, r in [("full KPI job", (out.get("kpi") or {}).get("beam") or {})] + floors:
            if r:
                print(f"| {stage} | {r['records_per_s']} | {r['cpu_s_per_1k_records']} | "
                      f"{r.get('cpu_s_per_1k_records_jvm', '-')} / {r.get('cpu_s_per_1k_records_python', '-')} |")
    if "latency" in out:
        lat = out["latency"]
        print(f"| kpi: lag p50/p95/p99 ms at {lat['offered_per_s']:.0f} turns/s | {lat['lag_p50_ms']} / "
              f"{lat['lag_p95_ms']} / {lat['lag_p99_ms']} | |")
        print(f"| kpi: Redis HGETALL p95 ms / Postgres 500-row upsert p95 ms, under that load | "
              f"{lat['hgetall_p95_ms']} / {lat['pg_write_500_p95_ms']} | |")


if __name__ == "__main__":
    main()
