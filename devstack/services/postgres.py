"""Postgres from the Debian packages, its cluster in $DEVSTACK_HOME/data/pg; the project role and database."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import List

from devstack.config import DATA, HOME, PORTS, ensure_env_file
from devstack.process import StackError, apt_install, is_root, pid_alive, port_open, run, spawn
from devstack.services import Service


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent


def _as_pg_user(cmd: List) -> List[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if is_root() else list(map(str, cmd))


PGDATA = DATA / "pg"


def pg_install() -> None:
    bindir = _pg_bin()
    if (PGDATA / "PG_VERSION").exists():
        return
    PGDATA.mkdir(parents=True, exist_ok=True)
    if is_root():
        for p in (HOME, DATA):
            os.chmod(p, 0o755)
        shutil.chown(PGDATA, "postgres", "postgres")
    os.chmod(PGDATA, 0o700)
    pw = PGDATA.parent / ".pg-superuser-pw"
    pw.write_text(secrets.token_urlsafe(24))
    if is_root():
        shutil.chown(pw, "postgres", "postgres")
    try:
        run(_as_pg_user([bindir / "initdb", "-D", PGDATA, "-U", "postgres", f"--pwfile={pw}",
                         "--auth-local=peer" if is_root() else "--auth-local=trust",
                         "--auth-host=scram-sha-256", "-E", "UTF8"]), "postgres")
    finally:
        pw.unlink(missing_ok=True)


def pg_start() -> subprocess.Popen:
    bindir = _pg_bin()
    return spawn("postgres", _as_pg_user([
        bindir / "postgres", "-D", PGDATA, "-p", PORTS["postgres"], "-k", PGDATA,
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=200",
        "-c", "shared_buffers=256MB"]))


def _psql(sql: str, db: str = "postgres") -> str:
    bindir = _pg_bin()
    user_args = [] if is_root() else ["-U", "postgres"]
    out = subprocess.run(_as_pg_user([bindir / "psql", "-h", PGDATA, "-p", PORTS["postgres"], *user_args,
                                      "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise StackError(f"postgres: psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def pg_healthy() -> bool:
    bindir = _pg_bin()
    return port_open(PORTS["postgres"]) and subprocess.call(
        [bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(PORTS["postgres"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def pg_after_start() -> None:
    env = ensure_env_file()
    user, db, pw = env["POSTGRES_USER"], env["POSTGRES_DB"], env["POSTGRES_PASSWORD"]
    if _psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'") != "1":
        _psql(f"CREATE ROLE {user} LOGIN")
    # The password is set from the env file on every start (kept in sync, never echoed).
    pw_sql = pw.replace("'", "''")
    _psql(f"ALTER ROLE {user} WITH LOGIN PASSWORD '{pw_sql}'")
    if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") != "1":
        _psql(f"CREATE DATABASE {db} OWNER {user}")


def pg_stop(timeout_s: float = 60) -> None:
    """Fast shutdown (SIGINT to the postmaster: sessions are ended, the cluster is checkpointed) and wait for
    it to exit. SIGTERM through runuser is a smart shutdown that waits for every client, and runuser kills
    the postmaster 2 s later, leaving backends that hold the data directory's lock for the next start."""
    try:
        pid = int((PGDATA / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


SERVICE = Service("postgres", PORTS["postgres"], pg_install, pg_start, pg_healthy, 60, pg_after_start,
                  f"postgresql://localhost:{PORTS['postgres']}/iheardai", stop=pg_stop)
