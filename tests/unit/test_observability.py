"""The status service's pieces without services: pipeline names, the metrics and the page built from a
snapshot, structured logs that never carry a secret, and the Prometheus config the stack writes."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry

from observability.collect import Check, Job, Lag, Snapshot, pipeline_of
from events.logs import RedactSecrets, configure, secret_values
from observability.status import _SnapshotMetrics, current_job, render_html, status_doc

pytestmark = pytest.mark.unit
NOW = 1_796_000_000.0


def _snapshot():
    snap = Snapshot(taken_at=NOW)
    snap.health = {"kafka": Check(True, 0.002), "redis": Check(False, 1.0, "ConnectionError: refused")}
    snap.jobs = [
        Job("kpi", "j1", "iheardai-kpi", "RUNNING", int((NOW - 600) * 1000), 600.0, 0, False, int((NOW - 4) * 1000)),
        Job("kpi", "j0", "iheardai-kpi", "CANCELED", int((NOW - 9000) * 1000), 100.0),
        Job("leads", "j2", "iheardai-leads", "RUNNING", int((NOW - 60) * 1000), 60.0, 3, True, None, 0, 0,
            "java.lang.RuntimeException: <boom>\n\tat x", int((NOW - 5) * 1000)),
        Job(None, "j3", "adhoc-job", "RESTARTING", int((NOW - 30) * 1000), 30.0, 2, True),
    ]
    snap.lag = [Lag("iheardai-kpi", "text.agent.turn.completed", 0, 1500, 42.5)]
    snap.dlq_last_hour = {"text.agent.turn.completed.dlq": 7}
    snap.sink_last_write = {"agent_turns": NOW - 30}
    snap.consumed_per_s = {"iheardai-kpi": 12.5}
    return snap


def test_throughput_is_the_groups_committed_records_per_second_over_a_minute():
    from observability.collect import Collector

    c = Collector()
    snap = Snapshot()
    clock = iter([1000.0, 1010.0, 1030.0, 1070.0, 1100.0])
    real = time.time
    time.time = lambda: next(clock)
    try:
        for total in (100, 100, 400, 1200, 1200):  # commits arrive with checkpoints
            c._throughput(snap, [("g", "t", 0, total - 50, 0), ("g", "t", 1, 50, 0)])
    finally:
        time.time = real
    assert snap.consumed_per_s["g"] == pytest.approx((1200 - 400) / (1100 - 1030))  # the last minute


def test_a_job_belongs_to_the_pipeline_its_name_names():
    assert pipeline_of("iheardai-kpi") == "kpi"
    assert pipeline_of("e2e-frontend-t1a2b3") == "frontend"
    assert pipeline_of("iheardai-kpiv2") is None and pipeline_of("e2e-crash-t1") is None


def test_metrics_of_a_snapshot():
    reg = CollectorRegistry()
    reg.register(_SnapshotMetrics(type("C", (), {"snapshot": _snapshot()})()))
    text = generate_latest(reg).decode()
    assert 'iheardai_job_up{job_name="iheardai-kpi",pipeline="kpi"} 1.0' in text
    assert 'iheardai_job_up{job_name="iheardai-leads",pipeline="leads"} 1.0' in text  # RUNNING, but:
    assert 'iheardai_job_restarting{job_name="iheardai-leads",pipeline="leads"} 1.0' in text
    assert 'iheardai_job_up{job_name="",pipeline="billing"} 0.0' in text  # no job at all
    assert 'iheardai_job_restarts{job_name="iheardai-leads",pipeline="leads"} 3.0' in text
    assert 'iheardai_job_last_checkpoint_age_seconds{pipeline="kpi"} 4.0' in text
    assert ('iheardai_consumer_lag_messages{group="iheardai-kpi",partition="0",'
            'topic="text.agent.turn.completed"} 1500.0') in text
    assert 'iheardai_health_up{service="redis"} 0.0' in text
    assert 'iheardai_dlq_messages_last_hour{topic="text.agent.turn.completed.dlq"} 7.0' in text
    assert 'iheardai_sink_last_write_timestamp_seconds{table="agent_turns"}' in text
    assert 'iheardai_consumer_records_per_second{group="iheardai-kpi"} 12.5' in text
    assert "adhoc" not in text  # jobs of no pipeline are listed on the page, not in the pipeline metrics


def test_status_document_and_page():
    snap = _snapshot()
    assert current_job(snap, "kpi").job_id == "j1"  # the live one, not the newer cancelled one
    doc = json.loads(json.dumps(status_doc(snap, [{"status": "firing", "labels": {"alertname": "PipelineDown"},
                                                   "annotations": {"summary": "kpi <down>"}}]), default=str))
    assert doc["healthy"] is False and doc["pipelines"]["billing"] is None
    assert doc["pipelines"]["leads"]["restarting"] is True
    assert doc["pipelines"]["leads"]["last_exception"].startswith("java.lang.RuntimeException")
    page = render_html(doc)
    assert "UNHEALTHY" in page and "RESTARTING" in page and "adhoc-job" in page and "PipelineDown" in page
    assert "&lt;boom&gt;" in page and "<boom>" not in page and "kpi &lt;down&gt;" in page  # escaped
    assert "30 s ago" in page  # agent_turns freshness
    assert "12.5/s" in page  # the group's throughput


def test_json_logs_carry_component_step_level_and_never_a_secret(monkeypatch, tmp_path):
    secret = "s3cr3t-Value-123"
    key_file = tmp_path / "key"
    key_file.write_text("file-held-secret-456\n")
    monkeypatch.setenv("POSTGRES_PASSWORD", secret)
    monkeypatch.setenv("PII_HMAC_KEY_FILE", str(key_file))
    assert {secret, "file-held-secret-456"} <= set(secret_values())
    out = io.StringIO()
    handler = configure("kpi", stream=out)
    try:
        logging.getLogger("io_connectors.postgres").warning("connect with %s failed", secret)
        try:
            raise RuntimeError(f"auth failed for password={secret} and file-held-secret-456")
        except RuntimeError:
            logging.getLogger("io_connectors.postgres").exception("batch failed")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["component"] == "kpi" and lines[0]["step"] == "io_connectors.postgres"
    assert lines[0]["level"] == "WARNING" and lines[0]["message"] == "connect with <redacted> failed"
    assert "RuntimeError" in lines[1]["message"] and secret not in out.getvalue()
    assert "file-held-secret-456" not in out.getvalue()


def test_short_values_are_not_treated_as_secrets():
    f = RedactSecrets(["abc"])  # explicitly given: used as is
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "abc def", None, None)
    f.filter(rec)
    assert rec.msg == "<redacted> def"
    assert "ab" not in secret_values({"REDIS_PASSWORD": "ab", "PATH": "/usr/bin"})


def test_prometheus_config_scrapes_every_target_and_loads_the_repo_rules():
    from devstack.services.monitoring import RULES, prometheus_config

    conf = prometheus_config()
    for job in ("flink", "postgres", "redis", "status", "alertmanager", "prometheus"):
        assert f"job_name: {job}\n" in conf
    assert "localhost:9249, localhost:9250" in conf and f"{RULES}/*.yml" in conf
    import re

    from events.metrics import step_namespace
    from devstack.services.monitoring import STEP_METRIC

    # what Flink's reporter makes of a step's counter (`<namespace>.<name>`, invalid characters as '_')
    flink_name = "flink_taskmanager_job_task_operator_" + re.sub(
        r"[^a-zA-Z0-9:_]", "_", f"{step_namespace('Validate[text.agent.turn.completed]')}.dead_letters_invalid_json")
    m = re.fullmatch(STEP_METRIC, flink_name)
    assert m and m.groups() == ("Validate_text_agent_turn_completed_", "dead_letters_invalid_json")


def test_a_flink_exception_is_kept_without_its_java_frames_so_the_python_root_cause_fits():
    from observability.collect import trace_summary

    frames = "".join(f"\tat org.apache.flink.Frame{i}.run(Frame.java:{i})\n" for i in range(400))
    trace = (f"java.lang.Exception: Could not perform checkpoint 1\n{frames}\t... 12 more\n"
             f"Caused by: java.lang.RuntimeException: Failed to finish remote bundle\n{frames}"
             "Traceback (most recent call last):\n  File \"crashing_pipeline.py\", line 40, in _refuse\n"
             "CrashingPipelineError: crashing_pipeline refuses every element (offset 3)\n")
    assert len(trace) > 20_000
    summary = trace_summary(trace)
    assert summary.splitlines() == [
        "java.lang.Exception: Could not perform checkpoint 1",
        "Caused by: java.lang.RuntimeException: Failed to finish remote bundle",
        "Traceback (most recent call last):", '  File "crashing_pipeline.py", line 40, in _refuse',
        "CrashingPipelineError: crashing_pipeline refuses every element (offset 3)"]
