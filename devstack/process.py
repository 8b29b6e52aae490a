"""Process helpers for the local stack: run install steps, spawn detached services with pid files and logs,
probe ports and HTTP endpoints, wait for health, and find host tools (apt, java).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, List, Optional

from devstack.config import LOGS, RUN


class StackError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[devstack] {msg}", flush=True)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (localhost only)
        return json.loads(r.read().decode())


def run(cmd: List[str], log_name: str, shown: Optional[List[str]] = None, **kw) -> None:
    """Run an install step to completion, its output appended to a log; raise with the log's tail.
    `shown`: the command as logged, when its arguments hold a secret."""
    LOGS.mkdir(parents=True, exist_ok=True)
    logf = LOGS / f"{log_name}.log"
    shown_cmd = ' '.join(map(str, shown if shown is not None else cmd))
    with open(logf, "ab") as out:
        out.write(f"\n$ {shown_cmd}\n".encode())
        out.flush()
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    if rc != 0:
        raise StackError(f"{log_name}: `{shown_cmd}` exited {rc}\n{tail(logf)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()[-20000:].decode(errors="replace").splitlines()
        return "\n".join("    " + l for l in data[-lines:])
    except OSError:
        return "    (no log)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_pid(name: str) -> Optional[int]:
    try:
        pid = int((RUN / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def spawn(name: str, cmd: List[str], env: Optional[dict] = None, cwd: Optional[Path] = None,
          log_name: Optional[str] = None) -> subprocess.Popen:
    """Start a long-running service detached in its own session; record its pid; log to logs/<name>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    logf = open(LOGS / f"{log_name or name}.log", "ab")
    logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(map(str, cmd))}\n".encode())
    logf.flush()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=str(cwd) if cwd else None,
        start_new_session=True,
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    return proc


def supervisor_name(name: str) -> str:
    return f"{name}-supervisor"


def spawn_supervised(name: str, cmd: List[str], env: Optional[dict] = None,
                     cwd: Optional[Path] = None) -> subprocess.Popen:
    """spawn() under devstack.supervise's restart loop (as Kubernetes restarts a container): a child killed
    with -9 is started again. `<name>.pid` holds the current child (its own process group), the supervisor's
    pid is in `<name>-supervisor.pid`; stopping the supervisor stops the child. A supervisor already running
    for `name` is stopped first (never two loops for one service)."""
    import sys

    old = read_pid(supervisor_name(name))
    if old is not None:
        stop_pid(supervisor_name(name))
    return spawn(supervisor_name(name), [sys.executable, "-m", "devstack.supervise", f"--name={name}", "--", *cmd],
                 env={**(env or {}), "PYTHONPATH": os.pathsep.join(
                     p for p in (str(Path(__file__).resolve().parent.parent),
                                 (env or {}).get("PYTHONPATH") or os.environ.get("PYTHONPATH")) if p)},
                 cwd=cwd, log_name=name)


def stop_pid(name: str, grace_s: float = 20) -> None:
    """SIGTERM the process group recorded in run/<name>.pid, SIGKILL after `grace_s`; remove the pid file."""
    import signal

    pid = read_pid(name)
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    (RUN / f"{name}.pid").unlink(missing_ok=True)
    log(f"stopped {name}")


def wait_until(name: str, check: Callable[[], bool], timeout_s: float, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} while starting\n{tail(LOGS / f'{name}.log')}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a health probe that raises is simply not healthy yet
            pass
        time.sleep(0.5)
    raise StackError(f"{name} not healthy after {timeout_s:.0f}s\n{tail(LOGS / f'{name}.log')}")


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(*packages: str) -> None:
    if not is_root():
        raise StackError(f"missing Debian packages {packages}: install them with apt-get (needs root)")
    run(["apt-get", "update", "-qq"], "apt")
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], "apt",
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    j = shutil.which("java")
    if not j:
        raise StackError("java not found: Java 17 is required")
    return j
