"""A restart loop for one service, as Kubernetes restarts a pod's container: the local stack runs the Flink
TaskManager and the Beam worker pool under it, so a `kill -9` of the JVM or of the pool brings a new one.

    python -m devstack.supervise --name worker-pool -- <command...>

The child runs in its own session (its own process group: killing the group kills the pool and its SDK
workers, never the supervisor) and its pid is written to `$DEVSTACK_HOME/run/<name>.pid`, where the rest of
the stack and the tests look for the service's pid; the supervisor's own pid is in `<name>-supervisor.pid`.
A child that exits for any reason is started again after a backoff (1 s, doubling to 30 s; back to 1 s once a
child has lived 60 s). SIGTERM/SIGINT to the supervisor (`devstack down`) stops the child's process group
(SIGTERM, SIGKILL after 20 s) and exits without restarting it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

from devstack.config import RUN

INITIAL_BACKOFF_S, MAX_BACKOFF_S, HEALTHY_AFTER_S, STOP_GRACE_S = 1.0, 30.0, 60.0, 20.0


def _say(name: str, msg: str) -> None:
    print(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} [supervise {name}] {msg}", flush=True)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def supervise(name: str, cmd: List[str]) -> int:
    pid_file = RUN / f"{name}.pid"
    stopping = False
    child: Optional[subprocess.Popen] = None

    stop_at: Optional[float] = None

    def on_signal(signum, _frame):
        # only flags and signals here: the main loop waits for the child
        nonlocal stopping, stop_at
        stopping, stop_at = True, time.monotonic()
        if child is not None:
            _killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = INITIAL_BACKOFF_S
    starts = 0
    while not stopping:
        starts += 1
        t0 = time.monotonic()
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file.write_text(str(child.pid))
        _say(name, f"started pid {child.pid} (start {starts}): {' '.join(cmd)}")
        while child.poll() is None:
            time.sleep(0.2)
            if stop_at is not None and time.monotonic() - stop_at > STOP_GRACE_S:
                _killpg(child.pid, signal.SIGKILL)
        rc = child.returncode
        # a killed child's group may still hold its children (the pool's SDK workers): they must not keep the port
        _killpg(child.pid, signal.SIGKILL)
        if stopping:
            break
        lived = time.monotonic() - t0
        if lived >= HEALTHY_AFTER_S:
            backoff = INITIAL_BACKOFF_S
        _say(name, f"pid {child.pid} exited with {rc} after {lived:.1f}s; starting a new one in {backoff:.0f}s")
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
    if pid_file.exists() and child is not None and pid_file.read_text().strip() == str(child.pid):
        pid_file.unlink(missing_ok=True)
    _say(name, "stopped")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command")
    return supervise(a.name, cmd)


if __name__ == "__main__":
    sys.exit(main())
