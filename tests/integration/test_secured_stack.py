"""The local stack itself runs secured (the default profile): Kafka SASL_SSL with ACLs, Postgres and Redis over
TLS with one role/user per principal. The throwaway-server tests (test_kafka_sasl_ssl, test_postgres_roles,
test_redis_acl_tls) prove the grants; these prove that the stack every other test, the demo and the benchmarks
use is configured that way: wrong passwords and plaintext clients are refused, and the pipelines' principals
get exactly their own topics, tables and keys."""

from __future__ import annotations

import uuid

import pytest

from devstack import config
from events import topics
from io_connectors.settings import KafkaSettings, PostgresSettings, RedisSettings
from tests.integration.test_kafka_sasl_ssl import _Conf, _consume, _produce, _refused

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def secured_stack(stack):
    if not config.secured():
        pytest.skip("the stack runs the plaintext debugging profile (DEVSTACK_SECURITY=plaintext)")


def _kafka(principal: str, **over) -> _Conf:
    conf = _Conf(KafkaSettings.from_env(principal).librdkafka_config(), log_level=0)
    conf.update(over)
    return conf


def test_kafka_refuses_wrong_passwords_and_plaintext_clients():
    assert "invalid credentials" in _refused(_kafka("pipeline-kpi", **{"sasl.password": "not-the-password"}))
    assert "invalid credentials" in _refused(_kafka("pipeline-kpi", **{
        "sasl.password": KafkaSettings.from_env("pipeline-leads").sasl_password}))
    bootstrap = KafkaSettings.from_env().bootstrap_servers
    assert "transport failure" in _refused({"bootstrap.servers": bootstrap, "security.protocol": "PLAINTEXT"})


def test_the_kpi_principal_reads_its_inputs_and_nothing_else():
    from confluent_kafka import KafkaError

    run = uuid.uuid4().hex[:8]
    kpi = _kafka("pipeline-kpi")
    assert _produce(_kafka("workload"), topics.TURNS) is None
    assert isinstance(_consume(kpi, topics.TURNS, f"iheardai-kpi-acl-{run}"), bytes)  # its input, its group prefix
    for topic in (t.name for t in topics.TOPICS if t.name.startswith("frontend.")):
        err = _consume(kpi, topic, f"iheardai-kpi-acl-{run}")
        assert err is not None and getattr(err, "code", lambda: None)() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    err = _produce(kpi, topics.BILLING)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    err = _consume(kpi, topics.TURNS, f"iheardai-frontend-acl-{run}")  # another pipeline's consumer group
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    assert _produce(kpi, topics.dlq_topic(topics.TURNS)) is None


def _pg(principal: str, **over):
    import psycopg2

    conn = psycopg2.connect(**{**PostgresSettings.from_env(principal).connect_kwargs(), **over})
    conn.autocommit = True
    return conn


def test_postgres_takes_tls_only_with_the_right_password():
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _pg("pipeline-billing", password="not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="no encryption|pg_hba.conf rejects"):
        _pg("pipeline-billing", sslmode="disable")
    conn = _pg("pipeline-billing")
    with conn.cursor() as cur:  # verify-full against the stack's CA, TLS 1.2+
        cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ssl, version = cur.fetchone()
    conn.close()
    assert ssl and version in ("TLSv1.2", "TLSv1.3")


def test_the_billing_role_writes_billing_usage_only():
    import psycopg2

    conn = _pg("pipeline-billing")
    with conn.cursor() as cur:
        cur.execute("SELECT has_table_privilege('billing_usage', 'INSERT'), has_table_privilege('billing_usage', "
                    "'UPDATE'), has_table_privilege('agent_turns', 'INSERT'), has_table_privilege('agent_turns', "
                    "'SELECT'), has_table_privilege('billing_usage', 'DELETE')")
        assert cur.fetchone() == (True, True, False, False, False)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO agent_turns (session_id, turn_id) VALUES ('s', 't')")
    conn.close()
    analytics = _pg("analytics")
    with analytics.cursor() as cur:
        cur.execute("SELECT count(*) >= 0 FROM agent_turns")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("DELETE FROM agent_turns WHERE false")
    analytics.close()


def _redis(principal: str, **over):
    from io_connectors.clients import redis_client

    s = RedisSettings.from_env(principal)
    return redis_client(RedisSettings(**{**s.__dict__, **over}))


def test_redis_takes_tls_only_and_each_user_its_own_keys():
    import redis

    with pytest.raises(redis.AuthenticationError):
        _redis("pipeline-kpi", password="not-the-password").ping()
    with pytest.raises(redis.ConnectionError):
        _redis("pipeline-kpi", tls=False).ping()
    admin, kpi = _redis("admin"), _redis("pipeline-kpi")
    key = f"billing:acl-test:{uuid.uuid4().hex[:8]}"
    admin.set(key, "x", ex=60)
    for call in (lambda: kpi.get(key), lambda: kpi.hset("other:1", "a", "b"), lambda: kpi.keys("*"),
                 lambda: kpi.flushall(), lambda: kpi.eval("return redis.call('GET', KEYS[1])", 1, key)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert kpi.hgetall(f"session:acl-test-{uuid.uuid4().hex[:8]}:state") == {}  # its own pattern
    with pytest.raises(redis.exceptions.NoPermissionError):
        _redis("monitor").get(key)


def test_a_connection_that_does_not_authenticate_can_do_nothing():
    import redis

    anonymous = _redis("admin", username="", password="")
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("session:anything:state")


def test_transactions_and_multi_key_scripts_survive_a_redis_restart():
    """The KPI sink's guard script writes several keys; Redis logs such a script (and any MULTI/EXEC) to the AOF
    as a transaction. With the default user at `-@all`, Redis 7.0 refused every one of them while loading the AOF
    after a restart (its EXEC re-checks ACLs as the default user, redis/redis#14541): state silently lost."""
    import subprocess
    import sys

    from devstack.config import REPO

    sid = f"aof-{uuid.uuid4().hex[:8]}"
    admin, kpi = _redis("admin"), _redis("pipeline-kpi")
    tx = admin.pipeline(transaction=True)  # the KPI user runs scripts only (no MULTI/EXEC)
    tx.hset(f"session:{sid}:state", mapping={"last_turn_id": "t1", "seq": "1"})
    tx.hset(f"session:{sid}:metrics", "total_turns", "1")
    tx.execute()
    kpi.eval("redis.call('HSET', KEYS[1], 'a', '1') redis.call('HSET', KEYS[2], 'b', '2') return 1", 2,
             f"session:{sid}-s:state", f"session:{sid}-s:metrics")
    admin.close()
    kpi.close()
    subprocess.check_call([sys.executable, "-m", "devstack", "down", "redis"], cwd=REPO, stdout=subprocess.DEVNULL)
    subprocess.check_call([sys.executable, "-m", "devstack", "up", "redis"], cwd=REPO, stdout=subprocess.DEVNULL)
    kpi = _redis("pipeline-kpi")
    try:
        assert kpi.hgetall(f"session:{sid}:state") == {b"last_turn_id": b"t1", b"seq": b"1"}
        assert kpi.hget(f"session:{sid}:metrics", "total_turns") == b"1"
        assert kpi.hget(f"session:{sid}-s:state", "a") == b"1" and kpi.hget(f"session:{sid}-s:metrics", "b") == b"2"
    finally:
        _redis("admin").delete(f"session:{sid}:state", f"session:{sid}:metrics", f"session:{sid}-s:state",
                   f"session:{sid}-s:metrics")
