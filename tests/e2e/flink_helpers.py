"""Helpers for end-to-end tests on the real Flink cluster: submit, find, wait, cancel, read topics."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

from io_connectors import settings
from io_connectors.settings import librdkafka_for


def kafka_config(bootstrap: Optional[str] = None, **extra) -> Dict[str, str]:
    """librdkafka settings from the environment (io_connectors.settings: SASL/TLS when the stack has them),
    with `bootstrap` (the tests' fixture value) and `extra` on top."""
    conf = dict(settings.KafkaSettings.from_env().librdkafka_config())
    if bootstrap:
        conf["bootstrap.servers"] = bootstrap
    conf.update(extra)
    return conf


def flink_url() -> str:
    return settings.get("FLINK_REST_URL", "http://localhost:8081")


def flink_master_address() -> str:
    """host:port of the cluster's REST API, as `--flink_master` takes it (localhost:8081 on the local stack)."""
    return flink_url().split("://", 1)[-1].rstrip("/")


def flink_get(path: str):
    with urllib.request.urlopen(f"{flink_url()}{path}", timeout=5) as r:
        return json.loads(r.read().decode())


def beam_counters(jid: str) -> Dict[str, int]:
    """A Flink job's Beam user counters by name, summed over steps (also for a finished job: Flink keeps its
    accumulators, where the Flink runner puts Beam's metrics; a counter never incremented is absent)."""
    import base64

    from apache_beam.coders import VarIntCoder

    out: Dict[str, int] = {}
    for acc in flink_get(f"/jobs/{jid}/accumulators").get("user-task-accumulators", []):
        if acc.get("name") != "__metricscontainers":
            continue
        for m in json.loads(acc["value"]).get("metrics", {}).get("attempted", []):
            if m.get("urn") == "beam:metric:user:sum_int64:v1":
                name = m.get("labels", {}).get("NAME", "")
                out[name] = out.get(name, 0) + VarIntCoder().decode(base64.b64decode(m["payload"]))
    return out


def jobs_by_name(name: str) -> List[dict]:
    return [j for j in flink_get("/jobs/overview")["jobs"] if j["name"] == name]


def cancel_job(jid: str) -> None:
    req = urllib.request.Request(f"{flink_url()}/jobs/{jid}?mode=cancel", method="PATCH")
    urllib.request.urlopen(req, timeout=5).read()


def cancel_by_name(name: str, timeout_s: float = 60) -> None:
    for j in jobs_by_name(name):
        if j["state"] not in ("CANCELED", "FAILED", "FINISHED"):
            cancel_job(j["jid"])
    poll(lambda: all(j["state"] in ("CANCELED", "FAILED", "FINISHED") for j in jobs_by_name(name)),
         timeout_s, f"job {name} to stop")


def poll(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 1.0):
    """Wait for check() to return something truthy; fail with `what` after the deadline. Not a sleep-assert."""
    deadline = time.monotonic() + timeout_s
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - keep polling; report the last error
            last_exc = e
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


def wait_for_rows(pg_conn, table: str, column: str, prefix: str, n: int, timeout_s: float) -> None:
    """Poll until `table` holds at least `n` rows whose `column` starts with `prefix` (a test's run prefix)."""
    from psycopg2 import sql

    query = sql.SQL("SELECT count(*) FROM {} WHERE {} LIKE %s").format(sql.Identifier(table), sql.Identifier(column))

    def enough():
        with pg_conn.cursor() as cur:
            cur.execute(query, (f"{prefix}%",))
            return cur.fetchone()[0] >= n

    poll(enough, timeout_s, f"{n} rows of {prefix}* in {table}")


def produce_with_offsets(records, topic: str, bootstrap: str,
                         extra_config: Optional[dict] = None) -> List[Tuple[int, int]]:
    """Produce ProducedRecords (event time as Kafka timestamp); return (partition, offset) per record, in order.
    `extra_config`: librdkafka settings, e.g. message.max.bytes for records near the broker's 1 MiB limit."""
    from workloads.produce import produce

    return produce(records, topic, bootstrap, {**kafka_config(bootstrap), **(extra_config or {})})


def commit_group_at_end(group: str, topics, bootstrap: str) -> None:
    """Commit the current end of every partition for `group`: a job started later on the group's committed
    offsets reads exactly what is produced after this call, and none of the records other tests left in the
    topics (their heartbeats carry recent timestamps and would move the CreateTime watermark ahead)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**librdkafka_for(bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(t, p, off) for t in topics for p, off in end_offsets(t, bootstrap).items()],
                 asynchronous=False)
    finally:
        c.close()


def end_offsets(topic: str, bootstrap: str) -> Dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**librdkafka_for(bootstrap), "group.id": "e2e-offsets", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def read_from(topic: str, bootstrap: str, start: Dict[int, int], idle_s: float = 3.0) -> List[bytes]:
    """Every value in `topic` from the given per-partition offsets up to the current end."""
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(topic, bootstrap)
    c = Consumer({**librdkafka_for(bootstrap), "group.id": "e2e-reader", "enable.auto.commit": False})
    try:
        todo = {p: e for p, e in ends.items() if e > start.get(p, 0)}
        c.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
        values: List[bytes] = []
        last = time.monotonic()
        while todo and time.monotonic() - last < idle_s + 10:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            last = time.monotonic()
            values.append(m.value())
            if m.offset() + 1 >= todo.get(m.partition(), 0):
                todo.pop(m.partition(), None)
        return values
    finally:
        c.close()


def dead_letters_at(topic: str, bootstrap: str, start: Dict[int, int], positions) -> Dict:
    """DeadLetters in `<topic>.dlq` (from `start` offsets) whose source position is one of `positions`."""
    from events.topics import dlq_topic
    from events.dead_letters import DeadLetter

    found = {}
    for v in read_from(dlq_topic(topic), bootstrap, start):
        dl = DeadLetter.from_json(v)
        if dl.source_topic == topic and (dl.source_partition, dl.source_offset) in positions:
            found[(dl.source_partition, dl.source_offset)] = dl
    return found


def advance_watermarks(topic: str, bootstrap: str, ts_ms: int, run_id: str) -> int:
    """Produce one heartbeat record (not a valid event: it ends in the DLQ) to every partition of `topic`
    with Kafka timestamp `ts_ms`, so every partition's CreateTime watermark passes the test's windows."""
    from confluent_kafka import Producer

    p = Producer({**librdkafka_for(bootstrap), "acks": "all"})
    parts = p.list_topics(topic, timeout=10).topics[topic].partitions
    for part in parts:
        p.produce(topic, value=f'{{"heartbeat": "{run_id}"}}'.encode(), partition=part, timestamp=ts_ms)
    p.flush(30)
    return len(parts)


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def python() -> str:
    """The interpreter the README's commands use (.venv/bin/python), else this one."""
    import sys

    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class readme_pipeline:
    """Start a pipeline exactly as the README does, in a subprocess:

        .venv/bin/python -m beam_pipelines.<name> --runner=FlinkRunner [--flink_master=localhost:8081] ...

    with `--no_wait_until_finish`, so the command returns once the job is RUNNING and healthy (or fails with
    its root cause). Cancels the job on exit."""

    def __init__(self, name: str, run_id: str, start_ms: Optional[int], *extra_args: str, flink_master: bool = True,
                 timeout_s: float = 240, group: Optional[str] = None, job_name: Optional[str] = None):
        """start_ms: start at the first record at/after it; None: the group's committed offsets
        (`commit_group_at_end` before producing reads exactly what the test produced). group/job_name:
        default `e2e-<name>-<run_id>` for both (the pipeline principal's ACLs allow the prefix `e2e-<name>-`; the
        fault matrix uses `e2e-<name>-fault-<run_id>`)."""
        self.name, self.job_name = name, job_name or f"e2e-{name}-{run_id}"
        self.group = group or self.job_name
        self.cmd = [python(), "-m", f"beam_pipelines.{name}", "--runner=FlinkRunner",
                    *([f"--flink_master={flink_master_address()}"] if flink_master else []),
                    f"--job_name={self.job_name}", f"--consumer_group={self.group}",
                    *([f"--start_read_time_ms={start_ms}"] if start_ms is not None else []),
                    "--parallelism=2", "--no_wait_until_finish", *extra_args]
        self.timeout_s = timeout_s
        self.output = ""

    def __enter__(self):
        import subprocess

        proc = subprocess.run(self.cmd, cwd=str(REPO), capture_output=True, text=True, timeout=self.timeout_s)
        self.output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            cancel_by_name(self.job_name)
            raise AssertionError(f"{' '.join(self.cmd[1:])} exited {proc.returncode}:\n{self.output[-4000:]}")
        assert any(j["state"] == "RUNNING" for j in jobs_by_name(self.job_name)), self.output[-2000:]
        return self

    def assert_running(self):
        jobs = [j for j in jobs_by_name(self.job_name) if j["state"] == "RUNNING"]
        assert jobs, f"{self.job_name} not RUNNING"
        # a job that restarted is not healthy, even if it is RUNNING again
        for j in jobs:
            exc = flink_get(f"/jobs/{j['jid']}/exceptions")
            assert not exc.get("exceptionHistory", {}).get("entries"), f"{self.job_name} restarted: {exc}"

    def diagnosis(self) -> str:
        """What a failed wait needs to say about the job: its state, restarts, and each vertex's lowest input
        watermark against the wall clock (a session that never goes final is a watermark that stopped)."""
        try:
            now_ms, parts = int(time.time() * 1000), []
            for j in jobs_by_name(self.job_name):
                detail = flink_get(f"/jobs/{j['jid']}")
                restarts = len(flink_get(f"/jobs/{j['jid']}/exceptions").get("exceptionHistory", {})
                               .get("entries", []))
                parts.append(f"job {j['jid'][:8]} {j['state']}, {restarts} restarts")
                for v in detail.get("vertices", []):
                    marks = [int(m["value"]) for m in flink_get(f"/jobs/{j['jid']}/vertices/{v['id']}/watermarks")
                             if m["id"].endswith("currentInputWatermark")]
                    low = min(marks) if marks else None
                    behind = "no watermark" if low is None or low < 0 else f"{(now_ms - low) / 1000:.0f} s behind"
                    parts.append(f"  {v['name'][:70]}: input watermark {behind}")
            return "\n".join(parts) or f"no job named {self.job_name}"
        except Exception as e:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
            return f"(no diagnosis: {e!r})"

    def __exit__(self, *exc):
        cancel_by_name(self.job_name)
        return False


class running_pipeline(readme_pipeline):
    """readme_pipeline for a pipeline module (`beam_pipelines.billing` -> `python -m beam_pipelines.billing`)."""

    def __init__(self, module, run_id: str, start_ms: int, *extra_args: str, flink_master: bool = True):
        super().__init__(module.__name__.rsplit(".", 1)[-1], run_id, start_ms, *extra_args, flink_master=flink_master)


class producing_every_second:
    """A record a second on `topic` while the block runs: a restarted job meets a new record even when it
    resumes past the old ones (a restart before the first completed checkpoint resumes from the group's
    committed offsets)."""

    def __init__(self, bootstrap: str, topic: str, run_id: str, principal: Optional[str] = None):
        import threading

        self._args = (bootstrap, topic, run_id)
        self._principal = principal  # default: the tests' (workload); a test topic needs the admin
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from confluent_kafka import Producer

        bootstrap, topic, run_id = self._args
        producer = Producer(librdkafka_for(bootstrap, self._principal))
        i = 0
        while not self._stop.wait(1.0):
            producer.produce(topic, value=f"{run_id}-{i}".encode())
            producer.poll(0)
            i += 1
        producer.flush(10)

    def start(self) -> "producing_every_second":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
