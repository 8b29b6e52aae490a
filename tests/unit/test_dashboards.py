"""The Grafana dashboards as code (observability/dashboards.py) and where they are deployed.

    .venv/bin/pytest tests/unit/test_dashboards.py

The checked-in JSON and Kubernetes manifests must be what the code renders; every Prometheus panel query
must parse (promtool) and read only metrics of the contract the alert rules use; the SQL queries are run on
the real Postgres in tests/integration/test_dashboard_sql.py; the live Prometheus test runs
`prometheus_queries()`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from observability import dashboards
from tests.unit import prometheus_tools
from tests.unit.test_alert_rules import RULE_FILES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

# The metrics Prometheus has (the status service, Flink's reporter, the exporters, Prometheus and Alertmanager).
CONTRACT = {
    "up",
    "flink_jobmanager_job_uptime", "flink_jobmanager_job_numRestarts",
    "flink_jobmanager_job_numberOfFailedCheckpoints", "flink_jobmanager_job_numberOfCompletedCheckpoints",
    "flink_jobmanager_job_lastCheckpointDuration", "flink_jobmanager_numRunningJobs",
    "flink_taskmanager_job_task_numRecordsInPerSecond", "flink_taskmanager_job_task_busyTimeMsPerSecond",
    "flink_taskmanager_job_task_backPressuredTimeMsPerSecond", "flink_taskmanager_Status_JVM_Memory_Heap_Used",
    "flink_taskmanager_job_task_currentInputWatermark",
    "iheardai_job_up", "iheardai_job_restarts", "iheardai_job_uptime_seconds",
    "iheardai_job_last_checkpoint_age_seconds", "iheardai_job_failed_checkpoints",
    "iheardai_consumer_lag_messages", "iheardai_consumer_lag_seconds", "iheardai_topic_messages_total",
    "iheardai_dlq_messages_last_hour", "iheardai_sink_last_write_timestamp_seconds",
    "iheardai_archive_last_write_timestamp_seconds", "iheardai_health_up", "iheardai_health_latency_seconds",
    "iheardai_marketo_last_success_timestamp_seconds", "iheardai_marketo_last_run_calls",
    "iheardai_marketo_last_run_published", "iheardai_marketo_last_run_ok", "iheardai_db_operation_seconds_max",
    "iheardai_collector_errors",
    "pg_up", "pg_stat_activity_max_tx_duration",
    "redis_up", "redis_connected_clients", "redis_commands_total", "redis_commands_duration_seconds_total",
    "redis_memory_used_bytes",
    "prometheus_rule_evaluation_failures_total", "alertmanager_notifications_failed_total",
}
CONTRACT_PREFIXES = ("pg_stat_database_",)
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
                "bool", "inf", "nan"}


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression selects (strings, matchers, ranges, grouping labels removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in _NOT_METRICS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(0))
    return names


def in_contract(name: str) -> bool:
    return name in CONTRACT or name.startswith(CONTRACT_PREFIXES)


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_tools.promtool()


# --- generated files -------------------------------------------------------------------------------------

def test_generated_files_are_current():
    res = subprocess.run([sys.executable, "-m", "observability.dashboards", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert set(dashboards.render()) == {*(dashboards.OUT_DIR / f"{n}.json" for n in dashboards.DASHBOARDS),
                                        dashboards.K8S_FILE}


def test_check_fails_on_a_stale_or_missing_file_and_a_run_repairs_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dashboards, "OUT_DIR", tmp_path / "observability" / "dashboards")
    monkeypatch.setattr(dashboards, "K8S_FILE", tmp_path / "flink-deploy" / "base" / "observability-generated.yaml")
    monkeypatch.setattr(dashboards, "REPO", tmp_path)
    assert dashboards.main(["--check"]) == 1  # nothing written yet
    assert dashboards.main([]) == 0
    assert dashboards.main(["--check"]) == 0
    capsys.readouterr()
    kafka = dashboards.OUT_DIR / "kafka-metrics.json"
    kafka.write_text(kafka.read_text().replace("iheardai_consumer_lag_seconds", "iheardai_lag"))
    assert dashboards.main(["--check"]) == 1
    assert "stale: observability/dashboards/kafka-metrics.json" in capsys.readouterr().err
    assert dashboards.main([]) == 0 and dashboards.main(["--check"]) == 0


def test_the_kubernetes_manifests_hold_the_dashboards_and_the_alert_rules():
    docs = [d for d in yaml.safe_load_all(dashboards.K8S_FILE.read_text()) if d]
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert set(maps) == {f"iheardai-dashboard-{n}" for n in dashboards.DASHBOARDS}
    for name in dashboards.DASHBOARDS:
        cm = maps[f"iheardai-dashboard-{name}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, text), = cm["data"].items()
        assert key == f"iheardai-{name}.json" and json.loads(text) == dashboards.dashboard_json(name)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == [g for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]]


# --- the dashboards --------------------------------------------------------------------------------------

def test_four_dashboards_with_stable_uids_and_every_panel_queried():
    assert list(dashboards.DASHBOARDS) == ["pipeline-overview", "kafka-metrics", "database-performance",
                                           "business-kpis"]
    uids = set()
    for name in dashboards.DASHBOARDS:
        doc = dashboards.dashboard_json(name)
        uids.add(doc["uid"])
        assert doc["title"].startswith("iheardAI ") and "iheardai" in doc["tags"]
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        panels = [p for p in doc["panels"] if p["type"] != "row"]
        assert len(panels) >= 6, name
        assert [p["id"] for p in doc["panels"]] == list(range(1, len(doc["panels"]) + 1))
        for p in panels:
            assert p["targets"], f"{name}: {p['title']} has no query"
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, f"{name}: {p['title']} overflows the grid"
            ds = p["datasource"]
            var = variables[ds["uid"].strip("${}")]  # the panel's data source is a dashboard variable
            assert var["type"] == "datasource" and var["query"] == ds["type"]
            for t in p["targets"]:
                assert t["datasource"] == ds and len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    assert uids == {"iheardai-pipeline-overview", "iheardai-kafka", "iheardai-database", "iheardai-business-kpis"}


def test_prometheus_queries_cover_every_prometheus_panel():
    queries = dashboards.prometheus_queries()
    assert len(queries) >= 40
    for q in queries:
        assert "$" not in q.expr.replace('"$1"', ""), f"{q.panel}: a Grafana variable is left in {q.expr}"
    per_dashboard = {q.dashboard for q in queries}
    assert per_dashboard == {"pipeline-overview", "kafka-metrics", "database-performance"}
    assert {q.dashboard for q in dashboards.sql_queries()} == {"business-kpis"}


def test_prometheus_queries_parse(promtool, tmp_path):
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel:q{i}", "expr": q.expr} for i, q in enumerate(dashboards.prometheus_queries())]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_queries_read_only_contract_metrics():
    assert metric_names('sum by (topic) (rate(x_total{topic=~"a.dlq"}[5m] offset 1h)) / on (a) y > 1e3') == {
        "x_total", "y"}
    from tests.unit.test_alert_rules import _rules

    recorded = {r["record"] for r in _rules() if "record" in r}  # a panel may read what a rule records
    for q in dashboards.prometheus_queries():
        unknown = {n for n in metric_names(q.expr) if not in_contract(n) and n not in recorded}
        assert not unknown, f"{q.dashboard} / {q.panel}: {sorted(unknown)} are not in the metric contract"


def test_alert_rules_read_only_contract_metrics_or_their_recordings():
    from tests.unit.test_alert_rules import _rules

    recorded = {r["record"] for r in _rules() if "record" in r}
    for r in _rules():
        unknown = {n for n in metric_names(r["expr"]) if not in_contract(n) and n not in recorded}
        assert not unknown, f"{r.get('alert') or r['record']}: {sorted(unknown)} are not in the metric contract"


def test_sql_queries_use_only_the_time_filter_macro():
    for q in dashboards.sql_queries(hours=6):
        assert "$" not in q.expr, f"{q.panel}: a Grafana macro sql_queries() does not expand"
        assert "interval '6 hours'" in q.expr or "marketo_leads" in q.expr, q.panel
    raw = [t["rawSql"] for p in dashboards.dashboard_json("business-kpis")["panels"] for t in p.get("targets", [])]
    assert all(set(re.findall(r"\$__\w+", sql)) <= {"$__timeFilter"} for sql in raw)


# --- Docker -------------------------------------------------------------------------------------------------

def test_promtool_check_config_of_the_compose_prometheus(promtool):
    res = subprocess.run([promtool, "check", "config", str(REPO / "observability" / "docker" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_provisions_grafana_prometheus_and_alertmanager_from_the_repo():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]

    def mounts(service):
        return {v.split(":")[0]: v.split(":")[1] for v in services[service]["volumes"] if v.startswith("./")}

    grafana = mounts("grafana")
    assert grafana["./observability/dashboards"] == "/var/lib/grafana/dashboards/iheardai"
    provider = yaml.safe_load((REPO / "observability/docker/grafana/dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/iheardai"
    sources = yaml.safe_load((REPO / "observability/docker/grafana/datasources.yml").read_text())["datasources"]
    assert {s["type"] for s in sources} == {dashboards.PROMETHEUS_TYPE, dashboards.POSTGRES_TYPE}
    for path in grafana:
        assert (REPO / path).exists(), path
    assert mounts("prometheus")["./observability/rules"] == "/etc/prometheus/rules"
    assert mounts("prometheus")["./observability/docker/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts("alertmanager")["./observability/alertmanager.yml"] == "/etc/alertmanager/alertmanager.yml"
    # Alertmanager's webhook is http://localhost:8000/alerts: it shares the status service's network.
    assert services["alertmanager"]["network_mode"] == "service:status"
    prom = yaml.safe_load((REPO / "observability/docker/prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom["scrape_configs"]}
    assert jobs == {"flink", "postgres", "redis", "status", "prometheus", "alertmanager"}
    flink_conf = (REPO / "docker-compose.yml").read_text()
    assert "metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.PrometheusReporterFactory" \
        in flink_conf
