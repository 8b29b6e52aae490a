"""The fault matrix (issue 15): each pipeline on the real Flink cluster, started with the README's command,
a workload produced to Kafka, one fault injected while the data flows, then exact results.

    .venv/bin/python -m reliability.fault_matrix [--pipelines kpi] [--faults tm_kill,kafka] \\
        [--points early,middle,late] [--events 100000] [--out reliability/results/fault_matrix-<date>.json]

A cell is (pipeline, fault, point). Every cell gets a job of its own on a consumer group of its own,
`e2e-<pipeline>-fault-<matrix id>c<cell>` (JOB_PER_CELL: a cell's records carry their own run id in every key
and their event times follow the previous cell's, so cells do not see each other; a job that failed is submitted
again on the same group). Per cell:

1. the group's offsets are at the topics' end; the workload (duplicates, out-of-order and malformed records
   mixed in) is produced; then the cell's job starts and reads it as a backlog;
2. once the given fraction of the expected rows landed (early 10 %, middle 50 %, late 90 %) the fault is
   injected: `tm_kill` (SIGKILL of the TaskManager JVM; devstack's supervisor starts a new one), `pool_kill`
   (SIGKILL of the Beam worker pool's process group; supervised likewise), `kafka`, `postgres`, `redis`
   (`devstack down <service>`, 20 s, `devstack up <service>`), `s3` (down 60 s), `job_server` (down, up);
3. the sinks are compared with the hand-computed expected state until they match or stop moving:
   lost = expected rows/keys missing or short (a session total below the expected one counts as lost),
   duplicated = rows written twice or totals counted twice, wrong = rows with other values,
   dlq_missing = malformed records without a dead letter (distinct source positions: a replay may repeat one);
4. resume_s = from the start of the fault to the first new row after the fault ended (the killed process
   replaced, the stopped service started again).

The table (pipeline x fault x point -> lost, duplicated, wrong, dlq missing, resume s) is printed and the
cells are written as JSON. Client settings come from io_connectors.settings (SASL/TLS when set).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from events import topics
from tests.e2e.flink_helpers import (REPO, cancel_by_name, commit_group_at_end, dead_letters_at, end_offsets,
                                     flink_get, jobs_by_name, kafka_config, python, readme_pipeline)
from workloads.expected import kpi_redis_state, kpi_session_totals
from workloads.generator import ProducedRecord, ToolWorkload, TurnWorkload

POINTS = {"early": 0.10, "middle": 0.50, "late": 0.90}
AFTER_RECOVERY_S = 30  # a cell is judged no sooner than this after its job runs again (replays, late panes)
OUTAGE_S = {"kafka": 20, "postgres": 20, "redis": 20, "s3": 60, "job_server": 0}
SERVICE = {"kafka": "kafka", "postgres": "postgres", "redis": "redis", "s3": "s3", "job_server": "job-server"}
ALL_FAULTS = ("tm_kill", "pool_kill", "kafka", "postgres", "redis", "s3", "job_server")
# which faults touch what a pipeline uses (Redis only the KPI pipeline, S3 only the archive)
APPLIES = {
    "kpi": ("tm_kill", "pool_kill", "kafka", "postgres", "redis", "job_server"),
    "frontend": ("tm_kill", "pool_kill", "kafka", "postgres", "job_server"),
    "billing": ("tm_kill", "pool_kill", "kafka", "postgres", "job_server"),
    "archive": ("tm_kill", "pool_kill", "kafka", "s3", "job_server"),
    "leads": ("tm_kill", "pool_kill", "kafka", "postgres", "job_server"),
}


def log(msg: str) -> None:
    print(f"[fault-matrix {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# clients (from io_connectors.settings), robust to the very outages the matrix causes


class Pg:
    """A Postgres connection that reconnects (the postgres fault restarts the server under it)."""

    def __init__(self):
        self.conn = None

    def query(self, sql: str, args=()) -> list:
        import psycopg2
        from io_connectors.settings import PostgresSettings

        for attempt in range(3):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg2.connect(**PostgresSettings.from_env().connect_kwargs())
                    self.conn.autocommit = True
                with self.conn.cursor() as cur:
                    cur.execute(sql, args)
                    return cur.fetchall()
            except psycopg2.OperationalError:
                try:
                    self.conn.close()
                except Exception:  # noqa: BLE001
                    pass
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.5)
        return []


def run_range(run_id: str) -> Tuple[str, str]:
    """`col >= lo AND col < hi` for keys that start with `<run_id>-` ('.' follows '-'): unlike `LIKE 'run-%'` it
    is an index range scan, not a parallel scan of the whole table (agent_turns had 3.2 million rows of earlier
    runs, and the sampler asks every 0.25 s: four Postgres workers competed with the job under test)."""
    return f"{run_id}-", f"{run_id}."


def redis_client():
    from io_connectors.clients import redis_client as make

    return make()


def devstack(*args: str, timeout_s: float = 300) -> None:
    proc = subprocess.run([python(), "-m", "devstack", *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"devstack {' '.join(args)} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")


# ---------------------------------------------------------------------------------------------------------
# faults: inject() blocks until the fault is over (the process replaced, the service back) and returns
# (t_start, t_end) in time.monotonic()


def _wait(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001
            pass
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _taskmanager_ids() -> set:
    return {t["id"] for t in flink_get("/taskmanagers")["taskmanagers"]}


def inject(fault: str) -> Tuple[float, float]:
    from devstack.config import PORTS
    from devstack.process import pid_alive, port_open, read_pid

    if fault == "tm_kill":
        from devstack.services.flink import kill_taskmanager

        old = _taskmanager_ids()
        t0 = time.monotonic()
        pid = kill_taskmanager()
        _wait(lambda: read_pid("flink-taskmanager") not in (None, pid) and bool(_taskmanager_ids() - old), 120,
              "the supervised TaskManager to register")
        return t0, time.monotonic()
    if fault == "pool_kill":
        pid = read_pid("worker-pool")
        assert pid is not None and os.getpgid(pid) == pid != os.getpgid(0), "worker pool not its own group"
        t0 = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        _wait(lambda: not pid_alive(pid), 30, "the worker pool to die")
        _wait(lambda: read_pid("worker-pool") not in (None, pid) and port_open(PORTS["worker-pool"]), 120,
              "the supervised worker pool")
        return t0, time.monotonic()
    service = SERVICE[fault]
    t0 = time.monotonic()
    try:
        devstack("down", service)
        time.sleep(OUTAGE_S[fault])  # the outage itself
    finally:
        devstack("up", service)
    return t0, time.monotonic()


# ---------------------------------------------------------------------------------------------------------
# pipelines: a workload per cell and an exact check of its sinks


@dataclass
class Check:
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    dlq_missing: int = 0
    dlq_repeats: int = 0
    details: Dict[str, object] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong or self.dlq_missing)


def check_dead_letters(c: Check, produced, positions, bootstrap: str, dlq_start) -> None:
    """Every malformed record's dead letter in its topic's DLQ (distinct source positions), no valid one there."""
    for topic, recs in produced.items():
        pos = positions[topic]
        bad = {pos[i] for i, rec in enumerate(recs) if rec.kind == "malformed"}
        good = {pos[i] for i, rec in enumerate(recs) if rec.kind != "malformed"}
        found = dead_letters_at(topic, bootstrap, dlq_start[topic], bad | good)
        c.dlq_missing += len(bad - set(found))
        c.wrong += len(good & set(found))
        c.details[f"dlq {topic}"] = {"malformed": len(bad), "missing": len(bad - set(found)),
                                     "valid_dead_lettered": len(good & set(found))}


class KpiCell:
    """The KPI pipeline: turns (80 %) and tool calls (20 %) of 200 sessions per cell; agent_turns rows,
    Redis session state/metrics, session_kpis totals and both topics' dead letters, exact."""

    pipeline = "kpi"
    topics = (topics.TURNS, topics.TOOLS, topics.SESSIONS)
    job_args = ("--session_gap_seconds=600", "--allowed_lateness_seconds=600", "--early_firing_seconds=2",
                "--health_period_seconds=0")

    def __init__(self, run_id: str, events: int, start_ms: int, seed: int):
        n_tools = max(1, events // 5)
        self.run_id = run_id
        self.turns = TurnWorkload(seed=seed, run_id=run_id, start_ms=start_ms, sessions=200).generate(events - n_tools)
        self.tools = ToolWorkload(seed=seed + 1, run_id=run_id, start_ms=start_ms + 1000, sessions=200,
                                  malformed_rate=0.05).generate(n_tools)
        self.produced = {topics.TURNS: self.turns.records, topics.TOOLS: self.tools.records}
        self.positions: Dict[str, List[Tuple[int, int]]] = {}
        self.expected = self.turns.expected
        self.want_kpis = kpi_session_totals(self.expected.values(), self.tools.events)
        self.want_latest, self.want_counts = kpi_redis_state(self.expected)

    @property
    def end_ms(self) -> int:
        return max(r.timestamp_ms for recs in self.produced.values() for r in recs)

    @property
    def records(self) -> int:
        return sum(len(v) for v in self.produced.values())

    def landed(self, pg: Pg) -> int:
        return pg.query("SELECT count(*) FROM agent_turns WHERE session_id >= %s AND session_id < %s",
                        run_range(self.run_id))[0][0]

    def target(self) -> int:
        return len(self.expected)

    def check(self, pg: Pg, bootstrap: str, dlq_start: Dict[str, Dict[int, int]], with_dlq: bool) -> Check:
        c = Check()
        rows = pg.query("SELECT session_id, turn_id, count(*) OVER (PARTITION BY session_id, turn_id), account_id, "
                        "channel, model, tokens_in, tokens_out, latency_ms, ts_ms FROM agent_turns "
                        "WHERE session_id >= %s AND session_id < %s", run_range(self.run_id))
        got = {(r[0], r[1]): r for r in rows}
        missing = set(self.expected) - set(got)
        c.lost += len(missing)
        c.duplicated += len(rows) - len(got)
        wrong_turns = [k for k, t in self.expected.items() if k in got and (
            got[k][3:8] != (t["account_id"], t["channel"], t["model_name"], t["tokens_in"], t["tokens_out"])
            or abs(float(got[k][8]) - t["latency_ms"]) > 1e-6 or got[k][9] != t["timestamp"])]
        c.wrong += len(wrong_turns) + len(set(got) - set(self.expected))
        c.details["agent_turns"] = {"expected": len(self.expected), "rows": len(rows), "missing": len(missing),
                                    "e.g.": sorted(missing)[:3], "wrong": len(wrong_turns)}

        kpis = {r[0]: r[1:] for r in pg.query(
            "SELECT session_id, turns, tokens_in, tokens_out, tool_calls, avg_latency_ms, started_at, ended_at "
            "FROM session_kpis WHERE session_id >= %s AND session_id < %s", run_range(self.run_id))}
        short = over = odd = 0
        for sid, w in self.want_kpis.items():
            g = kpis.get(sid)
            if g is None or g[:4] == w[:4] and g[5:7] == w[5:] and (
                    w[4] is None or g[4] is not None and abs(float(g[4]) - w[4]) <= 2e-3):
                short += g is None
                continue
            if all(a >= b for a, b in zip(g[:4], w[:4])) and g[:4] != w[:4]:
                over += 1
            elif all(a <= b for a, b in zip(g[:4], w[:4])) and g[:4] != w[:4]:
                short += 1
            else:
                odd += 1
        c.lost += short
        c.duplicated += over
        c.wrong += odd + len(set(kpis) - set(self.want_kpis))
        c.details["session_kpis"] = {"sessions": len(self.want_kpis), "short_or_missing": short,
                                     "counted_twice": over, "other": odd}

        r = redis_client()
        pipe = r.pipeline()
        sids = sorted(self.want_counts)
        for sid in sids:
            pipe.hget(f"session:{sid}:metrics", "total_turns")
            pipe.hmget(f"session:{sid}:state", "last_turn_id", "seq")
        res = pipe.execute()
        r_short = r_over = r_state = 0
        for i, sid in enumerate(sids):
            n = int(res[2 * i] or 0)
            r_short += n < self.want_counts[sid]
            r_over += n > self.want_counts[sid]
            tid, seq = res[2 * i + 1]
            want = self.want_latest[sid]
            r_state += not (tid and tid.decode() == want["turn_id"] and int(seq) == want["timestamp"])
        c.lost += r_short
        c.duplicated += r_over
        c.wrong += r_state if not r_short else 0  # a short session's state is lost, not wrong
        c.details["redis"] = {"sessions": len(sids), "short": r_short, "counted_twice": r_over,
                              "state_not_newest": r_state}

        if with_dlq:
            check_dead_letters(c, self.produced, self.positions, bootstrap, dlq_start)
        return c


class BillingCell:
    """The billing pipeline: turns (80 %) and tool calls (20 %, some replayed) of the cell's own accounts;
    billing_usage per account and event-time hour equal to the hand-computed distinct usage. Progress and
    lost/duplicated are counted in items (turns + tool invocations)."""

    pipeline = "billing"
    topics = (topics.TURNS, topics.TOOLS)
    job_args = ("--early_firing_seconds=2", "--health_period_seconds=0")

    def __init__(self, run_id: str, events: int, start_ms: int, seed: int):
        from workloads.expected import billing_usage, own_accounts

        n_tools = max(1, events // 5)
        self.run_id = run_id
        turns = own_accounts(TurnWorkload(seed=seed, run_id=run_id, start_ms=start_ms, sessions=200,
                                          accounts=5).generate(events - n_tools).records, run_id)
        tools = own_accounts(ToolWorkload(seed=seed + 1, run_id=run_id, start_ms=start_ms + 1000, sessions=200,
                                          accounts=5, malformed_rate=0.05).generate(n_tools).records, run_id)
        tools += tools[:50]  # replayed tool calls count once
        self.produced = {topics.TURNS: turns, topics.TOOLS: tools}
        self.positions: Dict[str, List[Tuple[int, int]]] = {}
        self.want = billing_usage(turns + tools)
        self._target = sum(w[0] + w[3] for w in self.want.values())

    end_ms = KpiCell.end_ms
    records = KpiCell.records

    def landed(self, pg: Pg) -> int:
        return int(pg.query("SELECT coalesce(sum(turns + tool_invocations), 0) FROM billing_usage "
                            "WHERE account_id >= %s AND account_id < %s", run_range(self.run_id))[0][0])

    def target(self) -> int:
        return self._target

    def check(self, pg: Pg, bootstrap: str, dlq_start, with_dlq: bool) -> Check:
        c = Check()
        got = {(r[0], int(r[1])): r[2:] for r in pg.query(
            "SELECT account_id, (extract(epoch from hour_start) * 1000)::bigint, turns, tokens_in, tokens_out, "
            "tool_invocations, estimated_cost_usd FROM billing_usage WHERE account_id >= %s AND account_id < %s",
            run_range(self.run_id))}
        for k, w in self.want.items():
            g = got.get(k)
            if g is None:
                c.lost += w[0] + w[3]
                continue
            n_got, n_want = g[0] + g[3], w[0] + w[3]
            c.lost += max(0, n_want - n_got)
            c.duplicated += max(0, n_got - n_want)
            if n_got == n_want and (tuple(g[:4]) != tuple(w[:4]) or abs(float(g[4]) - w[4]) > 1e-5):
                c.wrong += 1
        c.wrong += len(set(got) - set(self.want))
        c.details["billing_usage"] = {"keys": len(self.want), "rows": len(got), "items": self._target}
        if with_dlq:
            for topic, recs in self.produced.items():
                pos = self.positions[topic]
                bad = {pos[i] for i, rec in enumerate(recs) if rec.kind == "malformed"}
                if not bad:
                    continue
                found = dead_letters_at(topic, bootstrap, dlq_start[topic], bad)
                c.dlq_missing += len(bad - set(found))
                c.details[f"dlq {topic}"] = {"malformed": len(bad), "missing": len(bad - set(found))}
        return c


class FrontendCell:
    """The frontend pipeline: interactions (70 %), session summaries and widget measurements (15 % each) of 200
    sessions per cell, every 6th record produced twice, malformed ones on every topic; frontend_analytics rows
    (redacted, enriched: every column), frontend_session_engagement per session (events, duration, funnel stage)
    and the three topics' dead letters, exact. Progress is counted in frontend_analytics rows."""

    pipeline = "frontend"
    topics = (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET)
    job_args = ("--session_gap_seconds=600", "--allowed_lateness_seconds=600", "--early_firing_seconds=2",
                "--health_period_seconds=0")

    def __init__(self, run_id: str, events: int, start_ms: int, seed: int):
        from workloads.expected import frontend_expected
        from workloads.generator import FrontendSessionWorkload, FrontendWorkload, WidgetPerformanceWorkload

        self.run_id = run_id
        n_session = n_widget = max(1, events * 15 // 100)
        parts = [(FrontendWorkload, events - n_session - n_widget), (FrontendSessionWorkload, n_session),
                 (WidgetPerformanceWorkload, n_widget)]
        self.produced: Dict[str, List[ProducedRecord]] = {}
        for i, (cls, n) in enumerate(parts):
            w = cls(seed=seed + i, run_id=run_id, start_ms=start_ms, sessions=200, pii_rate=0.2,
                    malformed_rate=0.04).generate(n)
            recs: List[ProducedRecord] = []
            for j, r in enumerate(w.records):
                recs.append(r)
                if r.kind == "valid" and j % 6 == 0:
                    recs.append(ProducedRecord(r.key, r.value, r.timestamp_ms, "duplicate"))
            self.produced[cls.topic] = recs
        self.positions: Dict[str, List[Tuple[int, int]]] = {}
        rows, sessions = frontend_expected(self.produced)
        self.want_rows = {k: json.loads(json.dumps(row, default=str)) for k, row in rows.items()}
        self.want_engagement = {sid: (s["events"], s["duration_ms"], s["furthest_stage"], s["first_ms"], s["last_ms"])
                                for sid, s in sessions.items()}

    end_ms = KpiCell.end_ms
    records = KpiCell.records

    def landed(self, pg: Pg) -> int:
        return pg.query("SELECT count(*) FROM frontend_analytics WHERE session_id >= %s AND session_id < %s",
                        run_range(self.run_id))[0][0]

    def target(self) -> int:
        return len(self.want_rows)

    def check(self, pg: Pg, bootstrap: str, dlq_start, with_dlq: bool) -> Check:
        from transforms.rows import FRONTEND_COLUMNS

        c = Check()
        cols = ", ".join(f'"{col}"' for col in FRONTEND_COLUMNS)
        rows = pg.query(f"SELECT count(*) OVER (PARTITION BY event_id), to_jsonb(t) FROM (SELECT {cols} "
                        "FROM frontend_analytics WHERE session_id >= %s AND session_id < %s) t", run_range(self.run_id))
        got = {r[1]["event_id"]: r[1] for r in rows}
        c.duplicated += len(rows) - len(got)
        missing = set(self.want_rows) - set(got)
        c.lost += len(missing)

        def same(g: dict, w: dict) -> bool:
            return all(_same_value(g.get(k), w.get(k)) for k in FRONTEND_COLUMNS)

        wrong = [k for k, w in self.want_rows.items() if k in got and not same(got[k], w)]
        c.wrong += len(wrong) + len(set(got) - set(self.want_rows))
        c.details["frontend_analytics"] = {"expected": len(self.want_rows), "rows": len(rows),
                                           "missing": len(missing), "e.g.": sorted(missing)[:3],
                                           "wrong": len(wrong), "wrong e.g.": wrong[:2]}
        eng = {r[0]: (r[1], r[2], r[3], int(r[4].timestamp() * 1000), int(r[5].timestamp() * 1000)) for r in pg.query(
            "SELECT session_id, events, duration_ms, furthest_stage, started_at, ended_at "
            "FROM frontend_session_engagement WHERE session_id >= %s AND session_id < %s",
            run_range(self.run_id))}
        short = over = odd = 0
        for sid, w in self.want_engagement.items():
            g = eng.get(sid)
            if g == w:
                continue
            if g is None or g[0] < w[0]:
                short += 1
            elif g[0] > w[0]:
                over += 1
            else:
                odd += 1
        c.lost += short
        c.duplicated += over
        c.wrong += odd + len(set(eng) - set(self.want_engagement))
        c.details["frontend_session_engagement"] = {"sessions": len(self.want_engagement), "short_or_missing": short,
                                                    "counted_twice": over, "other": odd}
        if with_dlq:
            check_dead_letters(c, self.produced, self.positions, bootstrap, dlq_start)
        return c


class ArchiveCell:
    """The archive pipeline: turns (80 %) and tool calls (20 %) with duplicates and malformed records (archived raw
    as well: the archive validates nothing), hours of event time; every produced record in exactly one Parquet
    object under the cell's job prefix, in its topic and event-time hour, payload byte for byte, and none of them
    an archive dead letter. A record in two objects (or twice in one) is a duplicate: the archive's replay rule
    is that a replay rewrites the same object (deterministic names), not a new one. Progress is counted in
    archived records (they land an hour at a time, when the watermark passes the hour)."""

    pipeline = "archive"
    topics = tuple(t.name for t in topics.TOPICS)  # the archive reads every topic
    # idle after 5 s: the archive reads every topic, and until its quiet partitions go idle no hour closes (with
    # the default 60 s the whole cell was read first and every hour landed at once, after any fault)
    job_args = ("--archive_late_firing_delay_seconds=1", "--archive_allowed_lateness_seconds=86400",
                "--idle_partition_timeout_seconds=5", "--health_period_seconds=0")

    @staticmethod
    def job_extra(job: "Job") -> Tuple[str, ...]:
        return (f"--archive_prefix={ArchiveCell.prefix_of(job)}",)

    @staticmethod
    def prefix_of(job: "Job") -> str:
        return f"fault-matrix/{job.matrix_id}/"

    def __init__(self, run_id: str, events: int, start_ms: int, seed: int):
        n_tools = max(1, events // 5)
        self.run_id = run_id
        turns = TurnWorkload(seed=seed, run_id=run_id, start_ms=start_ms, sessions=200).generate(events - n_tools)
        tools = ToolWorkload(seed=seed + 1, run_id=run_id, start_ms=start_ms + 1000, sessions=200,
                             malformed_rate=0.05).generate(n_tools)
        self.produced = {topics.TURNS: turns.records, topics.TOOLS: tools.records}
        self.positions: Dict[str, List[Tuple[int, int]]] = {}
        self.prefix = ""
        self._objects: Dict[str, Tuple[str, list]] = {}  # key -> (etag, [(topic, partition, offset, row)])
        self._lock = threading.Lock()

    end_ms = KpiCell.end_ms
    records = KpiCell.records

    def bind(self, job: "Job") -> None:
        self.prefix = self.prefix_of(job)

    def _rows(self) -> Dict[str, list]:
        """Every archived row under the prefix, per object (each object read once per ETag)."""
        import io

        import pyarrow.parquet as pq
        from io_connectors.clients import s3_client
        from io_connectors.settings import SpacesSettings

        spaces = SpacesSettings.from_env()
        client = s3_client(spaces, max_attempts=2, connect_timeout=2, read_timeout=10)
        listed: Dict[str, str] = {}
        for topic in self.produced:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=spaces.bucket,
                                                                         Prefix=f"{self.prefix}{topic}/"):
                listed.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
        with self._lock:
            for key, etag in listed.items():
                if self._objects.get(key, ("",))[0] != etag:
                    body = client.get_object(Bucket=spaces.bucket, Key=key)["Body"].read()
                    t = pq.read_table(io.BytesIO(body), columns=["topic", "partition", "offset", "payload",
                                                                 "event_time"])
                    self._objects[key] = (etag, [(r["topic"], r["partition"], r["offset"], r)
                                                 for r in t.to_pylist()])
            return {k: v[1] for k, v in self._objects.items() if k in listed}

    def _expected(self) -> Dict[Tuple[str, int, int], ProducedRecord]:
        return {(t, *self.positions[t][i]): rec for t, recs in self.produced.items() for i, rec in enumerate(recs)}

    def landed(self, pg: Pg) -> int:
        want = self._expected()
        return len({(t, p, o) for rows in self._rows().values() for t, p, o, _ in rows if (t, p, o) in want})

    def target(self) -> int:
        return self.records

    def check(self, pg: Pg, bootstrap: str, dlq_start, with_dlq: bool) -> Check:
        from datetime import datetime, timezone

        c = Check()
        want = self._expected()
        seen: Dict[Tuple[str, int, int], List[Tuple[str, dict]]] = {}
        for key, rows in self._rows().items():
            for t, p, o, row in rows:
                if (t, p, o) in want:
                    seen.setdefault((t, p, o), []).append((key, row))
        c.lost = len(set(want) - set(seen))
        c.duplicated = sum(len(v) - 1 for v in seen.values())
        wrong = []
        for pos, hits in seen.items():
            rec = want[pos]
            hour = datetime.fromtimestamp(rec.timestamp_ms / 1000, tz=timezone.utc).strftime("date=%Y-%m-%d/hour=%H/")
            for key, row in hits:
                if (row["payload"] != rec.value or int(row["event_time"].timestamp() * 1000) != rec.timestamp_ms
                        or not key.startswith(f"{self.prefix}{pos[0]}/{hour}")):
                    wrong.append((pos, key))
        c.wrong = len(wrong)
        c.details["archive"] = {"records": len(want), "archived": len(seen), "objects": len(self._objects),
                                "in_more_than_one_place": sum(1 for v in seen.values() if len(v) > 1),
                                "wrong e.g.": wrong[:2]}
        if with_dlq:  # nothing the archive read may become one of its dead letters
            for topic in self.produced:
                mine = set(self.positions[topic])
                found = dead_letters_at(topic, bootstrap, dlq_start[topic], mine)
                c.wrong += len(found)
                c.details[f"dlq {topic}"] = {"archived records dead-lettered": len(found)}
        return c

    def cleanup(self) -> None:
        from io_connectors.clients import s3_client
        from io_connectors.settings import SpacesSettings

        spaces = SpacesSettings.from_env()
        client = s3_client(spaces)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=spaces.bucket, Prefix=self.prefix):
            for o in page.get("Contents", []):
                client.delete_object(Bucket=spaces.bucket, Key=o["Key"])


class LeadsCell:
    """The leads pipeline: Marketo lead deltas of the cell's own lead ids (about 4 per lead, out of order in event
    time, malformed ones mixed in, the newest delta of some leads replayed at the end); marketo_leads holds
    exactly one row per lead, from its newest delta, scored (every non-PII column compared) and the DLQ every
    malformed delta. Progress is counted in leads whose row holds their newest delta."""

    pipeline = "leads"
    topics = (topics.LEADS,)
    job_args = ("--health_period_seconds=0",)  # the first cell's deltas are read in seconds: watch at once

    def __init__(self, run_id: str, events: int, start_ms: int, seed: int):
        import random

        from workloads.generator import LeadWorkload

        self.run_id = run_id
        n_leads = max(1, events // 4)
        # lead ids of this cell only (marketo_leads.lead_id is the key; cells and e2e runs must not share leads)
        self.base = random.Random(run_id).randrange(10**8, 2 * 10**9 - 10**6)  # marketo_leads.lead_id: INTEGER
        work = LeadWorkload(seed=seed, run_id=run_id, start_ms=start_ms, malformed_rate=0.04).generate(events)
        rng = random.Random(seed)
        recs: List[ProducedRecord] = []
        self.newest: Dict[int, dict] = {}
        for r in work.records:
            if r.kind == "valid":
                ev = json.loads(r.value)
                ev["lead_id"] = self.base + rng.randrange(n_leads)
                r = ProducedRecord(str(ev["lead_id"]).encode(), json.dumps(ev).encode(), r.timestamp_ms, "valid")
                old = self.newest.get(ev["lead_id"])
                if old is None or ev["timestamp"] > old["timestamp"]:
                    self.newest[ev["lead_id"]] = ev
            recs.append(r)
        rng.shuffle(recs)  # deltas of a lead out of event-time order
        newest_values = {json.dumps(ev) for ev in list(self.newest.values())[:50]}
        recs += [r for r in recs if r.kind == "valid" and r.value.decode() in newest_values]  # replays
        self.produced = {topics.LEADS: recs}
        self.positions: Dict[str, List[Tuple[int, int]]] = {}
        self._want: Optional[Dict[int, tuple]] = None

    end_ms = KpiCell.end_ms
    records = KpiCell.records

    def _range(self) -> Tuple[int, int]:
        return self.base, (max(self.newest) if self.newest else self.base)

    def landed(self, pg: Pg) -> int:
        lo, hi = self._range()
        got = dict(pg.query("SELECT lead_id, source_ts_ms FROM marketo_leads WHERE lead_id BETWEEN %s AND %s",
                            (lo, hi)))
        return sum(1 for k, ev in self.newest.items() if got.get(k) == ev["timestamp"])

    def target(self) -> int:
        return len(self.newest)

    def want(self) -> Dict[int, tuple]:
        """Per lead the row's non-PII columns, from the same pure functions the pipeline applies."""
        if self._want is None:
            from events.contracts import MarketoLeadDelta
            from transforms.field_crypto import load_key_ring
            from transforms.pii import PiiPolicy, Redactor, load_hmac_key
            from transforms.rows import lead_to_row
            from transforms.scoring import Scored, score_lead

            redactor = Redactor(PiiPolicy.load(), load_hmac_key(), load_key_ring())
            self._want = {}
            for lead_id, ev in self.newest.items():
                lead, _ = redactor.event(MarketoLeadDelta.model_validate(ev))
                row = lead_to_row(Scored(lead, score_lead(lead)))
                self._want[lead_id] = tuple(row[c] for c in LEAD_CHECKED)
        return self._want

    def check(self, pg: Pg, bootstrap: str, dlq_start, with_dlq: bool) -> Check:
        c = Check()
        lo, hi = self._range()
        cols = ", ".join(LEAD_CHECKED)
        got = {r[0]: r[1:] for r in pg.query(f"SELECT lead_id, {cols} FROM marketo_leads "
                                             "WHERE lead_id BETWEEN %s AND %s", (lo, hi))}
        want = self.want()
        missing = set(want) - set(got)
        stale = [k for k in want if k in got and got[k][-1] < want[k][-1]]  # an older delta won
        wrong = [k for k in want if k in got and k not in stale and tuple(got[k]) != want[k]]
        c.lost += len(missing)
        c.wrong += len(stale) + len(wrong) + len(set(got) - set(want))
        c.details["marketo_leads"] = {"leads": len(want), "rows": len(got), "missing": len(missing),
                                      "stale": len(stale), "wrong": len(wrong),
                                      "e.g.": [(k, got[k], want[k]) for k in (stale + wrong)[:2]]}
        if with_dlq:
            check_dead_letters(c, self.produced, self.positions, bootstrap, dlq_start)
        return c


# what LeadsCell compares: every column the pipeline computes, except the PII ones (tokens with random nonces);
# source_ts_ms last (the newest delta's event time: a smaller one means an older delta won)
LEAD_CHECKED = ("company", "lead_source", "email_domain", "lead_quality_score", "engagement_level",
                "conversion_probability", "recommended_action", "scorer_version", "source_ts_ms")


def _same_value(got, want) -> bool:
    """A column read back as JSON (to_jsonb) against the row the pipeline built (JSON-normalised): timestamps
    come back as ISO strings, numerics as numbers."""
    if got == want:
        return True
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return abs(float(got) - float(want)) <= 1e-6 * max(1.0, abs(float(want)))
    if isinstance(got, str) and isinstance(want, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(got) == datetime.fromisoformat(want)
        except ValueError:
            return False
    return False


PIPELINES = {"kpi": KpiCell, "billing": BillingCell, "frontend": FrontendCell, "archive": ArchiveCell,
             "leads": LeadsCell}
# Every pipeline gets a job (and consumer group) per cell: a cell's records are hours older than the time at
# which the previous cell's partitions went idle, and a caught-up partition's CreateTime watermark moves to the
# present (after a record, and since io_connectors/kafka.py's idle-aware read also after
# --idle_partition_timeout_seconds without one), so a shared job would see every later cell's records as too
# late. (The KPI pipeline shared one job until 2026-12-04: text.agent.session.updated, which no cell writes,
# held its watermark at the minimum for the whole matrix, so no session ever went final.)
JOB_PER_CELL = {"kpi", "billing", "frontend", "archive"}  # leads has no windows: one job


# ---------------------------------------------------------------------------------------------------------
# the job and a cell


class Job:
    """One README-command job per pipeline for the matrix; submitted again if it is not RUNNING."""

    def __init__(self, pipeline: str, matrix_id: str, flags: Tuple[str, ...] = ()):
        self.pipeline, self.matrix_id = pipeline, matrix_id  # matrix_id: the matrix's id, or `<id>c<cell>`
        self.flags = tuple(flags)  # extra job flags after the cell's own (--job-flags: A/B of job settings)
        # an e2e group: the pipeline principal may use `e2e-<pipeline>-*`, the test workload commits its start
        self.group = f"e2e-{pipeline}-fault-{matrix_id}"
        self.job_name = f"iheardai-{pipeline}-fault-{matrix_id}"
        self.submits = 0
        self.prepared = False
        self._ctx: Optional[readme_pipeline] = None

    def running(self) -> bool:
        return any(j["state"] == "RUNNING" for j in jobs_by_name(self.job_name))

    def prepare(self, bootstrap: str) -> None:
        """The group's offsets at the topics' end, before the first submission (what is produced next is read)."""
        if not self.prepared:
            commit_group_at_end(self.group, PIPELINES[self.pipeline].topics, bootstrap)
            self.prepared = True

    def ensure(self, bootstrap: str) -> None:
        if self.running():
            return
        cancel_by_name(self.job_name)
        cls = PIPELINES[self.pipeline]
        if self.submits == 0:
            self.prepare(bootstrap)
        extra = cls.job_extra(self) if hasattr(cls, "job_extra") else ()
        self._ctx = readme_pipeline(self.pipeline, self.matrix_id, None, *cls.job_args, *extra, *self.flags,
                                    group=self.group,
                                    job_name=self.job_name)
        log(f"submitting {' '.join(self._ctx.cmd[1:])}")
        self._ctx.__enter__()
        self.submits += 1

    def jid(self) -> Optional[str]:
        return next((j["jid"] for j in jobs_by_name(self.job_name) if j["state"] == "RUNNING"), None)

    def restarts(self) -> int:
        jid = self.jid()
        if not jid:
            return -1
        # numRestarts is missing until the JobManager's metric fetcher has run for the job (up to 10 s, and again
        # after a restart): then count the failures in its exception history (each one restarted the job)
        m = flink_get(f"/jobs/{jid}/metrics?get=numRestarts")
        n = next((int(x["value"]) for x in m if x.get("id") == "numRestarts"), None)
        if n is None:
            n = len(flink_get(f"/jobs/{jid}/exceptions").get("exceptionHistory", {}).get("entries", []))
        return n

    def cancel(self) -> None:
        cancel_by_name(self.job_name)


@dataclass
class Result:
    pipeline: str
    fault: str
    point: str
    events: int
    records: int
    run_id: str
    lost: Optional[int] = None
    duplicated: Optional[int] = None
    wrong: Optional[int] = None
    dlq_missing: Optional[int] = None
    resume_s: Optional[float] = None
    stall_s: Optional[float] = None
    fault_s: Optional[float] = None
    landed_at_fault: Optional[int] = None
    target: Optional[int] = None  # what "landed" counts up to (rows, items, leads or records: the cell's unit)
    restarts: Optional[int] = None
    finished_s: Optional[float] = None
    error: Optional[str] = None
    details: Dict[str, object] = field(default_factory=dict)


class _Sampler(threading.Thread):
    """Samples the landed row count every 0.25 s: (time, count) pairs for the resume time."""

    def __init__(self, cell, pg: Pg):
        super().__init__(daemon=True)
        self.cell, self.pg, self.samples = cell, pg, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.cell.landed(self.pg)))
            except Exception:  # noqa: BLE001 - Postgres may be the fault
                pass
            self.stop.wait(0.25)


def resume_time(samples: List[Tuple[float, int]], t0: float) -> Tuple[Optional[float], Optional[float]]:
    """(resume_s, stall_s): the longest interval without a new row that overlaps the fault (from the last
    increase before `t0` on), as the time from `t0` to the row that ended it, and its length. Rows that kept
    landing through the fault (no stall of 1 s or more): (0.0, longest gap)."""
    last_t, last_n = None, None
    best: Tuple[float, float] = (0.0, 0.0)  # (gap, end time)
    for t, n in samples:
        if last_n is None:
            last_t, last_n = t, n
            continue
        if n > last_n:
            if t > t0 and t - last_t > best[0]:
                best = (t - last_t, t)
            last_t, last_n = t, n
    if last_n is None:
        return None, None
    gap, end = best
    if gap < 1.0:
        return 0.0, round(gap, 1)
    return round(end - t0, 1), round(gap, 1)


def run_cell(job: Job, pipeline: str, fault: str, point: str, events: int, start_ms: int, seed: int,
             settle_timeout_s: float, stall_s: float) -> Tuple[Result, int]:
    bootstrap = kafka_config()["bootstrap.servers"]
    run_id = f"fm{uuid.uuid4().hex[:8]}"
    cell = PIPELINES[pipeline](run_id, events, start_ms, seed)
    if hasattr(cell, "bind"):
        cell.bind(job)
    res = Result(pipeline, fault, point, events, cell.records, run_id)
    pg = Pg()
    sampler: Optional[_Sampler] = None
    try:
        # A new job starts after its cell's records are produced, on a group committed at the topics' end
        # before: it reads them as a backlog. Started first, its input partitions would have no record for a
        # while, and a partition with none since the job started goes idle (its event time jumps to the clock)
        # after --idle_partition_timeout_seconds: the cell's records, hours old, would then all be late.
        fresh = job.submits == 0
        if fresh:
            job.prepare(bootstrap)
        else:
            job.ensure(bootstrap)
        dlq_start = {t: end_offsets(topics.dlq_topic(t), bootstrap) for t in cell.produced}
        from workloads.produce import produce

        t_prod = time.monotonic()
        for t, recs in cell.produced.items():
            cell.positions[t] = produce(recs, t, bootstrap, kafka_config(bootstrap))
        log(f"{pipeline} x {fault} x {point}: {cell.records} records produced in {time.monotonic() - t_prod:.1f}s "
            f"(run {run_id}, {cell.target()} distinct valid rows expected)")
        if fresh:
            job.ensure(bootstrap)
        restarts0 = job.restarts()
        res.target = cell.target()
        threshold = int(cell.target() * POINTS[point])
        sampler = _Sampler(cell, Pg())
        sampler.start()
        deadline = time.monotonic() + settle_timeout_s
        while cell.landed(pg) < threshold:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{threshold} rows not landed before the fault")
            time.sleep(0.2)
        res.landed_at_fault = cell.landed(pg)
        log(f"  injecting {fault} at {res.landed_at_fault}/{cell.target()} rows")
        fault_at = time.time()
        t0, t1 = inject(fault)
        res.fault_s = round(t1 - t0, 1)
        log(f"  fault over after {res.fault_s}s")
        # The job must be RUNNING again (a restarted job replays from its checkpoint: what it writes then is what
        # could duplicate) and be watched for a while before "exact" counts, even if every row landed before the
        # fault.
        try:
            _wait(job.running, 240, "the job to run again after the fault", interval_s=1.0)
        except RuntimeError as e:
            res.error = str(e)
        running_at = time.monotonic()
        # finish: until exact, or the rows stop moving for stall_s, or the deadline
        last_n, last_move, all_rows_at = -1, time.monotonic(), None
        chk = Check()
        while time.monotonic() < deadline:
            n = cell.landed(pg)
            if n != last_n:
                last_n, last_move = n, time.monotonic()
            if n >= cell.target():
                all_rows_at = all_rows_at or time.monotonic()
                chk = cell.check(pg, bootstrap, dlq_start, with_dlq=False)
                if chk.exact and time.monotonic() - running_at >= AFTER_RECOVERY_S:
                    break
                if time.monotonic() - all_rows_at > stall_s:
                    break  # every row there but the totals/state not matching for stall_s
            elif time.monotonic() - last_move > stall_s:
                break
            time.sleep(3)
        # the dead letters (and a last look at everything) once the rows are done
        deadline_dlq = time.monotonic() + 60
        while True:
            chk = cell.check(pg, bootstrap, dlq_start, with_dlq=True)
            if chk.exact or time.monotonic() > deadline_dlq:
                break
            time.sleep(5)
        sampler.stop.set()
        res.resume_s, res.stall_s = resume_time(sampler.samples, t0)
        res.finished_s = round(time.monotonic() - t0, 1)
        res.lost, res.duplicated, res.wrong, res.dlq_missing = chk.lost, chk.duplicated, chk.wrong, chk.dlq_missing
        res.details = {**chk.details, "fault_at": round(fault_at, 3), "job_name": job.job_name}
        if fault == "tm_kill":  # where the resume time went (reliability/resume_phases.py)
            from reliability.resume_phases import phases

            res.details["phases"] = phases(job.job_name, fault_at, res.resume_s)
            log(f"  phases (s after the kill): {res.details['phases']}")
        r1 = job.restarts()
        res.restarts = (r1 - restarts0) if r1 >= 0 and restarts0 >= 0 else None
        if not job.running():
            res.error = (res.error + "; " if res.error else "") + "job not RUNNING after the cell"
    except Exception as e:  # noqa: BLE001 - a cell that fails is reported, the matrix goes on
        if sampler is not None:
            sampler.stop.set()
        res.error = f"{type(e).__name__}: {e}"[:2000]
        log(f"  cell failed: {res.error}")
    finally:
        if fault in SERVICE:  # whatever happened, the service is up again
            try:
                devstack("up", SERVICE[fault])
            except Exception as e:  # noqa: BLE001
                res.error = (res.error or "") + f"; devstack up {SERVICE[fault]}: {e}"
        if hasattr(cell, "cleanup"):
            try:
                cell.cleanup()
            except Exception as e:  # noqa: BLE001 - leftovers under a cell's own prefix harm no other cell
                log(f"  cleanup failed: {e}")
    log(f"  -> lost {res.lost}, duplicated {res.duplicated}, wrong {res.wrong}, dlq missing {res.dlq_missing}, "
        f"resume {res.resume_s}s (stall {res.stall_s}s), restarts {res.restarts}" + (f", ERROR {res.error}" if res.error else ""))
    return res, cell.end_ms


def table(results: List[Result]) -> str:
    head = ("pipeline", "fault", "point", "events", "lost", "duplicated", "wrong", "dlq missing", "resume s",
            "restarts")
    rows = [head] + [(r.pipeline, r.fault, r.point, str(r.events), *(
        "-" if v is None else str(v) for v in (r.lost, r.duplicated, r.wrong, r.dlq_missing, r.resume_s,
                                               r.restarts))) for r in results]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "---|" * len(head))
    errors = [f"- {r.pipeline} x {r.fault} x {r.point}: {r.error}" for r in results if r.error]
    return "\n".join(lines + errors)


def run_matrix(pipelines: List[str], faults: List[str], points: List[str], events: int,
               out: Optional[str] = None, restart_tm_every: int = 10,
               only: Optional[List[tuple]] = None, job_flags: Tuple[str, ...] = ()) -> List[Result]:
    """Every (pipeline, fault, point) of the product, in that order, or only the (fault, point) pairs of `only`
    (CI: several faults on one leads job)."""
    matrix_id = uuid.uuid4().hex[:6]
    results: List[Result] = []
    # event times: each cell after the previous one's (the watermark only moves forward), all in the past
    cells = [(p, f, pt) for p in pipelines for f in faults if f in APPLIES[p] for pt in points
             if only is None or (f, pt) in only]
    span_ms = int(events * 1.2 * 1000)  # TurnWorkload: ~1 s of event time per turn
    start_ms = int(time.time() * 1000) - (len(cells) + 1) * span_ms
    skipped = [(p, f) for p in pipelines for f in faults if f not in APPLIES[p]]
    if skipped:
        log(f"not applicable, skipped: {skipped}")
    try:
        for p in pipelines:
            if p not in PIPELINES:
                log(f"{p}: not implemented in the matrix yet")
                results += [Result(p, f, pt, events, 0, "-", error="pipeline not implemented in the matrix")
                            for f in faults if f in APPLIES[p] for pt in points]
                continue
            job = Job(p, matrix_id, job_flags)
            try:
                for i, (pp, f, pt) in enumerate(c for c in cells if c[0] == p):
                    if p in JOB_PER_CELL:
                        job.cancel()
                        job = Job(p, f"{matrix_id}c{i}", job_flags)
                    res, end_ms = run_cell(job, p, f, pt, events, start_ms, seed=1000 + len(results),
                                           settle_timeout_s=max(600.0, events / 50), stall_s=90)
                    results.append(res)
                    start_ms = end_ms + 60_000
                    if out:
                        _write(out, results, pipelines, faults, points, events, job_flags)
            finally:
                job.cancel()
    finally:
        if out:
            _write(out, results, pipelines, faults, points, events, job_flags)
    return results


def _write(out: str, results, pipelines, faults, points, events, job_flags=()) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pipelines": pipelines,
                   "faults": faults, "points": points, "events": events, "job_flags": list(job_flags),
                   "cells": [asdict(r) for r in results]}, f, indent=1, default=str)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipelines", default="kpi", help="comma-separated: " + ",".join(APPLIES))
    ap.add_argument("--faults", default=",".join(ALL_FAULTS), help="comma-separated: " + ",".join(ALL_FAULTS))
    ap.add_argument("--points", default="early,middle,late", help="comma-separated: " + ",".join(POINTS))
    ap.add_argument("--events", type=int, default=100_000, help="valid events per cell")
    ap.add_argument("--job-flags", default="", help="extra flags for every job, space-separated (A/B of job "
                    "settings, e.g. '--checkpointing_interval=5000')")
    ap.add_argument("--out", default=None, help="JSON file (default reliability/results/fault_matrix-<time>.json)")
    a = ap.parse_args(argv)
    pipelines, faults, points = (a.pipelines.split(","), a.faults.split(","), a.points.split(","))
    for name, given, known in (("pipeline", pipelines, APPLIES), ("fault", faults, ALL_FAULTS),
                               ("point", points, POINTS)):
        bad = [g for g in given if g not in known]
        if bad:
            ap.error(f"unknown {name} {bad}")
    from beam_pipelines.options import _export_local_secrets

    _export_local_secrets()
    out = a.out or str(REPO / "reliability" / "results" / f"fault_matrix-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
    results = run_matrix(pipelines, faults, points, a.events, out, job_flags=tuple(a.job_flags.split()))
    print(table(results))
    print(f"JSON: {out}")
    return 0 if all(r.error is None and r.lost == 0 and r.duplicated == 0 and r.wrong == 0 and r.dlq_missing == 0
                    for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
