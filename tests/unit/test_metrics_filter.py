"""Flink's Prometheus reporter filter (devstack.services.flink.PROMETHEUS_EXCLUDES): the series the rules, the
dashboards and the step metrics need pass it, Beam's system metrics and the per-operator copies do not, and the
production session cluster has the same list.

`excluded()` follows Flink 1.19's DefaultMetricFilter: a filter is `<scope>[:<names>[:<types>]]`, each component
a comma-separated list of patterns where `*` is any characters, matched in full against the metric's logical
scope and its name. The live check (the reporter's page on the running stack) is in
tests/e2e/test_observability_flink.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from devstack.services import flink

REPO = Path(__file__).resolve().parents[2]


def _pattern(component: str) -> re.Pattern:
    return re.compile("(" + "|".join(p.replace("*", ".*") for p in component.split(",")) + ")")


def excluded(scope: str, name: str) -> bool:
    for f in flink.PROMETHEUS_EXCLUDES:
        parts = f.split(":")
        scope_p, name_p = _pattern(parts[0]), _pattern(parts[1] if len(parts) > 1 else "*")
        if scope_p.fullmatch(scope) and name_p.fullmatch(name):
            return True
    return False


PROM_SCOPES = (  # the Prometheus name prefix of a scope (the reporter joins scope and name with `_`)
    ("flink_taskmanager_job_task_operator_", "taskmanager.job.task.operator"),
    ("flink_taskmanager_job_task_", "taskmanager.job.task"),
    ("flink_taskmanager_Status_JVM_Memory_Heap_", "taskmanager.Status.JVM.Memory.Heap"),
    ("flink_jobmanager_", "jobmanager"),
)


def _used_flink_metrics():
    """Every flink_* series the alert rules and the dashboards query."""
    text = "".join(p.read_text() for p in (REPO / "observability" / "rules").glob("*.yml"))
    text += (REPO / "observability" / "dashboards.py").read_text()
    return sorted(set(re.findall(r"\bflink_[A-Za-z_]+[A-Za-z]", text)))


def test_the_rules_and_dashboards_query_flink_metrics():
    assert "flink_taskmanager_job_task_currentInputWatermark" in _used_flink_metrics()


@pytest.mark.parametrize("series", _used_flink_metrics())
def test_what_the_rules_and_dashboards_use_is_reported(series):
    prefix, scope = next((p, s) for p, s in PROM_SCOPES if series.startswith(p))
    assert not excluded(scope, series[len(prefix):]), series


@pytest.mark.parametrize("name", [
    # Beam user metrics, `<namespace>.<name>` with the step in the namespace (events/metrics.py)
    "iheardai:Validate[text.agent.turn.completed]:.events_valid",
    "iheardai:WriteToPostgres[agent_turns]:.agent_turns_rows_written",
    "iheardai:SessionKpis:.SessionKpis_dedupe_ids_per_key",
    # the sources' progress and backlog (consumer lag in the dashboard's terms)
    "source_splits_0_backlog_elements", "source_elements_read",
])
def test_step_metrics_and_source_backlog_are_reported(name):
    assert not excluded("taskmanager.job.task.operator", name)


@pytest.mark.parametrize("scope,name", [
    ("taskmanager.job.task.operator", "ref_PCollection_PCollection_12.metric:element_count:v1"),
    ("taskmanager.job.task.operator", "fn/write/ref_PCollection_PCollection_3:0:0.metric:sampled_byte_size:v1"),
    ("taskmanager.job.task.operator", "ref_AppliedPTransform_Validate-Merge_21.metric:ptransform_execution_time:"
                                      "total_msecs:v1"),
    ("taskmanager.job.task.operator", "external_1ReadKafka/ReadFromKafka/Convert/ParMultiDo(Anonymous)_output"
                                      ".metric:element_count:v1"),
    ("taskmanager.job.task.operator", "numRecordsInPerSecond"),
    ("taskmanager.job.task.operator", "currentOutputWatermark"),
    ("taskmanager.job.task", "mailboxLatencyMs"),
    ("taskmanager.job.task.buffers", "inPoolUsage"),
    ("taskmanager.job.task.Shuffle.Netty.Input", "numBytesInLocal"),
])
def test_beam_system_metrics_and_per_operator_copies_are_not(scope, name):
    assert excluded(scope, name)


def test_the_task_figures_stay():  # the task-level counterparts of what the operator scope drops
    for name in ("numRecordsInPerSecond", "numRecordsOutPerSecond", "busyTimeMsPerSecond", "idleTimeMsPerSecond",
                 "backPressuredTimeMsPerSecond", "currentInputWatermark", "isBackPressured"):
        assert not excluded("taskmanager.job.task", name), name


def test_the_local_config_lists_the_filters_and_an_ab_switch_turns_them_off(monkeypatch):
    monkeypatch.delenv("DEVSTACK_FLINK_METRICS_FILTER", raising=False)
    conf = yaml.safe_load("\n".join(flink.prometheus_filter_lines()))
    assert conf == {"metrics.reporter.prom.filter.excludes": list(flink.PROMETHEUS_EXCLUDES)}
    monkeypatch.setenv("DEVSTACK_FLINK_METRICS_FILTER", "off")
    assert flink.prometheus_filter_lines() == []


def test_the_production_session_cluster_has_the_same_filters():
    docs = list(yaml.safe_load_all((REPO / "flink-deploy" / "base" / "flink-session.yaml").read_text()))
    fd, = [d for d in docs if d and d.get("kind") == "FlinkDeployment"]
    # flinkConfiguration values are strings: Flink's list syntax separates the filters with ';'
    assert fd["spec"]["flinkConfiguration"]["metrics.reporter.prom.filter.excludes"].split(";") == \
        list(flink.PROMETHEUS_EXCLUDES)
