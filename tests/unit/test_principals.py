"""Principals and grants from one place: each pipeline's Kafka principal reads exactly its topics (with its
consumer group) and writes exactly its dead letters and outputs, the tables and Redis keys match what the
pipeline code writes, and the password files are private and stable."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from devstack import principals as pr
from events import topics

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
ALL = {t.name for t in topics.all_topics()}


@pytest.fixture(scope="module")
def model():
    ps = pr.principals()
    return pr.by_name(ps), pr.kafka_acls(ps), pr.kafka_super_users(ps)


def _can(model, who, op, resource_type, name):
    _, acls, supers = model
    return pr.kafka_allowed(acls, supers, f"User:{who}", resource_type, name, op)


def test_each_pipeline_reads_exactly_its_topics_and_writes_exactly_its_outputs(model):
    for name in pr.PIPELINES:
        reads = set(pr.pipeline_topics(name))
        writes = {topics.dlq_topic(t) for t in reads} | set(pr.PIPELINE_OUTPUTS[name]["topics"])
        who = f"pipeline-{name}"
        for t in ALL:
            assert _can(model, who, "READ", "TOPIC", t) == (t in reads), (who, "read", t)
            assert _can(model, who, "WRITE", "TOPIC", t) == (t in writes), (who, "write", t)
        assert _can(model, who, "READ", "GROUP", f"iheardai-{name}")
        assert _can(model, who, "READ", "GROUP", f"iheardai-{name}-e2e-123")  # run-specific groups: the prefix
        assert not _can(model, who, "READ", "GROUP", "iheardai-workload")
        assert not _can(model, who, "ALTER", "CLUSTER", "kafka-cluster")
        assert not _can(model, who, "CREATE", "TOPIC", "anything")


def test_the_kpi_principal_cannot_read_frontend_or_write_billing(model):
    for t in ALL:
        if t.startswith("frontend."):
            assert not _can(model, "pipeline-kpi", "READ", "TOPIC", t)
            assert not _can(model, "pipeline-kpi", "DESCRIBE", "TOPIC", t)
    assert not _can(model, "pipeline-kpi", "WRITE", "TOPIC", topics.BILLING)
    assert _can(model, "pipeline-billing", "WRITE", "TOPIC", topics.BILLING)
    assert not _can(model, "pipeline-kpi", "READ", "GROUP", "iheardai-billing")
    assert _can(model, "pipeline-kpi", "READ", "TOPIC", topics.TURNS)
    assert _can(model, "pipeline-kpi", "WRITE", "TOPIC", topics.dlq_topic(topics.TURNS))


def test_other_principals(model):
    assert _can(model, "admin", "ALTER", "CLUSTER", "kafka-cluster") and _can(model, "admin", "CREATE", "TOPIC", "x")
    assert _can(model, "marketo-extractor", "WRITE", "TOPIC", topics.LEADS)
    assert not _can(model, "marketo-extractor", "WRITE", "TOPIC", topics.TURNS)
    assert _can(model, "marketo-extractor", "READ", "GROUP", "marketo-extractor-probe")
    front = {t for t in ALL if _can(model, "producer-frontend", "WRITE", "TOPIC", t)}
    with_dlqs = lambda names: set(names) | {topics.dlq_topic(t) for t in names}  # noqa: E731 - the library's DLQs
    assert front == with_dlqs({topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET})
    agent = {t for t in ALL if _can(model, "producer-agent", "WRITE", "TOPIC", t)}
    assert agent == with_dlqs({topics.TURNS, topics.TOOLS, topics.SESSIONS})
    assert not any(_can(model, p, "READ", "TOPIC", t) for p in ("producer-frontend", "producer-agent") for t in ALL)
    assert "User:CN=kafka,O=iheardAI local stack" in model[2]


def _pipeline_writes(name):
    """Tables (string arguments of WriteToPostgres/UpsertRows), Kafka topics (WriteToKafka topic=) and whether
    the Redis session sink is used, read from the pipeline's source."""
    tree = ast.parse((REPO / "beam_pipelines" / f"{name}.py").read_text())
    tables, out_topics, redis = set(), set(), False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = getattr(node.func, "id", getattr(node.func, "attr", ""))
        if fn in ("WriteToPostgres", "UpsertRows"):
            tables |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        if fn == "WriteToKafka":
            for kw in node.keywords:
                if kw.arg == "topic" and isinstance(kw.value, ast.Attribute):
                    out_topics.add(getattr(topics, kw.value.attr))
        redis |= fn == "WriteSessionState"
    return tables, out_topics, redis


