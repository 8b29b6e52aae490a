"""The local stack: install (cached), start, health-check and stop real services, without Docker.

Every service is a real process started by this package and recorded in $DEVSTACK_HOME/run/<name>.pid;
`down` stops only those. `up` is idempotent: a service already healthy is left alone. The services are
modules under devstack/services/; this module lists them in start order and runs the commands of
`python -m devstack up [service...] | status | down [service...] | restart-taskmanager | env | logs`.
"""

from __future__ import annotations

import sys
import time
from typing import List, Optional

from devstack.config import DATA, DOWNLOADS, ENV_FILE, LOGS, RUN, ensure_env_file, ensure_security, load_env_file
from devstack.process import StackError, log, port_open, read_pid, stop_pid, wait_until
from devstack.services import (Service, beam_services, collector, flink, kafka, monitoring, postgres, redis, s3,
                               worker_pool)

SERVICES: List[Service] = [
    postgres.SERVICE,
    redis.SERVICE,
    s3.SERVICE,
    kafka.SERVICE,
    collector.SERVICE,
    flink.SERVICE,
    worker_pool.SERVICE,
    beam_services.EXPANSION_SERVICE,
    beam_services.JOB_SERVER,
    monitoring.POSTGRES_EXPORTER,
    monitoring.REDIS_EXPORTER,
    monitoring.STATUS,
    monitoring.ALERTMANAGER,
    monitoring.PROMETHEUS,
]


def _healthy(svc: Service) -> bool:
    try:
        return bool(svc.healthy())
    except Exception:  # noqa: BLE001
        return False


def up(names: Optional[List[str]] = None) -> int:
    t0 = time.monotonic()
    for d in (DOWNLOADS, DATA, RUN, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    ensure_env_file()
    ensure_security()
    for svc in SERVICES:
        if names and svc.name not in names:
            continue
        try:
            if _healthy(svc):
                if svc.after_start:
                    svc.after_start()
                log(f"{svc.name:18} already up  {svc.address}")
                continue
            if port_open(svc.port):
                raise StackError(f"{svc.name}: port {svc.port} is taken by a process this stack did not start")
            t = time.monotonic()
            svc.install()
            proc = svc.start()
            wait_until(svc.name, lambda: _healthy(svc), svc.timeout_s, proc)
            if svc.after_start:
                svc.after_start()
            log(f"{svc.name:18} up in {time.monotonic() - t:5.1f}s  {svc.address}")
        except StackError as e:
            log(f"FAILED to start {svc.name}: {e}")
            log(f"logs: {LOGS}")
            return 1
    log(f"stack up in {time.monotonic() - t0:.1f}s; logs in {LOGS}; settings in {ENV_FILE}")
    return 0


def status() -> int:
    bad = 0
    for svc in SERVICES:
        ok = _healthy(svc)
        pid = read_pid(svc.name)
        bad += not ok
        print(f"{svc.name:18} {'UP  ' if ok else 'DOWN'} pid={pid or '-':<8} {svc.address}")
    print(f"logs: {LOGS}")
    return 1 if bad else 0


def down(names: Optional[List[str]] = None) -> int:
    """Stop what `up` started (all services, in reverse order, or only `names`)."""
    services = [svc for svc in reversed(SERVICES) if names is None or svc.name in names]
    unknown = sorted(set(names or ()) - {svc.name for svc in SERVICES})
    if unknown:
        log(f"unknown services {unknown}; known: {[svc.name for svc in SERVICES]}")
        return 2
    for svc in services:
        if svc.stop is not None and read_pid(svc.name) is not None:
            svc.stop()
        for name in (*svc.extra_pids, svc.name):
            _stop_pid(name)
    return 0


def _stop_pid(name: str) -> None:
    stop_pid(name)


def main(argv: List[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        return up(argv[1:] or None)
    if cmd == "status":
        return status()
    if cmd == "down":
        return down(argv[1:] or None)
    if cmd == "env":
        # Names only: values are credentials.
        print("\n".join(f"{k}=<set>" for k in load_env_file()))
        return 0
    if cmd == "restart-taskmanager":
        flink.restart_taskmanager()
        return 0
    if cmd == "logs":
        print(LOGS)
        return 0
    print("usage: python -m devstack up [service...] | status | down [service...] | restart-taskmanager | env | logs",
          file=sys.stderr)
    return 2
