"""What the status service knows, collected from the real services in the background.

Every `interval_s` one `Collector` pass builds a `Snapshot`:

- health: Kafka, Postgres, Redis, S3 and the Flink REST API, each answered or not, with its latency;
- jobs: every Flink job, each with the pipeline its name names (the launcher's default
  `iheardai-<pipeline>`), with state, uptime, restarts (Flink's `numRestarts`), the last completed
  checkpoint, failed checkpoints and the last exception;
- consumer lag of every consumer group (the pipelines commit on checkpoints, so lag is visible
  outside Flink), in messages and in seconds (the age of the oldest record not yet committed, read from the
  record at the committed offset);
- topics: messages per topic (sum of end offsets) and dead letters of the last hour per `.dlq` topic
  (offsets for the time an hour ago);
- sinks: the last time each Postgres sink table was written (its insert/update counters in
  pg_stat_user_tables changed; seeded from max(updated_at) at start), the newest Parquet object per topic;
- the Marketo extractor's last run (`marketo_sync_state`, written by the extractor at the end of each run).

A check that fails is recorded with its error; a pass never raises.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

PIPELINES = ("kpi", "frontend", "billing", "archive", "leads")
STATUS_GROUP = "iheardai-status-service"  # this service's own (it commits nothing)
# sink table -> the topics whose traffic it follows (for freshness alerts and the status page)
SINK_TABLES = {
    "agent_turns": ("text.agent.turn.completed",),
    "session_kpis": ("text.agent.turn.completed", "agent.tool.invoked"),
    "frontend_analytics": ("frontend.user.interaction", "frontend.session.analytics", "frontend.widget.performance"),
    "frontend_session_engagement": ("frontend.user.interaction", "frontend.session.analytics",
                                    "frontend.widget.performance"),
    "billing_usage": ("text.agent.turn.completed", "agent.tool.invoked"),
    "marketo_leads": ("marketo.leads.delta",),
}
WRITE_TIME_COLUMN = {t: "updated_at" for t in SINK_TABLES if t != "marketo_leads"}  # marketo's is the lead's
MARKETO_RUN_STATE = "marketo.leads.last_run"
RESTART_WINDOW_S = 600
THROUGHPUT_WINDOW_S = 60.0  # a job with a restart this recent counts as restarting


@dataclass
class Check:
    ok: bool
    latency_s: float
    error: Optional[str] = None


@dataclass
class Job:
    pipeline: Optional[str]  # None: a job of no pipeline (listed, not in the pipeline metrics)
    job_id: str
    name: str
    state: str
    start_ms: int
    uptime_s: float
    restarts: int = 0
    restarting: bool = False
    last_checkpoint_ms: Optional[int] = None
    failed_checkpoints: int = 0
    completed_checkpoints: int = 0
    last_exception: Optional[str] = None
    last_exception_ms: Optional[int] = None


@dataclass
class Lag:
    group: str
    topic: str
    partition: int
    messages: int
    seconds: float


@dataclass
class Snapshot:
    taken_at: float = 0.0
    health: Dict[str, Check] = field(default_factory=dict)
    jobs: List[Job] = field(default_factory=list)
    lag: List[Lag] = field(default_factory=list)
    topic_messages: Dict[str, int] = field(default_factory=dict)
    dlq_last_hour: Dict[str, int] = field(default_factory=dict)
    consumed_per_s: Dict[str, float] = field(default_factory=dict)  # group -> committed records/s (~1 min)
    sink_last_write: Dict[str, Optional[float]] = field(default_factory=dict)
    archive_last_write: Dict[str, Optional[float]] = field(default_factory=dict)
    marketo: Optional[Dict[str, Any]] = None
    errors: Dict[str, str] = field(default_factory=dict)  # collector part -> why it has no data this pass

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def pipeline_of(job_name: str) -> Optional[str]:
    """The pipeline a Flink job runs, from its name: the launcher's `iheardai-<pipeline>` and any name with a
    pipeline's name as a dash-separated word (`e2e-kpi-t1a2b3`); None for other jobs."""
    return next((word for word in job_name.split("-") if word in PIPELINES), None)


def trace_summary(stacktrace: str, limit: int = 4000) -> str:
    """A Flink exception without its Java frames (`at ...`, `... N more`): the exception, every `Caused by:`
    and the Python traceback inside, where the root cause of a Beam job is, within `limit` characters."""
    kept = [line for line in stacktrace.splitlines()
            if not re.match(r"\s+(at |\.\.\. \d+ (more|common frames omitted))", line)]
    return "\n".join(kept)[:limit]


