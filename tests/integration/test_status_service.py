"""The status service as the README starts it (`python -m observability.status`), against the real stack:
/health names a stopped Redis and recovers when it is back; /status and /metrics answer from live data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
PORT = 8011


def _get(path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout_s}s (last: {last!r})")


@pytest.fixture
def status_service(stack):
    proc = subprocess.Popen([sys.executable, "-m", "observability.status", "--port", str(PORT), "--interval", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _get("/metrics")[0] == 200, 60, "status service up")
        yield proc
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
        lines = [line for line in out.splitlines() if line.startswith("{")]
        assert lines and all(json.loads(line)["component"] == "status" for line in lines)  # JSON logs


def test_health_names_a_stopped_redis_and_recovers(status_service):
    code, body = _get("/health")
    assert code == 200, body
    doc = json.loads(body)
    assert set(doc["checks"]) == {"kafka", "postgres", "redis", "s3", "flink"}
    assert all(c["ok"] and c["latency_ms"] >= 0 for c in doc["checks"].values())
    subprocess.check_call([sys.executable, "-m", "devstack", "down", "redis"], cwd=REPO)
    try:
        doc = _wait(lambda: (lambda c, b: json.loads(b) if c == 503 else None)(*_get("/health")), 30,
                    "/health unhealthy")
        assert doc["status"] == "unhealthy" and doc["down"] == ["redis"]
        assert doc["checks"]["redis"]["error"] and doc["checks"]["kafka"]["ok"]
        assert b'iheardai_health_up{service="redis"} 0.0' in _get("/metrics")[1]
    finally:
        subprocess.check_call([sys.executable, "-m", "devstack", "up", "redis"], cwd=REPO)
    _wait(lambda: _get("/health")[0] == 200, 30, "/health healthy again")


def test_status_and_metrics_answer_from_the_live_stack(status_service):
    code, body = _get("/status")
    assert code == 200
    doc = json.loads(body)
    assert set(doc["pipelines"]) == {"kpi", "frontend", "billing", "archive", "leads"}
    assert "text.agent.turn.completed.dlq" in doc["dlq_last_hour"] and doc["topic_messages"]
    assert doc["errors"] == {}, doc["errors"]
    page = _get("/status.html")[1].decode()
    assert "<h2>Jobs</h2>" in page and "Consumer lag" in page
    metrics = _get("/metrics")[1].decode()
    assert 'iheardai_job_up{' in metrics and "iheardai_topic_messages_total{" in metrics


def test_every_group_behind_gets_the_age_of_its_oldest_record(status_service, run_id):
    """150 groups at 150 different offsets of one partition (a cluster keeps every group the suites and the
    pipelines ever used): each one's lag in seconds is read within a few passes, and stays. It once read 30
    positions per pass and started over in each, so the newest groups never had an age."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from io_connectors.settings import KafkaSettings, librdkafka_for

    bootstrap, topic, n = KafkaSettings.from_env().bootstrap_servers, "agent.tool.invoked.dlq", 150
    producer = Producer(librdkafka_for(bootstrap, "workload"))
    for _ in range(n + 1):
        producer.produce(topic, b"{}", key=run_id.encode(), partition=0)
    assert producer.flush(30) == 0
    c = Consumer({**librdkafka_for(bootstrap, "workload"), "group.id": f"e2e-{run_id}", "enable.auto.commit": False})
    end = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    c.close()
    groups = [f"e2e-{run_id}-{i}" for i in range(n)]
    for i, group in enumerate(groups):  # group i is n - i records behind
        g = Consumer({**librdkafka_for(bootstrap, "workload"), "group.id": group, "enable.auto.commit": False})
        g.commit(offsets=[TopicPartition(topic, 0, end - n + i)], asynchronous=False)
        g.close()

    def aged():
        lag = {x["group"]: x for x in json.loads(_get("/status")[1])["lag"]
               if x["group"].startswith(f"e2e-{run_id}-") and x["topic"] == topic}
        return len(lag) == n and all(x["messages"] >= n - i and x["seconds"] > 0
                                     for i, x in enumerate(lag[g] for g in groups)) and lag

    try:
        lag = _wait(aged, 30, f"{n} groups behind, each with an age")
        assert all(lag[g]["seconds"] < 600 for g in groups), "ages of records produced a moment ago"
    finally:  # the status service would watch them forever (and every later run would add 150)
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(librdkafka_for(bootstrap, "admin"))
        for f in admin.delete_consumer_groups(groups, request_timeout=30).values():
            f.result()


@pytest.mark.parametrize("name, path", [("status", "/metrics"), ("collector", "/health")])
def test_the_stacks_service_comes_back_after_its_process_dies(stack, name, path):
    """The stack's status service and collector run supervised, as their Deployments' containers are restarted:
    librdkafka once aborted the status service (an assertion, while the broker was stopped) and every later
    check of the status page met a dead port."""
    import os
    import signal

    from devstack.config import PORTS
    from devstack.process import read_pid

    def answers():
        with urllib.request.urlopen(f"http://127.0.0.1:{PORTS[name]}{path}", timeout=5) as r:
            return r.status == 200

    old = read_pid(name)
    assert old is not None and answers(), f"{name} is not up before the test"
    os.kill(old, signal.SIGABRT)  # what an assertion in a C library does to the process
    _wait(lambda: read_pid(name) not in (None, old) and answers(), 60, f"{name} started again after SIGABRT")