@pytest.mark.parametrize("name", pr.PIPELINES)
def test_the_declared_outputs_are_what_the_pipeline_code_writes(name):
    tables, out_topics, redis = _pipeline_writes(name)
    declared = pr.PIPELINE_OUTPUTS[name]
    assert set(declared["tables"]) == tables
    assert set(declared["topics"]) == out_topics
    assert bool(declared["redis"]) == redis
    assert set(declared["tables"]) <= set(pr.SINK_TABLES)


def test_postgres_grants_give_each_role_its_tables_only():
    ps = pr.by_name()
    stmts = pr.postgres_statements(ps.values(), {n: "pw" for n in ps}, "iheardai")
    grants = [s for s, _ in stmts if s.startswith("GRANT SELECT")]
    billing = [g for g in grants if g.endswith(" TO iheardai_pipeline_billing")]
    assert billing == ["GRANT SELECT, INSERT, UPDATE ON TABLE billing_usage TO iheardai_pipeline_billing"]
    assert not any("agent_turns" in g for g in billing)
    analytics = [g for g in grants if g.endswith(" TO iheardai_analytics")]
    assert analytics and all(g.startswith("GRANT SELECT ON TABLE") for g in analytics)
    assert all("pw" not in s for s, _ in stmts) and any(p == ("pw",) for _, p in stmts)  # passwords as parameters
    assert not any(s.startswith("GRANT") and "DELETE" in s for s, _ in stmts)


def test_redis_acl_the_kpi_user_touches_session_keys_only():
    ps = pr.by_name()
    lines = pr.redis_acl_lines(ps.values(), {n: f"pw-{n}" for n in ps})
    kpi = next(line for line in lines if line.startswith("user pipeline-kpi "))
    assert " ~session:* " in kpi and kpi.count("~") == 1 and "+@all" not in kpi and "pw-" not in kpi
    # off (nobody can be it) but with every permission: Redis 7.0 replays the AOF's transactions as the default
    # user and refused them all at `-@all` (test_secured_stack: ...survive_a_redis_restart)
    assert lines[0].startswith("user default off") and lines[0].endswith(" +@all")
    monitor = next(line for line in lines if line.startswith("user monitor "))
    assert "~" not in monitor and "+info" in monitor
    assert not any(line.startswith("user pipeline-frontend ") for line in lines)  # no Redis access at all


def test_password_files_are_private_distinct_and_stable(tmp_path):
    files = pr.ensure_passwords(tmp_path)
    assert set(files) == {"kafka", "postgres", "redis"}
    assert set(files["kafka"]) == {p.name for p in pr.principals() if "kafka" in p.systems}
    values = [f.read_text() for fs in files.values() for f in fs.values()]
    assert len(set(values)) == len(values) and all(len(v) >= 24 for v in values)
    for fs in files.values():
        for f in fs.values():
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(f.parent).st_mode) == 0o700
    assert [f.read_text() for fs in pr.ensure_passwords(tmp_path).values() for f in fs.values()] == values


def test_describe_lists_every_principal_and_no_password(tmp_path):
    text = pr.describe(pr.principals())
    for p in pr.principals():
        assert f"{p.name}:" in text
    assert "kafka read: text.agent.turn.completed, agent.tool.invoked, text.agent.session.updated" in text
