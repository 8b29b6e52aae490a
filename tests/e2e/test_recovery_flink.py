"""Nothing is lost when a job meets an oversized record or restarts (issue 19), on the real Flink cluster, with
the KPI pipeline started by the README's command in a subprocess and reading exactly the records the test
produced (the group is committed at the topic end first):

- a 2 MB UTF-8 turn and a 1.5 MB non-UTF-8 record (produced compressed, so the broker's 1 MB limit applies
  to the compressed batch), and a 630 KB non-UTF-8 one, among a few hundred valid turns: the job never
  restarts, all three are dead letters stored by reference (prefix, size, SHA-256 of the produced bytes) at
  their partition/offset, and every valid turn is in `agent_turns` once;
- the Beam Python worker pool killed (SIGKILL, the pool and its SDK workers) while turns are in flight,
  once before the job's first checkpoint and once after several: the job restarts on the restored pool,
  and every produced record is in `agent_turns` (valid) or `text.agent.turn.completed.dlq` (malformed),
  exactly as produced, none missing;
- lone records on a job that checkpoints every 500 ms: each one's dead letter reaches the DLQ although no
  record follows it. With Beam's default (finishBundleBeforeCheckpointing=false) the output of a bundle that
  a checkpoint cut stayed in the step's state until the next record: one run of the after-checkpoints test
  lost the last 67 of 129 dead letters that way (their offsets committed, the job cancelled); the pipelines
  now finish bundles before the barrier (beam_pipelines/options.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

from devstack.config import PORTS
from devstack.process import pid_alive, port_open, read_pid
from events import topics
from tests.e2e.flink_helpers import (REPO, commit_group_at_end, dead_letters_at, end_offsets, flink_get, jobs_by_name,
                                     poll, python, readme_pipeline)
from events.dead_letters import ErrorKind
from workloads.generator import ProducedRecord, TurnWorkload
from workloads.produce import produce
from io_connectors.settings import librdkafka_for

pytestmark = pytest.mark.e2e

TOPICS = (topics.TURNS, topics.TOOLS, topics.SESSIONS)  # what the KPI pipeline reads
HOUR_MS = 3_600_000
# librdkafka refuses a message larger than its message.max.bytes before compression; the broker checks the
# compressed batch against its own 1 MB limit.
COMPRESSED = {"compression.type": "zstd", "message.max.bytes": 8_000_000}


class _Job(readme_pipeline):
    """The README's command for the KPI pipeline, on the group `e2e-kpi-<run_id>` (readme_pipeline's)."""

    def __init__(self, run_id: str, *extra_args: str):
        super().__init__("kpi", run_id, None, *extra_args)
        self.group = f"e2e-kpi-{run_id}"
        assert f"--consumer_group={self.group}" in self.cmd


# ---------------------------------------------------------------------------------------------------------
# Flink REST


def _jid(job: "_Job") -> str:
    jobs = [j for j in jobs_by_name(job.job_name) if j["state"] not in ("CANCELED", "FAILED", "FINISHED")]
    assert len(jobs) == 1, f"expected one active job {job.job_name}, got {jobs}"
    return jobs[0]["jid"]


def _restarts(jid: str) -> int:
    metrics = flink_get(f"/jobs/{jid}/metrics?get=numRestarts")
    return next((int(m["value"]) for m in metrics if m.get("id") == "numRestarts"), 0)


def _all_running(jid: str) -> bool:
    job = flink_get(f"/jobs/{jid}")
    vertices = job.get("vertices") or []
    return job["state"] == "RUNNING" and bool(vertices) and all(
        v.get("tasks", {}).get("RUNNING", 0) == v.get("parallelism") for v in vertices)


def _checkpoints(jid: str) -> dict:
    return flink_get(f"/jobs/{jid}/checkpoints")


# ---------------------------------------------------------------------------------------------------------
# Postgres and the DLQ


def _landed(pg_conn, run_id: str) -> int:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
        return cur.fetchone()[0]


def _committed(group: str, bootstrap: str) -> Dict[int, int]:
    """The group's committed offset of every partition of the turns topic."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**librdkafka_for(bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.list_topics(topics.TURNS, timeout=10).topics[topics.TURNS].partitions
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topics.TURNS, p) for p in parts],
                                                              timeout=10)}
    finally:
        c.close()


