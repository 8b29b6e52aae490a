"""Throwaway services for tests that must not touch the shared local stack: a Postgres cluster in a temp
directory on a free port, started and stopped by the test (about 2 s)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise FileNotFoundError("no Postgres server binaries under /usr/lib/postgresql (apt-get install postgresql)")
    return Path(found[-1]).parent


def _as_pg_user(cmd: List) -> List[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if os.geteuid() == 0 else list(map(str, cmd))


def wait_ready(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout_s: float = 60,
               log: Callable[[], str] = lambda: "") -> None:
    """Poll `ready()` until true; RuntimeError (with `log()`) if the process exits or the time is up."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the throwaway {what} did not start {log()}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def ready_if(check: Callable[[], object], errors: Tuple[type, ...] = (Exception,)) -> Callable[[], bool]:
    """A readiness probe from a call that raises while the service is not up."""
    def probe() -> bool:
        try:
            check()
        except errors:
            return False
        return True
    return probe


@contextlib.contextmanager
def throwaway_postgres(password: str = "throwaway-pw-1") -> Iterator[dict]:
    """A fresh cluster in a temp directory with role `t` (password auth over TCP); yields connect kwargs.
    The directory is not pytest's tmp_path: as root the server runs as `postgres`, which cannot enter it."""
    bindir, port = _pg_bin(), free_port()
    root = Path(tempfile.mkdtemp(prefix="iheardai-throwaway-pg-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    data = root / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    pw = root / "pw"
    pw.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(pw, "postgres", "postgres")
    subprocess.run(_as_pg_user([bindir / "initdb", "-D", data, "-U", "t", f"--pwfile={pw}", "--auth=scram-sha-256",
                                "-E", "UTF8"]), check=True, capture_output=True)
    proc = subprocess.Popen(_as_pg_user([bindir / "postgres", "-D", data, "-p", port, "-k", data,
                                         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kwargs = dict(host="127.0.0.1", port=port, dbname="postgres", user="t", password=password)
    try:
        wait_ready(lambda: subprocess.call([bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                                           stdout=subprocess.DEVNULL) == 0, proc, "Postgres", 30)
        yield kwargs
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)
