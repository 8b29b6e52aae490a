"""The Beam Python SDK worker pool (EXTERNAL environment) with a user-state cache, for the local stack and the
TaskManager pods:

    python -m beam_pipelines.worker_pool --service_port=50000 [--state_cache_mb=256]

Beam's own `python -m apache_beam.runners.worker.worker_pool_main` starts every SDK worker with
`state_cache_size=0` (no flag changes it; pipeline options such as --max_cache_memory_usage_mb reach only
workers started by a container boot program). Without the cache every bundle reads each key's state from
the TaskManager with a blocking gRPC round trip, and a keyed step (session and account-hour totals) spends
its time waiting on those. The Flink runner hands the workers cache tokens for user state, so cached state
stays correct across bundles and is dropped when the runner says so (checkpoint restore, rescaling).
This module starts the same pool with a cache size and, optionally, an outbound data buffer time limit; its
workers are `python -m beam_pipelines.sdk_worker` (Beam's harness, with a cheaper weighing of cached values).

The pool keeps one standby worker (`sdk_worker --standby`: Beam and the pipelines imported, waiting for its
worker id) and hands it the next StartWorker request, then starts the next standby 20 s later: a job's start and every
restart after a fault get a worker in milliseconds instead of a new interpreter's imports (3-5 s on two busy
cores). A standby started before a project source file changed is not used (it would run the old code): that
request gets a new process, as without a standby. `--standby_workers=0` turns it off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import List, Optional

# the project's packages whose source a worker runs (a standby imported them when it started)
_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("beam_pipelines", "transforms", "io_connectors", "events", "iheardai_analytics", "schemas")


def source_mtime(root: Path = _ROOT) -> float:
    """The newest modification time of the project's sources and schemas (a few hundred stats, ~1 ms)."""
    newest = 0.0
    for pkg in _PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / pkg):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if f.endswith((".py", ".json")):
                    try:
                        newest = max(newest, os.stat(os.path.join(dirpath, f)).st_mtime)
                    except OSError:
                        pass
    return newest


STANDBY_DELAY_S = 20.0  # after a handover, before the next standby starts


def _pool_class(stock_state_weigher: bool = False, standby_workers: int = 1):
    import subprocess
    import sys

    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer

    class Pool(BeamFnExternalWorkerPoolServicer):
        """Beam's pool (use_process=True), whose worker processes run `beam_pipelines.sdk_worker`, one of them
        started ahead as a standby."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._lock = threading.Lock()
            self._standby: Optional[subprocess.Popen] = None
            self._standby_source = 0.0  # source_mtime() when the standby started
            with self._lock:
                self.start_standby()

        def _flags(self) -> List[str]:
            flags = [f"--state_cache_bytes={self._state_cache_size}",
                     f"--data_buffer_time_limit_ms={self._data_buffer_time_limit_ms}"]
            return flags + (["--stock_state_weigher"] if stock_state_weigher else [])

        def start_standby(self) -> None:
            """A new standby worker, unless one is waiting (called with the lock held, or before serving)."""
            if standby_workers < 1 or (self._standby is not None and self._standby.poll() is None):
                return
            self._standby_source = source_mtime()
            self._standby = subprocess.Popen([sys.executable, "-m", "beam_pipelines.sdk_worker", "--standby",
                                              *self._flags()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             close_fds=True)
            logging.info("standby SDK worker started, pid %d", self._standby.pid)

        def _replace_standby_later(self) -> None:
            """The next standby, STANDBY_DELAY_S after this request: its imports (3-5 CPU-seconds) would otherwise
            compete with the worker just handed over, the Java harness and a restarting TaskManager, all starting
            in these seconds on the same cores."""
            if standby_workers < 1:
                return
            timer = threading.Timer(STANDBY_DELAY_S, self._start_standby_locked)
            timer.daemon = True
            timer.start()

        def _start_standby_locked(self) -> None:
            with self._lock:
                self.start_standby()

        def _take_standby(self, request) -> Optional[subprocess.Popen]:
            proc, self._standby = self._standby, None
            if proc is None:
                return None
            if proc.poll() is not None or source_mtime() > self._standby_source:
                # exited, or it imported sources that changed since: a new process runs the current code
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                return None
            try:
                proc.stdin.write((json.dumps({"control_endpoint": request.control_endpoint.url,
                                              "worker_id": request.worker_id}) + "\n").encode())
                proc.stdin.close()
            except OSError:  # it died just now
                proc.kill()
                proc.wait()
                return None
            return proc

        def StartWorker(self, request, unused_context):
            try:
                with self._lock:
                    proc = self._take_standby(request)
                    if proc is not None:
                        logging.info("SDK worker %s: the standby worker, pid %d", request.worker_id, proc.pid)
                    else:
                        logging.info("starting SDK worker %s", request.worker_id)
                        proc = subprocess.Popen([sys.executable, "-m", "beam_pipelines.sdk_worker",
                                                 f"--control_endpoint={request.control_endpoint.url}",
                                                 f"--worker_id={request.worker_id}", *self._flags()],
                                                stdout=subprocess.PIPE, close_fds=True)
                    self._worker_processes[request.worker_id] = proc
                    self._replace_standby_later()
                return beam_fn_api_pb2.StartWorkerResponse()
            except Exception:  # the runner shows the error of the worker that did not start
                import traceback

                return beam_fn_api_pb2.StartWorkerResponse(error=traceback.format_exc())

    return Pool


def main(argv: Optional[List[str]] = None) -> None:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--service_port", type=int, required=True, help="port the pool listens on")
    ap.add_argument("--state_cache_mb", type=int, default=256,
                    help="user-state cache per SDK worker process, MiB (0: Beam's default, none)")
    ap.add_argument("--data_buffer_time_limit_ms", type=int, default=-1,
                    help="flush a worker's outbound data buffer after this long (-1: when it is full or the "
                         "bundle ends, Beam's default)")
    ap.add_argument("--standby_workers", type=int, choices=(0, 1), default=1,
                    help="1: keep one worker started ahead, imports done, for the next job or restart (0: none)")
    ap.add_argument("--stock_state_weigher", action="store_true",
                    help="workers weigh cached state with Beam's own objsize walk (for A/B benchmarks only)")
    args = ap.parse_args(argv)
    address, server = _pool_class(args.stock_state_weigher, args.standby_workers).start(
        use_process=True, port=args.service_port, state_cache_size=args.state_cache_mb << 20,
        data_buffer_time_limit_ms=args.data_buffer_time_limit_ms)
    logging.getLogger().setLevel(logging.INFO)
    logging.info("worker pool at %s, state cache %d MiB per worker", address, args.state_cache_mb)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