def _assert_turns_exact(pg_conn, run_id: str, expected: Dict[Tuple[str, str], dict]) -> None:
    """agent_turns holds exactly the distinct valid turns, each once, with the produced values."""
    with pg_conn.cursor() as cur:
        cur.execute("SELECT session_id, turn_id, count(*) OVER (PARTITION BY session_id, turn_id), account_id, "
                    "channel, model, tokens_in, tokens_out, latency_ms, ts_ms FROM agent_turns "
                    "WHERE session_id LIKE %s", (f"{run_id}-%",))
        rows = cur.fetchall()
    got = {(r[0], r[1]): r for r in rows}
    assert len(rows) == len(got) and all(r[2] == 1 for r in rows), "a turn was written twice"
    missing, extra = set(expected) - set(got), set(got) - set(expected)
    if missing or extra:
        raise AssertionError(f"agent_turns: {len(missing)} of {len(expected)} turns missing (e.g. "
                             f"{sorted(missing)[:5]}), {len(extra)} unexpected (e.g. {sorted(extra)[:5]})")
    for key, t in expected.items():
        r = got[key]
        assert r[3:8] == (t["account_id"], t["channel"], t["model_name"], t["tokens_in"], t["tokens_out"]), key
        assert r[8] == pytest.approx(t["latency_ms"]) and r[9] == t["timestamp"], key


def _assert_dead_letters_exact(bootstrap: str, dlq_start: Dict[int, int], records: List[ProducedRecord],
                               positions: List[Tuple[int, int]], timeout_s: float = 120) -> Dict:
    """Every malformed record is in the turns' DLQ at its partition/offset with its payload byte for byte; no
    valid or duplicate record is. Returns the dead letters by position."""
    bad = {positions[i] for i, r in enumerate(records) if r.kind == "malformed"}
    good = {positions[i] for i, r in enumerate(records) if r.kind != "malformed"}
    assert bad
    seen: Dict = {}

    def all_there():
        seen.clear()
        seen.update(dead_letters_at(topics.TURNS, bootstrap, dlq_start, bad | good))
        return bad <= set(seen)

    try:
        poll(all_there, timeout_s, f"{len(bad)} malformed turns in {topics.dlq_topic(topics.TURNS)}", 3)
    except AssertionError:
        raise AssertionError(f"{len(bad - set(seen))} of {len(bad)} malformed turns missing from the DLQ, e.g. "
                             f"{sorted(bad - set(seen))[:5]}")
    if good & set(seen):
        raise AssertionError(f"valid turns dead-lettered: {sorted(good & set(seen))[:5]}")
    by_pos = {positions[i]: r for i, r in enumerate(records)}
    for pos in bad:
        assert seen[pos].raw_payload() == by_pos[pos].value, pos
    return seen


def _assert_nothing_lost(pg_conn, run_id: str, workload: TurnWorkload, bootstrap: str, dlq_start: Dict[int, int],
                         positions: List[Tuple[int, int]], context: object = "") -> None:
    """Every valid turn in agent_turns and every malformed one in the DLQ, exactly as produced; one failure
    names both what is missing from the table and from the DLQ (and `context`: what happened to the job)."""
    problems = []
    try:
        _assert_turns_exact(pg_conn, run_id, workload.expected)
    except AssertionError as e:
        problems.append(str(e))
    try:
        _assert_dead_letters_exact(bootstrap, dlq_start, workload.records, positions, 60 if problems else 120)
    except AssertionError as e:
        problems.append(str(e))
    if problems:
        raise AssertionError("records lost:\n" + "\n".join(problems) + f"\nrun: {context}")


# ---------------------------------------------------------------------------------------------------------
# The worker pool


def _kill_worker_pool() -> int:
    """SIGKILL the Beam Python worker pool's process group (the pool and the SDK workers it started), as a
    crashed pod would lose them; return the pool's pid."""
    pid = read_pid("worker-pool")
    assert pid is not None, "the worker pool is not running"
    # devstack starts every service in its own session: its process group is its own, never ours
    assert os.getpgid(pid) == pid != os.getpgid(0), f"worker pool {pid} is not a process-group leader"
    os.killpg(pid, signal.SIGKILL)
    poll(lambda: not pid_alive(pid) and not port_open(PORTS["worker-pool"]), 30,
         f"worker pool {pid} to be gone", 0.2)
    return pid


