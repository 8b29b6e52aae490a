"""Redis from the Debian packages, append-only, password from the settings file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

from devstack.config import DATA, PORTS, RUN, ensure_env_file, load_env_file
from devstack.process import apt_install, spawn
from devstack.services import Service


def redis_install() -> None:
    if not shutil.which("redis-server"):
        apt_install("redis-server")


def redis_start() -> subprocess.Popen:
    env = ensure_env_file()
    d = DATA / "redis"
    d.mkdir(parents=True, exist_ok=True)
    conf = RUN / "redis.conf"
    RUN.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"port {PORTS['redis']}\nbind 127.0.0.1\ndir {d}\nappendonly yes\nsave \"\"\n"
        f"requirepass {env['REDIS_PASSWORD']}\nprotected-mode yes\n")
    os.chmod(conf, 0o600)
    return spawn("redis", ["redis-server", conf])


def redis_healthy() -> bool:
    env = load_env_file()
    with socket.create_connection(("127.0.0.1", PORTS["redis"]), timeout=1) as s:
        pw = env.get("REDIS_PASSWORD", "")
        s.sendall(f"AUTH {pw}\r\nPING\r\n".encode() if pw else b"PING\r\n")
        time.sleep(0.05)
        return b"+PONG" in s.recv(100)


SERVICE = Service("redis", PORTS["redis"], redis_install, redis_start, redis_healthy, 30, None,
                  f"redis://localhost:{PORTS['redis']}")
