"""The worker pool's standby SDK worker (beam_pipelines/worker_pool.py): started ahead, handed the next worker
id, replaced at once, and not used once the project's sources changed under it."""

import io
import os
import subprocess
import sys
import time

import pytest
from apache_beam.portability.api import beam_fn_api_pb2, endpoints_pb2

from beam_pipelines import sdk_worker, worker_pool


def _request(worker_id: str) -> beam_fn_api_pb2.StartWorkerRequest:
    # a control endpoint nobody listens on: the worker keeps trying to connect until the test kills it
    return beam_fn_api_pb2.StartWorkerRequest(worker_id=worker_id,
                                              control_endpoint=endpoints_pb2.ApiServiceDescriptor(url="localhost:9"))


def _wait_for_standby(pool, previous) -> None:
    """The replacement standby is started by a timer (STANDBY_DELAY_S, 0 here)."""
    deadline = time.monotonic() + 10
    while (pool._standby is None or pool._standby is previous) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool._standby is not None and pool._standby is not previous and pool._standby.poll() is None


def test_the_next_standby_waits_after_a_handover(monkeypatch):
    monkeypatch.setattr(worker_pool, "STANDBY_DELAY_S", 3600.0)
    p = worker_pool._pool_class()(use_process=True, state_cache_size=0, data_buffer_time_limit_ms=-1)
    try:
        first = p._standby
        assert p.StartWorker(_request("9-1"), None).error == ""
        assert p._worker_processes["9-1"] is first and p._standby is None  # none started during the handover
    finally:
        for proc in p._worker_processes.values():
            proc.kill()
            proc.wait()


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(worker_pool, "STANDBY_DELAY_S", 0.0)
    p = worker_pool._pool_class()(use_process=True, state_cache_size=1 << 20, data_buffer_time_limit_ms=-1)
    yield p
    procs = list(p._worker_processes.values()) + ([p._standby] if p._standby else [])
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_standby_worker_is_waiting_as_soon_as_the_pool_exists(pool):
    assert pool._standby is not None and pool._standby.poll() is None
    assert "--standby" in _cmdline(pool._standby.pid) and "--state_cache_bytes=1048576" in _cmdline(pool._standby.pid)


def test_the_next_worker_is_the_standby_and_a_new_standby_follows(pool):
    standby = pool._standby
    resp = pool.StartWorker(_request("1-1"), None)
    assert resp.error == ""
    assert pool._worker_processes["1-1"] is standby and standby.poll() is None
    _wait_for_standby(pool, standby)
    assert pool._standby is not None and pool._standby.pid != standby.pid and pool._standby.poll() is None
    # the second request gets the second standby, and a third one waits
    second = pool._standby
    assert pool.StartWorker(_request("1-2"), None).error == ""
    _wait_for_standby(pool, second)
    assert pool._worker_processes["1-2"] is second and pool._standby.pid not in (standby.pid, second.pid)


def test_a_standby_older_than_the_sources_is_not_used(pool):
    stale = pool._standby
    pool._standby_source = 0.0  # as if a source file changed after it imported the code
    assert pool.StartWorker(_request("2-1"), None).error == ""
    worker = pool._worker_processes["2-1"]
    assert worker is not stale and "--worker_id=2-1" in _cmdline(worker.pid)
    stale.wait(timeout=10)  # killed, not left waiting
    _wait_for_standby(pool, stale)


def test_a_dead_standby_is_replaced_by_a_new_process(pool):
    pool._standby.kill()
    pool._standby.wait()
    assert pool.StartWorker(_request("3-1"), None).error == ""
    assert "--worker_id=3-1" in _cmdline(pool._worker_processes["3-1"].pid)


def test_the_source_time_follows_an_edit(tmp_path):
    pkg = tmp_path / "transforms"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    os.utime(pkg / "a.py", (1_000, 1_000))
    assert worker_pool.source_mtime(tmp_path) == 1_000
    (pkg / "b.json").write_text("{}")
    os.utime(pkg / "b.json", (2_000, 2_000))
    assert worker_pool.source_mtime(tmp_path) == 2_000


def test_a_standby_worker_without_an_assignment_exits_cleanly():
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "beam_pipelines.sdk_worker", "--standby"], input=b"",
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert time.monotonic() - t0 < 120


def test_the_assignment_is_one_json_line():
    got = sdk_worker.wait_for_assignment(io.StringIO('{"control_endpoint": "localhost:1", "worker_id": "7-1"}\n'))
    assert got == {"control_endpoint": "localhost:1", "worker_id": "7-1"}
    assert sdk_worker.wait_for_assignment(io.StringIO("")) is None


def test_the_worker_needs_an_endpoint_or_standby():
    out = subprocess.run([sys.executable, "-m", "beam_pipelines.sdk_worker"], capture_output=True, timeout=60)
    assert out.returncode == 2 and b"--control_endpoint and --worker_id are required" in out.stderr