def _stack_up(old_pid: Optional[int]) -> str:
    """The stack supervises the worker pool (devstack.supervise, as Kubernetes restarts a container): a new pool
    comes up by itself; `python -m devstack up` then finds it healthy and leaves everything alone."""
    t0 = time.monotonic()
    poll(lambda: read_pid("worker-pool") not in (None, old_pid) and port_open(PORTS["worker-pool"]), 60,
         "the supervisor to start a new worker pool", 0.2)
    took = time.monotonic() - t0
    proc = subprocess.run([python(), "-m", "devstack", "up"], cwd=str(REPO), capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return f"worker-pool restarted by its supervisor (pid {read_pid('worker-pool')}) {took:.1f}s after the kill"


@pytest.fixture
def whole_stack():
    """Whatever a test did to the worker pool, the stack is whole again after it."""
    yield
    if not port_open(PORTS["worker-pool"]):
        subprocess.run([python(), "-m", "devstack", "up"], cwd=str(REPO), timeout=300)
    assert port_open(PORTS["worker-pool"]), "the worker pool did not come back"


class _PacedProduction(threading.Thread):
    """Produce records in chunks, a pause between chunks, so that turns are still arriving when the worker
    pool dies; `positions` fills in order. `done` is set when everything is acknowledged."""

    def __init__(self, records: List[ProducedRecord], bootstrap: str, chunk: int, pause_s: float):
        super().__init__(daemon=True)
        self.records, self.bootstrap, self.chunk, self.pause_s = records, bootstrap, chunk, pause_s
        self.positions: List[Tuple[int, int]] = []
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self):
        try:
            for i in range(0, len(self.records), self.chunk):
                self.positions.extend(produce(self.records[i:i + self.chunk], topics.TURNS, self.bootstrap))
                time.sleep(self.pause_s)  # pacing the producer, not waiting for an outcome
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.done.set()

    def produced(self) -> int:
        return len(self.positions)


def _kill_mid_flight_and_recover(pg_conn, run_id: str, job: "_Job", workload: TurnWorkload,
                                 bootstrap: str, first_rows: int) -> Tuple[dict, List[Tuple[int, int]]]:
    """Produce the workload paced; once `first_rows` turns landed (some, not all), kill the worker pool; bring
    it back with `devstack up`; wait until the job runs again after a restart. Returns what happened and the
    (partition, offset) of every produced record."""
    jid = _jid(job)
    expected = workload.expected
    producing = _PacedProduction(workload.records, bootstrap, chunk=200, pause_s=0.4)
    t0 = time.monotonic()
    producing.start()
    poll(lambda: _landed(pg_conn, run_id) >= first_rows, 120, f"the first {first_rows} turns in agent_turns", 0.2)
    before = _checkpoints(jid)["counts"]
    restarts_before = _restarts(jid)
    committed_before = _committed(job.group, bootstrap)
    pid = _kill_worker_pool()
    at_kill = {"rows": _landed(pg_conn, run_id), "produced": producing.produced(),
               "records": len(workload.records), "turns": len(expected), "s": round(time.monotonic() - t0, 1),
               "checkpoints_completed": before["completed"], "restarts_before": restarts_before,
               "group_committed": committed_before}
    assert at_kill["rows"] < len(expected), f"every turn had landed before the kill: not mid-flight ({at_kill})"
    # the job notices the dead workers and fails over; the pool comes back under `devstack up`
    poll(lambda: _restarts(jid) > restarts_before, 120, "the job to restart after the worker pool died", 0.5)
    pool_line = _stack_up(pid)
    poll(lambda: _all_running(jid), 180, "the job and all its tasks RUNNING again", 1)
    producing.join(120)
    assert producing.done.is_set() and producing.error is None, producing.error
    try:
        poll(lambda: _landed(pg_conn, run_id) >= len(expected), 150, f"{len(expected)} turns in agent_turns", 1)
    except AssertionError:
        pass  # _assert_nothing_lost names what is missing
    ckpt = _checkpoints(jid)
    return {"jid": jid, "at_kill": at_kill, "pool": pool_line, "restarts": _restarts(jid),
            "recovered_s": round(time.monotonic() - t0, 1), "checkpoints": ckpt["counts"],
            "restored": (ckpt.get("latest") or {}).get("restored"),
            "group_committed": _committed(job.group, bootstrap)}, producing.positions


def _recovery_workload(run_id: str, seed: int, n_valid: int) -> TurnWorkload:
    now_ms = int(time.time() * 1000)
    w = TurnWorkload(seed=seed, run_id=run_id, start_ms=now_ms - 3 * HOUR_MS, sessions=60,
                     malformed_rate=0.04).generate(n_valid)
    assert len(w.expected) == n_valid and w.malformed_count >= 50
    return w


# ---------------------------------------------------------------------------------------------------------
# Tests


