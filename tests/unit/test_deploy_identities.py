"""One principal per service in production: each pod's Kafka, Postgres and Redis identity is its own principal's
Secret (devstack/principals.py, mapped to workloads by flink-deploy/identities.py), no two workloads share one
except the documented worker pool layout, the shared worker pool names no user and mounts every pipeline
principal's password where io_connectors.settings looks for it, and the CAs are mounted where they are named.

    .venv/bin/pytest tests/unit/test_deploy_identities.py
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from devstack import principals as dp
from io_connectors import settings
from tests.deploy_helpers import load

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
README = REPO / "flink-deploy" / "README.md"

m = load("manifests")
ids = load("identities")
SYSTEMS = ids.SYSTEMS


@pytest.fixture(scope="module")
def pods():
    return m.pods()


def _pod(pods, name):
    (p,) = [p for p in pods if p.name == name]
    return p


def _identity_problems(pods) -> list:
    """What is wrong with each container's identities: the containers that connect as one principal
    (identities.workloads()) must take the user and the password file from that principal's Secret and name
    no other identity; no other container (the worker pool aside) may name one."""
    out = []
    expected = ids.workloads()
    for p in pods:
        for c in p.containers():
            env = m.container_env(c)
            mounted = m.mounted_files(p, c)
            want = expected.get((p.name, c["name"]))
            if (p.name, c["name"]) == ids.WORKER_POOL:
                continue
            for system in SYSTEMS:
                user_var, file_var = ids.USER_ENV[system], ids.PASSWORD_FILE_ENV[system]
                principal = (want or {}).get(system)
                if principal is None:
                    for var in (user_var, file_var, user_var.replace("_USER", "_PASSWORD").replace(
                            "_USERNAME", "_PASSWORD")):
                        if var in env:
                            out.append(f"{p.name}/{c['name']}: sets {var} but connects to no {system} principal")
                    continue
                secret = ids.secret_name(system, principal)
                if env.get(user_var) != m.SECRET.format(name=secret, key="username"):
                    out.append(f"{p.name}/{c['name']}: {user_var} is {env.get(user_var)!r}, not {secret}/username")
                if mounted.get(env.get(file_var, "")) != (secret, "password"):
                    out.append(f"{p.name}/{c['name']}: {file_var} is not {secret}/password")
            if "IHEARDAI_SECRETS_DIR" in env:
                out.append(f"{p.name}/{c['name']}: IHEARDAI_SECRETS_DIR is the shared worker pool's layout")
    return out


def test_every_workload_connects_as_its_own_principal(pods):
    problems = _identity_problems(pods)
    assert not problems, "\n".join(problems)
    named = {(p.name, c["name"]) for p in pods for c in p.containers()}
    assert set(ids.workloads()) <= named, f"identities.py names containers the manifests lack: " \
                                          f"{sorted(set(ids.workloads()) - named)}"


def test_the_identity_check_catches_a_shared_secret(pods):
    broken = copy.deepcopy(pods)
    c = _pod(broken, "iheardai-collector").container("collector")
    for e in c["env"]:
        if e["name"] == "KAFKA_USER":
            e["valueFrom"]["secretKeyRef"]["name"] = ids.secret_name("kafka", "pipeline-kpi")
    assert _identity_problems(broken) == [
        "iheardai-collector/collector: KAFKA_USER is '<from Secret iheardai-kafka-pipeline-kpi/username>', "
        "not iheardai-kafka-producer-frontend/username"]


def test_the_principals_are_those_of_devstack_and_use_the_system():
    by = dp.by_name()
    for where, mapping in ids.workloads().items():
        for system, principal in mapping.items():
            assert principal in by, f"{where}: {principal} is not a principal of devstack/principals.py"
            assert system in by[principal].systems, f"{where}: {principal} has no {system} grants"
    assert {ids.workloads()[(f"submit-{p}", "submit")]["kafka"] for p in dp.PIPELINES} == {
        n for n in by if n.startswith("pipeline-")}
    for system, principal in ids.deployed():
        assert ids.user(system, principal) == (settings.pg_role(principal) if system == "postgres" else principal)


def test_no_two_workloads_share_a_principal_secret_but_the_worker_pool_layout(pods):
    """A per-principal Secret is read by one pod; the only exception is a pipeline principal's Secret, read by its
    submitter (Kafka) and by the shared worker pool (only the password key, in the IHEARDAI_SECRETS_DIR layout)."""
    per_principal = {ids.secret_name(s, p): (s, p) for s, p in ids.deployed()}
    readers = {}
    for p in pods:
        for c in p.containers():
            for path, ref in m.mounted_files(p, c).items():
                if ref and ref[0] in per_principal:
                    readers.setdefault(ref[0], set()).add(f"{p.name}/{c['name']}")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] in per_principal:
                    readers.setdefault(ref["name"], set()).add(f"{p.name}/{c['name']}")
    assert set(readers) == set(per_principal), f"Secrets nobody reads: {sorted(set(per_principal) - set(readers))}"
    pool = "/".join(ids.WORKER_POOL)
    for secret, who in sorted(readers.items()):
        system, principal = per_principal[secret]
        others = who - {pool}
        assert len(others) <= 1, f"{secret} is read by {sorted(others)}"
        if pool in who:
            assert principal in ids.worker_pool_principals()[system], f"the worker pool reads {secret}"


def test_the_worker_pool_names_no_user_and_mounts_each_pipeline_principal(pods):
    p = _pod(pods, ids.WORKER_POOL[0])
    c = p.container(ids.WORKER_POOL[1])
    env = m.container_env(c)
    for system in SYSTEMS:
        for var in (ids.USER_ENV[system], ids.PASSWORD_FILE_ENV[system]):
            assert var not in env, f"the shared worker pool sets {var}: it would win over every sink's principal"
    assert env["IHEARDAI_SECRETS_DIR"] == ids.PRINCIPALS_DIR
    mounted = {path: ref for path, ref in m.mounted_files(p, c).items() if path.startswith(ids.PRINCIPALS_DIR + "/")}
    # derived from devstack.principals: every pipeline principal, for each system it has grants on
    want = {f"{ids.PRINCIPALS_DIR}/{system}/{pr.name}.password": (ids.secret_name(system, pr.name), "password")
            for pr in dp.principals() if pr.name.startswith("pipeline-") for system in pr.systems}
    assert mounted == want
    assert set(ids.worker_pool_principals()["redis"]) == {"pipeline-kpi"}  # the only Redis sink
    # the layout is the one io_connectors.settings.principal_password reads
    for path in want:
        system, file = path[len(ids.PRINCIPALS_DIR) + 1:].split("/")
        assert ids.password_path(system, file[: -len(".password")]) == path


def test_the_worker_pool_layout_resolves_each_pipeline_principal(pods, tmp_path, monkeypatch):
    """io_connectors.settings, given the worker pool's environment and its mounted files, resolves every
    pipeline's sinks to that pipeline's own user and password."""
    from io_connectors.settings import KafkaSettings, PostgresSettings, RedisSettings

    p = _pod(pods, ids.WORKER_POOL[0])
    c = p.container(ids.WORKER_POOL[1])
    for path, ref in m.mounted_files(p, c).items():
        if ref:
            f = tmp_path / path.lstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"pw-of-{ref[0]}")
    env = m.container_env(c)
    for k in list(settings.environment()):
        if k.startswith(("KAFKA_", "POSTGRES_", "REDIS_", "IHEARDAI_")):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(settings, "_file_env", lambda: {})
    for k, v in env.items():
        monkeypatch.setenv(k, str(tmp_path / v.lstrip("/")) if k == "IHEARDAI_SECRETS_DIR" else v)
    classes = {"kafka": (KafkaSettings, "sasl_username", "sasl_password"), "postgres": (PostgresSettings, "user",
               "password"), "redis": (RedisSettings, "username", "password")}
    for system, principals in ids.worker_pool_principals().items():
        cls, user_field, pw_field = classes[system]
        for principal in principals:
            s = cls.deferred(principal)
            assert getattr(s, user_field) == ids.user(system, principal)
            assert getattr(s, pw_field) == f"pw-of-{ids.secret_name(system, principal)}"


def test_the_postgres_ca_is_mounted_wherever_postgres_is_used(pods):
    cm = m.named("ConfigMap", "iheardai-settings")["data"]
    assert cm["POSTGRES_SSLMODE"] == "verify-full"
    ca = cm["POSTGRES_SSLROOTCERT"]
    users = [k for k, v in ids.workloads().items() if "postgres" in v] + [ids.WORKER_POOL]
    for pod, container in users:
        p = _pod(pods, pod)
        assert m.mounted_files(p, p.container(container)).get(ca) == ("iheardai-postgres-ca", "ca.crt"), \
            f"{pod}/{container} does not mount {ca}"


def test_the_secret_templates_hold_each_principal_secret():
    defined = m.secrets_defined()
    for system, principal in ids.deployed():
        assert defined.get(ids.secret_name(system, principal)) == {"username", "password"}, (system, principal)
    shaped = {n for n in defined if re.match(r"iheardai-(kafka|postgres|redis)-", n) and not n.endswith("-ca")}
    assert shaped == {ids.secret_name(s, p) for s, p in ids.deployed()}
    assert {"iheardai-kafka", "iheardai-postgres", "iheardai-redis"}.isdisjoint(defined), "a shared credential"


def _readme_block(marker: str) -> list:
    text = README.read_text()
    start, end = text.index(f"# {marker}:begin\n"), text.index(f"# {marker}:end\n")
    return text[start:end].splitlines()[1:]


def test_readme_setup_commands_are_the_generated_ones():
    assert _readme_block("principals") == ids.setup_commands(), \
        "flink-deploy/README.md is stale: paste `python flink-deploy/identities.py --setup` between the markers"


def test_setup_commands_create_each_principal_with_its_do_acls():
    lines = ids.setup_commands()
    by = dp.by_name()
    for system, principal in ids.deployed():
        secret = ids.secret_name(system, principal)
        assert any(l.startswith(f"kubectl -n $NS create secret generic {secret} ") for l in lines), secret
        if system == "kafka":
            (create,) = [l for l in lines if l.startswith(f"doctl databases user create $KAFKA_ID {principal} ")]
            rules = dict(r.rsplit(":", 1) for r in create.split("--acl ", 1)[1].split(","))
            p = by[principal]
            assert set(rules) == set(p.kafka_read) | set(p.kafka_write)
            for topic, perm in rules.items():
                assert ("consume" in perm) == (topic in p.kafka_read) and ("produce" in perm) == (
                    topic in p.kafka_write), (principal, topic, perm)
    grants = ids.grant_statements()
    assert not any("PASSWORD" in g.upper() for g in grants)
    assert "GRANT SELECT, INSERT, UPDATE ON TABLE billing_usage TO iheardai_pipeline_billing;" in grants
    assert not any("iheardai_pipeline_billing" in g and "agent_turns" in g for g in grants)