def _timed(fn: Callable[[], Any]) -> Check:
    t0 = time.monotonic()
    try:
        fn()
        return Check(True, time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - a failed check is data
        return Check(False, time.monotonic() - t0, f"{type(e).__name__}: {str(e).strip()[:300]}")


class Collector:
    """Builds Snapshots; `start()` refreshes one every `interval_s` in a daemon thread."""

    def __init__(self, flink_url: str = "http://localhost:8081", interval_s: float = 5.0, timeout_s: float = 3.0,
                 archive_prefix: str = ""):
        self.flink_url = flink_url.rstrip("/")
        self.archive_prefix = archive_prefix
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.snapshot = Snapshot()
        self._row_counters: Dict[str, int] = {}
        self._committed_history: Dict[str, collections.deque] = {}
        # (topic, partition, offset) -> the record's timestamp: a record never changes, so each position is read
        # once; kept for the positions some group is still at
        self._record_ts: Dict[Tuple[str, int, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._admin = self._consumer = None

    # --- the loop ----------------------------------------------------------------------------------------
    def start(self) -> "Collector":
        self.refresh()
        threading.Thread(target=self._loop, name="status-collector", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep the last snapshot and try again next time
                log.exception("status collector pass failed")

    def refresh(self) -> Snapshot:
        snap = Snapshot(taken_at=time.time(), sink_last_write=dict(self.snapshot.sink_last_write),
                        archive_last_write=dict(self.snapshot.archive_last_write))
        snap.health = self.health()
        parts = (("jobs", self._jobs), ("kafka", self._kafka), ("sinks", self._sinks), ("archive", self._archive),
                 ("marketo", self._marketo))
        for name, part in parts:
            try:
                part(snap)
            except Exception as e:  # noqa: BLE001 - a part without data says why
                snap.errors[name] = f"{type(e).__name__}: {str(e).strip()[:300]}"
        with self._lock:
            self.snapshot = snap
        return snap

    # --- health ------------------------------------------------------------------------------------------
    def health(self) -> Dict[str, Check]:
        return {"kafka": _timed(self._kafka_ping), "postgres": _timed(self._pg_ping), "redis": _timed(self._redis_ping),
                "s3": _timed(self._s3_ping), "flink": _timed(lambda: self._flink("/overview"))}

    def _kafka_ping(self) -> None:
        self._kafka_admin().list_topics(timeout=self.timeout_s)

    def _pg_ping(self) -> None:
        with self._pg() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    def _redis_ping(self) -> None:
        from io_connectors.clients import redis_client

        client = redis_client(timeout_s=self.timeout_s)
        try:
            client.ping()
        finally:
            client.close()

    def _s3_ping(self) -> None:
        from io_connectors.settings import SpacesSettings

        s = SpacesSettings.from_env()
        self._s3().head_bucket(Bucket=s.bucket)

    # --- clients -----------------------------------------------------------------------------------------
    def _pg(self):
        import contextlib

        import psycopg2

        from io_connectors.settings import PostgresSettings

        conn = psycopg2.connect(**{**PostgresSettings.from_env().connect_kwargs(),
                                   "connect_timeout": max(1, int(self.timeout_s))})
        conn.autocommit = True
        return contextlib.closing(conn)

    def _s3(self):
        from io_connectors.clients import s3_client

        return s3_client(max_attempts=1, connect_timeout=self.timeout_s, read_timeout=self.timeout_s)

    def _kafka_admin(self):
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            from io_connectors.settings import KafkaSettings

            self._admin = AdminClient(KafkaSettings.from_env().librdkafka_config())
        return self._admin

    def _kafka_consumer(self):
        if self._consumer is None:
            from confluent_kafka import Consumer

            from io_connectors.settings import KafkaSettings

            self._consumer = Consumer({**KafkaSettings.from_env().librdkafka_config(),
                                       "group.id": STATUS_GROUP, "enable.auto.commit": False,
                                       "fetch.wait.max.ms": 10, "fetch.max.bytes": 1048576,
                                       "enable.partition.eof": False})
        return self._consumer

    def _flink(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.flink_url}{path}", timeout=self.timeout_s) as r:
            return json.load(r)

    # --- Flink jobs --------------------------------------------------------------------------------------
    def _jobs(self, snap: Snapshot) -> None:
        now_ms = time.time() * 1000
        for j in self._flink("/jobs/overview")["jobs"]:
            job = Job(pipeline_of(j["name"]), j["jid"], j["name"], j["state"], j["start-time"],
                      max(0.0, ((j.get("end-time") if j.get("end-time", -1) > 0 else now_ms) - j["start-time"]) / 1000))
            if j["state"] not in ("FINISHED", "CANCELED", "FAILED"):
                self._job_details(job, now_ms)
            snap.jobs.append(job)
        snap.jobs.sort(key=lambda j: (j.pipeline or "~", -j.start_ms))

    def _job_details(self, job: Job, now_ms: float) -> None:
        metrics = {m["id"]: m.get("value") for m in self._flink(f"/jobs/{job.job_id}/metrics?get=numRestarts")}
        job.restarts = int(float(metrics.get("numRestarts") or 0))
        cps = self._flink(f"/jobs/{job.job_id}/checkpoints")
        counts = cps.get("counts") or {}
        job.failed_checkpoints, job.completed_checkpoints = counts.get("failed", 0), counts.get("completed", 0)
        done = (cps.get("latest") or {}).get("completed")
        if done:
            job.last_checkpoint_ms = done.get("latest_ack_timestamp")
        exc = self._flink(f"/jobs/{job.job_id}/exceptions?maxExceptions=1")
        entries = (exc.get("exceptionHistory") or {}).get("entries") or []
        if entries:
            job.last_exception = trace_summary(entries[0].get("stacktrace") or entries[0].get("exceptionName") or "")
            job.last_exception_ms = entries[0].get("timestamp")
        recent = job.last_exception_ms is not None and now_ms - job.last_exception_ms < RESTART_WINDOW_S * 1000
        job.restarting = job.state in ("RESTARTING", "FAILING") or (job.restarts > 0 and recent)

    # --- Kafka -------------------------------------------------------------------------------------------
    def _kafka(self, snap: Snapshot) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        admin, consumer = self._kafka_admin(), self._kafka_consumer()
        md = admin.list_topics(timeout=self.timeout_s)
        ends: Dict[Tuple[str, int], int] = {}
        for topic, t in md.topics.items():
            if topic.startswith("__"):
                continue
            total = 0
            for p in t.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s, cached=False)
                ends[(topic, p)] = high
                total += high
            snap.topic_messages[topic] = total
            if topic.endswith(".dlq"):
                snap.dlq_last_hour[topic] = self._since(consumer, topic, t.partitions, ends)
        groups = admin.list_consumer_groups(request_timeout=self.timeout_s).result(timeout=self.timeout_s)
        names = sorted(g.group_id for g in groups.valid if g.group_id != STATUS_GROUP)
        committed: List[Tuple[str, str, int, int, int]] = []  # group, topic, partition, offset, behind
        # one request per group (the API takes one at a time), all in flight together
        futures = {n: admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(n)])[n] for n in names}
        for name, fut in futures.items():
            for tp in fut.result(timeout=self.timeout_s).topic_partitions:
                if tp.offset >= 0 and (tp.topic, tp.partition) in ends:
                    committed.append((name, tp.topic, tp.partition, tp.offset,
                                      max(0, ends[(tp.topic, tp.partition)] - tp.offset)))
        self._throughput(snap, committed)
        ages = self._record_ages(consumer, {(t, p, off) for _, t, p, off, behind in committed if behind})
        snap.lag = [Lag(g, t, p, behind, ages.get((t, p, off), 0.0) if behind else 0.0)
                    for g, t, p, off, behind in committed]

    def _since(self, consumer, topic: str, partitions, ends) -> int:
        from confluent_kafka import TopicPartition

        hour_ago_ms = int((time.time() - 3600) * 1000)
        found = consumer.offsets_for_times([TopicPartition(topic, p, hour_ago_ms) for p in partitions],
                                           timeout=self.timeout_s)
        return sum(ends[(topic, tp.partition)] - (tp.offset if tp.offset >= 0 else ends[(topic, tp.partition)])
                   for tp in found)

    def _throughput(self, snap: Snapshot, committed) -> None:
        """Records a group committed per second over the last minute or so (its pipeline's throughput: the
        pipelines commit on checkpoints, so shorter spans would only show the checkpoint cadence)."""
        now = time.time()
        totals: Dict[str, int] = {}
        for group, _t, _p, offset, _behind in committed:
            totals[group] = totals.get(group, 0) + offset
        for group, total in totals.items():
            history = self._committed_history.setdefault(group, collections.deque())
            history.append((now, total))
            while len(history) > 2 and now - history[1][0] >= THROUGHPUT_WINDOW_S:
                history.popleft()
            (t0, first), (t1, last) = history[0], history[-1]
            if t1 - t0 >= THROUGHPUT_WINDOW_S / 3:
                snap.consumed_per_s[group] = max(0.0, (last - first) / (t1 - t0))

    def _record_ages(self, consumer, positions) -> Dict[Tuple[str, int, int], float]:
        """Seconds since the (create-time) timestamp of the record at each (topic, partition, offset): how old
        each group's lag is. A partition can be assigned once at a time, so the positions are read in rounds:
        round k reads the k-th distinct offset of every partition, all partitions in one fetch."""
        from confluent_kafka import TopicPartition

        # A committed offset below the partition's log start (retention deleted those records) is read at the
        # log start, the oldest record there is: asked for as it was, the fetch is out of range and waits out the
        # deadline, and every later round (the other groups' positions) goes unread.
        low: Dict[Tuple[str, int], int] = {}
        for topic, partition, _ in positions:
            if (topic, partition) not in low:
                try:
                    low[(topic, partition)] = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=self.timeout_s, cached=False)[0]
                except Exception:  # noqa: BLE001 - unknown: ask for the offset as it is
                    low[(topic, partition)] = 0
        read_at = {pos: max(pos[2], low[(pos[0], pos[1])]) for pos in positions}
        # Positions read in an earlier pass are not read again: with the groups a busy cluster keeps (idle ones
        # included), reading them all in every pass ran out of the deadline before the newest positions.
        found = {(t, p, at): self._record_ts[(t, p, at)] for (t, p, _), at in read_at.items()
                 if (t, p, at) in self._record_ts}
        per_partition: Dict[Tuple[str, int], List[int]] = {}
        for (topic, partition, _), offset in read_at.items():
            if (topic, partition, offset) not in found:
                per_partition.setdefault((topic, partition), []).append(offset)
        rounds = max((len(set(v)) for v in per_partition.values()), default=0)
        deadline = time.monotonic() + 2 * self.timeout_s
        for k in range(rounds):
            if time.monotonic() >= deadline:
                break  # the rest is read in the next pass
            wanted = {(t, p): sorted(set(offs))[k] for (t, p), offs in per_partition.items() if k < len(set(offs))}
            consumer.assign([TopicPartition(t, p, off) for (t, p), off in wanted.items()])
            try:
                got = set()
                while len(got) < len(wanted) and time.monotonic() < deadline:
                    # asks for as many records as partitions are still unread: consume() returns once it has
                    # that many (500 waited out the 0.2 s timeout in every round: 30 rounds per pass at most)
                    for msg in consumer.consume(num_messages=len(wanted) - len(got), timeout=0.2):
                        key = (msg.topic(), msg.partition())
                        if msg.error() is None and key in wanted and key not in got:
                            got.add(key)
                            found[(key[0], key[1], wanted[key])] = msg.timestamp()[1]
            finally:
                consumer.unassign()
        self._record_ts = found
        now = time.time()
        return {pos: max(0.0, now - ts / 1000) for pos, at in read_at.items()
                for ts in (found.get((pos[0], pos[1], at)),) if ts and ts > 0}

    # --- sinks -------------------------------------------------------------------------------------------
    def _sinks(self, snap: Snapshot) -> None:
        with self._pg() as conn, conn.cursor() as cur:
            cur.execute("SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                        (list(SINK_TABLES),))
            counters = dict(cur.fetchall())
            now = time.time()
            for table in SINK_TABLES:
                count = counters.get(table)
                if count is None:
                    continue
                before = self._row_counters.get(table)
                self._row_counters[table] = count
                if before is None and table not in snap.sink_last_write:
                    snap.sink_last_write[table] = self._seed_write_time(cur, table)
                elif before is not None and count != before:
                    snap.sink_last_write[table] = now

    @staticmethod
    def _seed_write_time(cur, table: str) -> Optional[float]:
        column = WRITE_TIME_COLUMN.get(table)
        if column is None:
            return None
        cur.execute("SET statement_timeout = 2000")
        try:
            cur.execute(f"SELECT extract(epoch FROM max({column})) FROM {table}")  # names from SINK_TABLES only
            value = cur.fetchone()[0]
            return float(value) if value is not None else None
        finally:
            cur.execute("RESET statement_timeout")

    def _archive(self, snap: Snapshot) -> None:
        from events.topics import TOPICS
        from io_connectors.settings import SpacesSettings

        bucket = SpacesSettings.from_env().bucket
        s3 = self._s3()
        days = [time.strftime("%Y-%m-%d", time.gmtime(time.time() - d * 86400)) for d in (0, 1)]
        for t in TOPICS:
            newest = None
            for day in days:  # today's and yesterday's hours only: the listing stays small
                pages = s3.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=f"{self.archive_prefix}{t.name}/date={day}/")
                for page in pages:
                    for obj in page.get("Contents", []):
                        ts = obj["LastModified"].timestamp()
                        newest = ts if newest is None or ts > newest else newest
                if newest is not None:
                    break
            if newest is not None or t.name not in snap.archive_last_write:
                snap.archive_last_write[t.name] = newest

    def _marketo(self, snap: Snapshot) -> None:
        with self._pg() as conn, conn.cursor() as cur:
            cur.execute("SELECT state FROM marketo_sync_state WHERE name = %s", (MARKETO_RUN_STATE,))
            row = cur.fetchone()
            snap.marketo = row[0] if row else None