def _big_turn(run_id: str) -> bytes:
    """A valid-looking turn whose response_text is 2 MB of UTF-8 text (multi-byte characters included)."""
    t = TurnWorkload(run_id=run_id).turn(random.Random(1), 9999, 1, int(time.time() * 1000) - 60_000)
    t["session_id"] = f"{run_id}-big"
    sentence = "Große Antwort – naïve café, 日本語のテキスト, and plain words too. "
    t["response_text"] = sentence * (2_000_000 // len(sentence.encode()) + 1)
    raw = json.dumps(t, ensure_ascii=False).encode("utf-8")
    assert 2_000_000 <= len(raw) < 2_200_000
    raw.decode("utf-8")
    return raw


def test_oversized_records_are_dead_letters_by_reference_without_a_restart(stack, pg_conn, kafka_settings,
                                                                           run_id):
    bootstrap = kafka_settings.bootstrap_servers
    now_ms = int(time.time() * 1000)
    w = TurnWorkload(seed=19, run_id=run_id, start_ms=now_ms - HOUR_MS, sessions=20).generate(300)
    big = _big_turn(run_id)
    not_utf8 = b'{"session_id": "' + run_id.encode() + b'-bin", "blob": "' + b"\xff" * 1_500_000 + b'"}'
    # below the 1 MB size limit but above the DLQ's inline limit: refused as not UTF-8, stored by reference
    not_utf8_small = b"\xfe\xff" + b"binary " * 90_000
    with pytest.raises(UnicodeDecodeError):
        not_utf8.decode("utf-8")
    ts = now_ms - 30 * 60_000
    oversized = {"big": ProducedRecord(b"big", big, ts, "oversized"),
                 "not_utf8": ProducedRecord(b"bin", not_utf8, ts, "oversized"),
                 "not_utf8_small": ProducedRecord(b"bin", not_utf8_small, ts, "oversized")}
    half = len(w.records) // 2
    records = [*w.records[:half], *oversized.values(), *w.records[half:]]

    dlq_start = end_offsets(topics.dlq_topic(topics.TURNS), bootstrap)
    commit_group_at_end(f"e2e-kpi-{run_id}", TOPICS, bootstrap)
    with _Job(run_id, "--health_period_seconds=10") as job:
        jid = _jid(job)
        positions = produce(records, topics.TURNS, bootstrap, extra_config=COMPRESSED)
        at = {name: positions[half + i] for i, name in enumerate(oversized)}

        poll(lambda: _landed(pg_conn, run_id) >= len(w.expected), 150, f"{len(w.expected)} turns in agent_turns")
        malformed = _assert_dead_letters_exact(
            bootstrap, dlq_start, [r for r in records if r.kind != "oversized"],
            [p for r, p in zip(records, positions) if r.kind != "oversized"])
        found = poll(lambda: (lambda f: f if set(at.values()) <= set(f) else None)(
            dead_letters_at(topics.TURNS, bootstrap, dlq_start, set(at.values()))), 60,
            "the oversized records in the DLQ", 2)
        _assert_turns_exact(pg_conn, run_id, w.expected)  # the 2 MB turn is not among them

        for name, rec in oversized.items():
            dl = found[at[name]]
            assert (dl.source_topic, dl.source_partition, dl.source_offset) == (topics.TURNS, *at[name])
            assert dl.payload_truncated is True, name
            assert dl.payload_bytes == len(rec.value), name
            assert dl.payload_sha256 == hashlib.sha256(rec.value).hexdigest(), name
            prefix = dl.prefix_bytes()
            assert 1024 <= len(prefix) <= 256 * 1024 and rec.value.startswith(prefix), name
        assert found[at["big"]].error_class == ErrorKind.TOO_LARGE.value
        assert found[at["big"]].payload_encoding == "utf-8"
        assert found[at["not_utf8"]].error_class == ErrorKind.TOO_LARGE.value
        assert found[at["not_utf8"]].payload_encoding == "base64"
        assert found[at["not_utf8_small"]].error_class == ErrorKind.NOT_UTF8.value
        assert found[at["not_utf8_small"]].payload_encoding == "base64"

        job.assert_running()  # no exception in Flink's history
        assert _restarts(jid) == 0 and _all_running(jid)
        print(f"oversized: job {jid}, {len(w.expected)} turns landed once each, {len(malformed)} malformed and "
              f"{len(found)} oversized dead letters (by reference, at {at}), restarts 0")


def test_worker_pool_killed_before_the_first_checkpoint_loses_nothing(stack, pg_conn, kafka_settings, run_id,
                                                                      whole_stack):
    bootstrap = kafka_settings.bootstrap_servers
    w = _recovery_workload(run_id, seed=20, n_valid=3000)
    dlq_start = end_offsets(topics.dlq_topic(topics.TURNS), bootstrap)
    commit_group_at_end(f"e2e-kpi-{run_id}", TOPICS, bootstrap)
    start = _committed(f"e2e-kpi-{run_id}", bootstrap)
    # Flink triggers the first checkpoint after a random delay between the minimum pause and the interval:
    # both at 10 minutes, no checkpoint is even triggered while this test runs.
    with _Job(run_id, "--checkpointing_interval=600000", "--min_pause_between_checkpoints=600000",
              "--health_period_seconds=10") as job:
        jid = _jid(job)
        config = flink_get(f"/jobs/{jid}/checkpoints/config")
        assert config["interval"] == 600000 and config["min_pause"] == 600000, config
        run, positions = _kill_mid_flight_and_recover(pg_conn, run_id, job, w, bootstrap, first_rows=300)
        print(f"before first checkpoint: {run}")
        assert run["at_kill"]["checkpoints_completed"] == 0, run
        assert run["checkpoints"]["completed"] == 0 and run["restored"] is None, run  # nothing to restore from
        assert run["restarts"] >= 1
        _assert_nothing_lost(pg_conn, run_id, w, bootstrap, dlq_start, positions, {"group_start": start, **run})
        # offsets are committed on completed checkpoints only: the group never moved (no auto-commit), so the
        # restarted job read the run again from its start
        assert run["at_kill"]["group_committed"] == start == run["group_committed"], (start, run)
        assert _all_running(jid)


def test_worker_pool_killed_after_checkpoints_restores_one_and_loses_nothing(stack, pg_conn, kafka_settings,
                                                                             run_id, whole_stack):
    bootstrap = kafka_settings.bootstrap_servers
    w = _recovery_workload(run_id, seed=21, n_valid=3000)
    dlq_start = end_offsets(topics.dlq_topic(topics.TURNS), bootstrap)
    commit_group_at_end(f"e2e-kpi-{run_id}", TOPICS, bootstrap)
    with _Job(run_id, "--checkpointing_interval=2000", "--health_period_seconds=10") as job:
        jid = _jid(job)
        poll(lambda: _checkpoints(jid)["counts"]["completed"] >= 3, 90, "3 completed checkpoints")
        run, positions = _kill_mid_flight_and_recover(pg_conn, run_id, job, w, bootstrap, first_rows=300)
        print(f"after checkpoints: {run}")
        assert run["at_kill"]["checkpoints_completed"] >= 3, run
        assert run["restarts"] >= 1
        restored = run["restored"]
        assert restored is not None and restored.get("id"), f"the restart restored no checkpoint: {run}"
        assert run["checkpoints"]["restored"] >= 1, run
        _assert_nothing_lost(pg_conn, run_id, w, bootstrap, dlq_start, positions, run)
        assert _all_running(jid)


def test_the_last_dead_letter_of_a_burst_leaves_although_a_checkpoint_cut_its_bundle(stack, kafka_settings, run_id):
    """A checkpoint every 500 ms cuts nearly every bundle. With Beam's default (finishBundleBeforeCheckpointing
    false) the output of a cut bundle waits in the step's state for the step's next element: a lone record's
    dead letter stayed out of the DLQ until the next record came (14 of 15 on this stack; the last one never).
    The pipelines finish bundles before the barrier, so each one arrives although no record follows it."""
    bootstrap = kafka_settings.bootstrap_servers
    dlq_start = end_offsets(topics.dlq_topic(topics.TURNS), bootstrap)
    commit_group_at_end(f"e2e-kpi-{run_id}", TOPICS, bootstrap)
    with _Job(run_id, "--checkpointing_interval=500", "--health_period_seconds=5") as job:
        jid = _jid(job)
        user_config = flink_get(f"/jobs/{jid}/config")["execution-config"]["user-config"]
        assert user_config.get("finishBundleBeforeCheckpointing") == "true", user_config
        took = []
        for i in range(8):
            rec = ProducedRecord(b"bad", f"{run_id} lone record {i}, not JSON".encode(), int(time.time() * 1000),
                                 "malformed")
            pos = produce([rec], topics.TURNS, bootstrap)[0]
            t0 = time.monotonic()
            dl = poll(lambda: dead_letters_at(topics.TURNS, bootstrap, dlq_start, {pos}).get(pos), 20,
                      f"the dead letter of lone record {i} at {pos}, with no record after it", 0.3)
            took.append(round(time.monotonic() - t0, 1))
            assert dl.raw_payload() == rec.value
        assert _checkpoints(jid)["counts"]["completed"] >= 8 and _restarts(jid) == 0
        print(f"lone dead letters in the DLQ after {took} s")
