"""Redis from the Debian packages, append-only.

Secured profile (the default): TLS only (`port 0`, `tls-port`, the local CA's certificate; clients are not
asked for certificates), the default user off and one ACL user per principal with its own key patterns and
commands (devstack/principals.py, passwords stored as SHA-256 in a 0600 ACL file). Plaintext profile: one
password (`requirepass`) from the settings file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

from devstack.config import DATA, HOME, PORTS, RUN, TLS_DIR, ensure_env_file, load_env_file, secured
from devstack.process import apt_install, spawn
from devstack.services import Service


def redis_install() -> None:
    if not shutil.which("redis-server"):
        apt_install("redis-server")


def _write_private(path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def redis_start() -> subprocess.Popen:
    env = ensure_env_file()
    d = DATA / "redis"
    d.mkdir(parents=True, exist_ok=True)
    conf = RUN / "redis.conf"
    RUN.mkdir(parents=True, exist_ok=True)
    common = f"bind 127.0.0.1\ndir {d}\nappendonly yes\nsave \"\"\nprotected-mode yes\n"
    if secured():
        from devstack import principals as pr
        from devstack import tls

        t = tls.ensure_tls(TLS_DIR)
        ps = pr.principals()
        acl = RUN / "redis-users.acl"
        _write_private(acl, "\n".join(pr.redis_acl_lines(
            ps, pr.read_passwords(pr.ensure_passwords(HOME, ps)["redis"]))) + "\n")
        _write_private(conf, f"port 0\ntls-port {PORTS['redis']}\n"
                             f"tls-cert-file {t.services['redis'].cert}\ntls-key-file {t.services['redis'].key}\n"
                             f"tls-ca-cert-file {t.ca_cert}\ntls-auth-clients no\ntls-protocols \"TLSv1.2 TLSv1.3\"\n"
                             f"aclfile {acl}\n{common}")
    else:
        _write_private(conf, f"port {PORTS['redis']}\nrequirepass {env['REDIS_PASSWORD']}\n{common}")
    return spawn("redis", ["redis-server", conf])


def redis_healthy() -> bool:
    if secured():
        from io_connectors.clients import redis_client
        from io_connectors.settings import RedisSettings

        client = redis_client(RedisSettings.from_env("monitor"), timeout_s=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    env = load_env_file()
    with socket.create_connection(("127.0.0.1", PORTS["redis"]), timeout=1) as s:
        pw = env.get("REDIS_PASSWORD", "")
        s.sendall(f"AUTH {pw}\r\nPING\r\n".encode() if pw else b"PING\r\n")
        time.sleep(0.05)
        return b"+PONG" in s.recv(100)


SERVICE = Service("redis", PORTS["redis"], redis_install, redis_start, redis_healthy, 30, None,
                  f"redis{'s' if secured() else ''}://localhost:{PORTS['redis']}")
