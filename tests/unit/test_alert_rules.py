"""The alert rules (observability/rules/*.yml) and Alertmanager's config, checked with the real tools.

    .venv/bin/pytest tests/unit/test_alert_rules.py

`promtool check rules` and `promtool test rules` (Debian's `prometheus` package), `amtool check-config` and
`amtool config routes test` (`prometheus-alertmanager`); both are installed with apt-get when missing, as the
local stack installs them. The other tests keep the rule files honest where promtool cannot: every alert is
tested firing and not firing, carries a severity and annotations that name what fired, and the table -> topic
map of the sink rules matches the pipelines and the status service.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from observability import collect
from tests.unit import prometheus_tools

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
OBS = REPO / "observability"
RULE_FILES = sorted((OBS / "rules").glob("*.yml"))
TEST_FILES = sorted((OBS / "rules" / "tests").glob("*.yml"))
ALERTMANAGER_FILES = [OBS / "alertmanager.yml", OBS / "alertmanager.production.yml"]
SEVERITIES = {"critical", "warning"}
# Labels that say which pipeline, table, topic, group or service fired: an annotation must name each one
# that an alert carries from its series.
IDENTIFYING = ("pipeline", "table", "topic", "source_topic", "group", "service", "job_name", "task_name", "datname",
               "state", "part", "integration", "rule_group")


@pytest.fixture(scope="module")
def promtool() -> str:
    return prometheus_tools.promtool()


@pytest.fixture(scope="module")
def amtool() -> str:
    return prometheus_tools.amtool()


def _run(cmd: List[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> List[dict]:
    return [r for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]]


def _alerts() -> List[dict]:
    return [r for r in _rules() if "alert" in r]


def _rule_tests() -> List[dict]:
    """Every alert_rule_test of the promtool test files."""
    return [art for p in TEST_FILES for t in yaml.safe_load(p.read_text())["tests"]
            for art in t.get("alert_rule_test", [])]


# --- promtool ------------------------------------------------------------------------------------------

def test_rule_files_and_their_tests_exist():
    assert {p.stem for p in RULE_FILES} == {"pipelines", "kafka", "services"}
    assert {p.stem for p in TEST_FILES} == {f"{p.stem}_test" for p in RULE_FILES}


def test_promtool_check_rules(promtool):
    res = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules(promtool):
    res = _run([promtool, "test", "rules", *map(str, TEST_FILES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(TEST_FILES), res.stdout


# --- what promtool does not check ----------------------------------------------------------------------

def test_every_alert_is_tested_firing_and_not_firing():
    """An alert_rule_test lists every alert of its name at that time: one with exp_alerts shows series that
    fire it, one with none shows (the same or other) series that do not. A test of an unknown alert name
    would pass silently with no alerts, so the names must exist too."""
    names = {a["alert"] for a in _alerts()}
    fired, quiet = set(), set()
    for art in _rule_tests():
        assert art["alertname"] in names, f"promtool test of an alert no rule defines: {art['alertname']}"
        (fired if art.get("exp_alerts") else quiet).add(art["alertname"])
    assert names - fired == set(), f"never tested firing: {sorted(names - fired)}"
    assert names - quiet == set(), f"never tested not firing: {sorted(names - quiet)}"


def test_every_alert_has_a_severity_and_annotations_that_name_what_fired():
    static_labels: Dict[str, set] = {}
    for a in _alerts():
        assert a.get("labels", {}).get("severity") in SEVERITIES, f"{a['alert']}: severity must be one of {SEVERITIES}"
        ann = a.get("annotations", {})
        assert ann.get("summary", "").strip() and ann.get("description", "").strip(), \
            f"{a['alert']}: needs summary and description annotations"
        static_labels.setdefault(a["alert"], set()).update(a.get("labels", {}))
    text = {}
    for a in _alerts():
        text[a["alert"]] = text.get(a["alert"], "") + a["annotations"]["summary"] + a["annotations"]["description"]
    for art in _rule_tests():
        for exp in art.get("exp_alerts") or []:
            for key in exp["exp_labels"]:
                if key in IDENTIFYING and key not in static_labels[art["alertname"]]:
                    assert f"$labels.{key}" in text[art["alertname"]], \
                        f"{art['alertname']} fires with a {key} label that its annotations do not name"


SINK_INPUT = "iheardai:sink_input_topic"


def _sink_inputs():
    return [(r["labels"]["pipeline"], r["labels"]["table"], r["labels"]["topic"]) for r in _rules()
            if r.get("record") == SINK_INPUT]


def test_sink_input_topics_match_the_pipelines_and_the_status_service():
    import importlib

    inputs = _sink_inputs()
    by_table: Dict[str, set] = {}
    for pipeline, table, topic in inputs:
        module = importlib.import_module(f"beam_pipelines.{pipeline}")
        assert topic in module.TOPICS, f"{table}: {topic} is not an input of beam_pipelines.{pipeline}"
        source = Path(module.__file__).read_text()
        assert f'"{table}"' in source, f"beam_pipelines.{pipeline} does not write {table}"
        by_table.setdefault(table, set()).add(topic)
    assert by_table == {t: set(topics) for t, topics in collect.SINK_TABLES.items()}, \
        "the rules' table -> topics map differs from observability.collect.SINK_TABLES"


def test_every_table_of_the_schema_is_a_sink_the_rules_watch():
    created = set()
    for sql in sorted((REPO / "sql").glob("*.sql")):
        created |= set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", sql.read_text()))
    bookkeeping = {"marketo_sync_state"}  # the extractor's cursor, not a pipeline's sink
    assert created - bookkeeping == {t for _, t, _ in _sink_inputs()}


def test_the_pipeline_label_regexes_read_names_as_the_status_service_does():
    """label_replace() gives lag and Flink series the pipeline label their group or job name names."""
    from beam_pipelines.demo import PIPELINES

    regexes = set(re.findall(r'"pipeline", "\$1", "(?:group|job_name)", "([^"]+)"',
                             "".join(p.read_text() for p in RULE_FILES)))
    assert len(regexes) == 1, f"one regex for every pipeline label, not {regexes}"
    (regex,) = regexes
    assert set(re.search(r"\(([a-z|]+)\)", regex).group(1).split("|")) == set(PIPELINES) == set(collect.PIPELINES)
    for name in ("iheardai-kpi", "iheardai-demo-billing", "e2e-frontend-t1a2b3", "iheardai-leads",
                 "iheardai-status-service", "analytics-export", "iheardai-archive-backfill"):
        # Flink's Prometheus reporter sanitizes label values: the job iheardai-kpi is job_name="iheardai_kpi"
        for label in (name, name.replace("-", "_")):
            m = re.fullmatch(regex, label)  # Prometheus anchors the regex at both ends, as fullmatch does
            assert (m.group(1) if m else None) == collect.pipeline_of(name), label


# --- Alertmanager --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ALERTMANAGER_FILES, ids=lambda p: p.name)
def test_amtool_check_config(amtool, path):
    res = _run([amtool, "check-config", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=PipelineJobDown", "pipeline=kpi"], "critical"),
    (["severity=warning", "alertname=ConsumerLagHigh", "pipeline=kpi"], "warning"),
    (["alertname=SomethingElse"], "default"),
])
def test_alertmanager_routes_by_severity(amtool, labels, receiver):
    for path in ALERTMANAGER_FILES:
        res = _run([amtool, "config", "routes", "test", f"--config.file={path}", *labels])
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.strip() == receiver, f"{path.name}: {labels} -> {res.stdout.strip()}"


def test_local_alertmanager_delivers_to_the_status_service_only():
    conf = yaml.safe_load((OBS / "alertmanager.yml").read_text())
    urls = set()
    for r in conf["receivers"]:
        assert set(r) == {"name", "webhook_configs"}, f"{r['name']}: the local config needs no internet"
        urls |= {w["url"] for w in r["webhook_configs"]}
    assert urls == {"http://localhost:8000/alerts"}
    assert conf["route"]["group_by"] == ["alertname", "pipeline"]


def test_production_alertmanager_has_the_local_routes_and_reads_secrets_from_files():
    local, prod = (yaml.safe_load(p.read_text()) for p in ALERTMANAGER_FILES)
    assert prod["route"] == local["route"] and prod["inhibit_rules"] == local["inhibit_rules"]
    assert sorted(r["name"] for r in prod["receivers"]) == sorted(r["name"] for r in local["receivers"])
    for key, value in _walk(prod):
        if re.search(r"(key|url|password|token|secret)$", str(key)):
            pytest.fail(f"alertmanager.production.yml sets {key} inline; use {key}_file")


def test_inhibit_rules_name_real_alerts():
    names = {a["alert"] for a in _alerts()}
    conf = yaml.safe_load((OBS / "alertmanager.yml").read_text())
    for rule in conf["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~?)"([^"]+)"', matcher)
            if m:
                listed = set(m.group(2).split("|")) if m.group(1) == "=~" else {m.group(2)}
                assert listed <= names, f"inhibit rule names unknown alerts {sorted(listed - names)}"


def _walk(node, key=None):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node
