"""The Redis ACL users of devstack/principals.py on a throwaway TLS-only redis-server (never the shared one):
a plaintext client and a wrong password are refused, the KPI user runs the real session sink (its Lua guard
script) on `session:*` keys and cannot touch any other key, the monitor user reads server stats only."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from devstack import principals as pr
from devstack import tls
from io_connectors.redis_state import SessionStateWriter
from io_connectors.settings import RedisSettings
from tests.throwaway import free_port, ready_if, stop, wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    import redis

    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip("no redis-server")
    root = Path(tempfile.mkdtemp(prefix="iheardai-throwaway-redis-", dir="/var/tmp"))
    t = tls.ensure_tls(root / "tls", services=("redis",))
    ps = pr.principals()
    passwords = pr.read_passwords(pr.ensure_passwords(root, ps)["redis"])
    acl = root / "users.acl"
    acl.write_text("\n".join(pr.redis_acl_lines(ps, passwords)) + "\n")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(t.services["redis"].cert), "--tls-key-file",
                             str(t.services["redis"].key), "--tls-ca-cert-file", str(t.ca_cert),
                             "--tls-auth-clients", "no", "--aclfile", str(acl), "--save", "", "--appendonly", "no",
                             "--dir", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(ready_if(lambda: redis.Redis(host="localhost", port=port, username="admin",
                                                password=passwords["admin"], ssl=True,
                                                ssl_ca_certs=str(t.ca_cert)).ping(), (redis.RedisError,)),
                   proc, "redis-server", 20)
        yield {"port": port, "ca": str(t.ca_cert), "passwords": passwords}
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _client(s, user, password=None, **over):
    import redis

    kw = dict(host="localhost", port=s["port"], username=user, password=password or s["passwords"][user], ssl=True,
              ssl_ca_certs=s["ca"], ssl_cert_reqs="required", socket_timeout=5)
    kw.update(over)
    return redis.Redis(**kw)


def test_plaintext_and_wrong_passwords_are_refused(server):
    import redis

    with pytest.raises(redis.ConnectionError):
        _client(server, "pipeline-kpi", ssl=False).ping()
    with pytest.raises(redis.AuthenticationError):
        _client(server, "pipeline-kpi", "not-the-password").ping()
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        redis.Redis(host="localhost", port=server["port"], ssl=True, ssl_ca_certs=server["ca"]).get("x")


def test_the_kpi_user_runs_the_session_sink_and_touches_nothing_else(server, monkeypatch):
    import redis

    monkeypatch.setenv("REDIS_TLS_CA_FILE", server["ca"])
    writer = SessionStateWriter(settings=RedisSettings("localhost", server["port"], server["passwords"]["pipeline-kpi"],
                                                       "pipeline-kpi", True, 0))
    writer.connect()
    try:
        event = {"session_id": "s1", "turn_id": "t1", "seq": 1, "event_time_ms": 1_795_000_000_000,
                 "message": "hi", "response_time_ms": 120.0}
        assert writer.write([event]) == []
    finally:
        writer.close()
    admin = _client(server, "admin")
    assert admin.hget("session:s1:state", "last_turn_id") == b"t1"
    admin.set("billing:secret", "x")
    kpi = _client(server, "pipeline-kpi")
    for call in (lambda: kpi.get("billing:secret"), lambda: kpi.hset("other:1", "a", "b"),
                 lambda: kpi.keys("*"), lambda: kpi.flushall(), lambda: kpi.config_get("*"),
                 lambda: kpi.eval("return redis.call('GET', KEYS[1])", 1, "billing:secret")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert kpi.hget("session:s1:metrics", "total_turns") == b"1"
    monitor = _client(server, "monitor")
    assert "redis_version" in monitor.info()
    with pytest.raises(redis.exceptions.NoPermissionError):
        monitor.hgetall("session:s1:state")
