"""Static checks of the production deployment files (flink-deploy/, Dockerfile*, docker-compose.yml).

    .venv/bin/pytest tests/unit/test_deploy.py

Nothing here talks to Kubernetes or Docker (neither runs on our machines); these tests keep the manifests
parseable, consistent with devstack/versions.py and events/topics.py, free of real secrets, and
passing only flags the pipelines actually declare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from devstack import versions
from events.topics import all_topics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "flink-deploy"
COMPOSE = REPO / "docker-compose.yml"
PIPELINES = {"kpi", "frontend", "billing", "archive", "leads"}
FLINK_IMAGE_TAG = f"{versions.FLINK}-beam{versions.BEAM}"
BEAM_JAR = f"/opt/beam/beam-services-{versions.BEAM}-flink-{versions.FLINK_MINOR}.jar"
EMPTY_JAR = "/opt/beam/beam-java-harness-empty.jar"
PLACEHOLDER = re.compile(r"^<[A-Z0-9_]+>$")


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def yaml_files():
    return sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml")) + [COMPOSE]


def docs(path: Path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests():
    """(path, document) for every Kubernetes object under flink-deploy/."""
    return [(p, d) for p in yaml_files() if p != COMPOSE for d in docs(p) if isinstance(d, dict) and "kind" in d]


def walk(node, key=None):
    """Yield (key, value) for every scalar in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)
    else:
        yield key, node


def containers(doc):
    """Every container and init container in a manifest, wherever it sits (pod templates included)."""
    found = []

    def visit(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("containers", "initContainers") and isinstance(v, list):
                    found.extend(c for c in v if isinstance(c, dict))
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(doc)
    return found


def by_kind(kind):
    return [(p, d) for p, d in manifests() if d["kind"] == kind]


# --- parse -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path):
    assert docs(path), f"{path} holds no YAML document"


def test_kustomizations_list_existing_files_and_cover_every_manifest():
    listed = set()
    for k in DEPLOY.rglob("kustomization.yaml"):
        spec = yaml.safe_load(k.read_text())
        for r in spec["resources"]:
            assert (k.parent / r).is_file(), f"{k} lists missing {r}"
            listed.add((k.parent / r).resolve())
    # Everything applied with -k; the secret templates and the Strimzi topics are applied on purpose, by hand.
    unlisted = {p.resolve() for p, d in manifests() if d["kind"] != "Kustomization"} - listed
    assert {p.relative_to(DEPLOY).as_posix() for p in unlisted} == {
        "secrets/secrets.template.yaml", "kafka-topics.yaml"}


# --- topics ----------------------------------------------------------------------------------------

def test_topic_config_is_generated_from_the_topic_table():
    gen = _load_module("gen_topics", DEPLOY / "gen_topics.py")
    assert (DEPLOY / "kafka-topics.yaml").read_text() == gen.render(), \
        "flink-deploy/kafka-topics.yaml is stale: run `python flink-deploy/gen_topics.py`"


def test_topic_config_partitions_and_retention_match():
    rendered = {d["spec"]["topicName"]: d for d in docs(DEPLOY / "kafka-topics.yaml")}
    expected = {t.name: t for t in all_topics()}
    assert set(rendered) == set(expected)
    assert len({d["metadata"]["name"] for d in rendered.values()}) == len(rendered), "resource names collide"
    for name, t in expected.items():
        spec = rendered[name]["spec"]
        assert spec["partitions"] == t.partitions, name
        assert int(spec["config"]["retention.ms"]) == t.retention_ms, name
        assert spec["config"]["cleanup.policy"] == t.cleanup_policy, name
        assert spec["replicas"] >= int(spec["config"]["min.insync.replicas"]) + 1, name
    assert any(n.endswith(".dlq") for n in rendered), "dead-letter twins missing"


# --- secrets ---------------------------------------------------------------------------------------

def test_secret_manifests_hold_placeholders_only():
    """Every value is a <PLACEHOLDER>, except the `username` of a principal's Secret: that is fixed (the grants and
    the worker pool's file layout name it), and must be the user flink-deploy/identities.py derives."""
    ids = _load_module("identities", DEPLOY / "identities.py")
    users = {ids.secret_name(s, p): ids.user(s, p) for s, p in ids.deployed()}
    secrets = by_kind("Secret")
    assert secrets, "expected Secret templates under flink-deploy/secrets"
    for path, doc in secrets:
        assert "data" not in doc, f"{path}: use stringData placeholders, never base64 data"
        values = doc.get("stringData") or {}
        name = doc["metadata"]["name"]
        assert values, f"{path}: {name} has no keys"
        for key, value in values.items():
            if key == "username" and name in users:
                assert value == users[name], f"{path}: {name}.username must be {users[name]!r}"
                continue
            assert isinstance(value, str) and PLACEHOLDER.match(value), \
                f"{path}: {name}.{key} is not a <PLACEHOLDER>"


def test_no_credentials_inline_in_manifests_or_compose():
    """Secret-looking env vars come from secretKeyRef/*_FILE (k8s) or ${VAR} from .env (compose)."""
    secretish = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|SECRET_KEY)$")
    for path, doc in manifests():
        for c in containers(doc):
            for e in c.get("env", []):
                if secretish.search(e["name"]) and "value" in e:
                    pytest.fail(f"{path}: {c['name']} sets {e['name']} inline; use secretKeyRef or *_FILE")
    for key, value in walk(yaml.safe_load(COMPOSE.read_text())):
        if isinstance(key, str) and secretish.search(key):
            assert isinstance(value, str) and value.startswith("${"), f"compose: {key} must come from .env"
    assert "s3.access-key" not in (DEPLOY / "base" / "flink-session.yaml").read_text()


# --- versions --------------------------------------------------------------------------------------

def test_flink_deployment_versions():
    (path, fd), = by_kind("FlinkDeployment")
    assert fd["apiVersion"] == "flink.apache.org/v1beta1"
    assert fd["spec"]["flinkVersion"] == "v" + versions.FLINK_MINOR.replace(".", "_")
    assert fd["spec"]["image"].endswith(":" + FLINK_IMAGE_TAG)
    conf = fd["spec"]["flinkConfiguration"]
    assert conf["state.checkpoints.dir"].startswith("s3://")
    assert conf["state.savepoints.dir"].startswith("s3://")
    assert conf["high-availability.type"] == "kubernetes"
    assert conf["high-availability.storageDir"].startswith("s3://")


def test_images_match_versions():
    py_tag = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    seen = set()
    for path, doc in manifests():
        for c in containers(doc):
            image = c.get("image")
            if image is None:
                assert c["name"] == "flink-main-container", f"{path}: {c['name']} has no image"
                continue
            seen.add(image)
            name, tag = image.rsplit(":", 1)
            if name.endswith("/flink"):
                assert tag == FLINK_IMAGE_TAG, f"{path}: {image}"
            else:
                assert name.endswith("/pipelines") and tag == py_tag, f"{path}: {image}"
    assert any(i.endswith("/pipelines:" + py_tag) for i in seen)
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    assert compose["jobmanager"]["image"].endswith(":" + FLINK_IMAGE_TAG)
    assert compose["jobmanager"]["build"]["args"] == {
        "FLINK_VERSION": versions.FLINK, "FLINK_MINOR": versions.FLINK_MINOR, "BEAM_VERSION": versions.BEAM}
    assert compose["kafka"]["image"] == f"apache/kafka:{versions.KAFKA}"


def test_dockerfiles_match_versions():
    flink = (REPO / "Dockerfile.flink").read_text()
    assert f"ARG FLINK_VERSION={versions.FLINK}\n" in flink
    assert f"ARG FLINK_MINOR={versions.FLINK_MINOR}\n" in flink
    assert f"ARG BEAM_VERSION={versions.BEAM}\n" in flink
    assert f"FROM flink:${{FLINK_VERSION}}-java{versions.JAVA}" in flink
    assert "devstack/maven/beam-services/pom.xml" in flink and "flink-s3-fs-presto" in flink
    # the Java SDK harness's boot program at the Beam version, a static binary (it runs on the Flink image's libc)
    assert re.search(r"^RUN CGO_ENABLED=0 .*go install github\.com/apache/beam/sdks/v2/java/container@v\$\{BEAM_VERSION\}",
                     flink, re.M)
    py = (REPO / "Dockerfile").read_text()
    assert "ARG PYTHON_VERSION=3.11\n" in py
    assert "pip install -r requirements.txt" in py and "pip install --no-deps ." in py
    assert f"apache_beam.__version__ == '{versions.BEAM}'" in py
    assert f"apache-beam[gcp,aws]=={versions.BEAM}" in (REPO / "requirements.txt").read_text()
    assert f"<beam.version>{versions.BEAM}</beam.version>" in (
        REPO / "devstack/maven/beam-services/pom.xml").read_text()


def test_beam_services_jar_path_everywhere():
    for text in [(DEPLOY / "base" / "beam-services.yaml").read_text(), COMPOSE.read_text()]:
        jars = set(re.findall(r"/opt/beam/[\w.-]+\.jar", text))
        assert jars == {BEAM_JAR, EMPTY_JAR}  # the services' jar, and what the expansion service stages


# --- topology --------------------------------------------------------------------------------------

def test_taskmanager_has_worker_pool_sidecar():
    (_, fd), = by_kind("FlinkDeployment")
    pod = fd["spec"]["taskManager"]["podTemplate"]["spec"]
    names = [c["name"] for c in pod["containers"]]
    assert names[0] == "flink-main-container"
    pool = next(c for c in pod["containers"] if c["name"] == "beam-worker-pool")
    # the project's pool: Beam's own starts its workers without a user-state cache (beam_pipelines/worker_pool.py)
    assert pool["command"] == ["python", "-m", "beam_pipelines.worker_pool", "--service_port=50000"]
    assert {"containerPort": 50000, "name": "worker-pool"} in pool["ports"]


def test_beam_services_deployments():
    deps = {d["metadata"]["name"]: d for _, d in by_kind("Deployment")}
    js, = deps["beam-job-server"]["spec"]["template"]["spec"]["containers"]
    ex, = deps["beam-expansion"]["spec"]["template"]["spec"]["containers"]
    assert "--flink-master=iheardai-flink-rest:8081" in js["command"] and "--job-port=8099" in js["command"]
    assert "--job-host=0.0.0.0" in js["command"]
    # Kafka IO's Java half in a PROCESS environment (EMBEDDED kept every cancelled job's classes and threads in the
    # TaskManager JVM); the Flink source checkpoints Kafka (use_deprecated_read). tests/unit/test_deploy_pods.py
    # checks that the command and files are in the Flink image.
    assert "--defaultEnvironmentType=PROCESS" in ex["command"] and "--experiments=use_deprecated_read" in ex["command"]
    assert not any("EMBEDDED" in a for a in ex["command"])
    config, = [json.loads(a.split("=", 1)[1]) for a in ex["command"] if a.startswith("--defaultEnvironmentConfig=")]
    assert config == {"command": "/opt/beam/java_harness/beam-java-harness"}
    assert f"--filesToStage={EMPTY_JAR}" in ex["command"]
    assert "--expansionServiceConfigFile=/opt/beam/java_harness/expansion-service.yaml" in ex["command"]
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for _, d in by_kind("Service")}
    assert {k: v for k, v in services.items() if k.startswith("beam-")} == {
        "beam-job-server": {8098, 8099}, "beam-expansion": {8097}}
    cm, = [d for _, d in by_kind("ConfigMap") if d["metadata"]["name"] == "iheardai-settings"]
    assert cm["data"]["BEAM_JOB_ENDPOINT"] == "beam-job-server:8099"
    assert cm["data"]["BEAM_ARTIFACT_ENDPOINT"] == "beam-job-server:8098"
    assert cm["data"]["BEAM_EXPANSION_SERVICE"] == "beam-expansion:8097"


def test_the_kafka_transforms_stage_no_artifact():
    """The expansion service's config maps the URN of each Kafka transform the Python SDK expands to no dependency:
    a staged artifact would live in the job server's pod, and the TaskManager must serve it to the harness's boot
    program from there (it cannot: the harness would not start). A Beam upgrade that renames a URN fails here."""
    from apache_beam.io.kafka import ReadFromKafka, WriteToKafka

    from io_connectors.kafka import IDLE_AWARE_READ_URN

    config = yaml.safe_load((REPO / "devstack/java_harness/expansion-service.yaml").read_text())
    assert set(config) == {"dependencies"}
    assert config["dependencies"] == {ReadFromKafka.URN_WITH_METADATA: [], ReadFromKafka.URN_WITHOUT_METADATA: [],
                                      WriteToKafka.URN: [], IDLE_AWARE_READ_URN: []}


def test_the_session_cluster_loads_beam_once():
    """parent-first class loading with the beam-services jar on Flink's classpath (HADOOP_CLASSPATH of the Flink
    image): Beam's runner classes load once per TaskManager, not once per job."""
    (_, fd), = by_kind("FlinkDeployment")
    assert fd["spec"]["flinkConfiguration"]["classloader.resolve-order"] == "parent-first"


def test_a_failure_restarts_the_whole_job_here_and_in_production():
    """Full failover, not region: Beam's Flink runner reuses a job's cached SDK environments while any of its
    tasks lives, so a partial restart kept reusing the one the fault had broken (leads x pool_kill x late)."""
    from devstack.services import flink

    (_, fd), = by_kind("FlinkDeployment")
    assert fd["spec"]["flinkConfiguration"]["jobmanager.execution.failover-strategy"] == "full"
    assert '"jobmanager.execution.failover-strategy: full"' in Path(flink.__file__).read_text()


def test_marketo_cronjob():
    (_, cj), = by_kind("CronJob")
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    c, = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "io_connectors.marketo_extractor", "incremental"]
    env = {e["name"]: e for e in c["env"]}
    for name in ("MARKETO_CLIENT_ID", "MARKETO_CLIENT_SECRET"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "iheardai-marketo"
    cm, = [d for _, d in by_kind("ConfigMap") if d["metadata"]["name"] == "iheardai-settings"]
    assert "MARKETO_BASE_URL" in cm["data"]


def test_settings_configmap_names_what_the_pipelines_read():
    cm, = [d for _, d in by_kind("ConfigMap") if d["metadata"]["name"] == "iheardai-settings"]
    settings_src = (REPO / "io_connectors" / "settings.py").read_text()
    read = set(re.findall(r'get\("([A-Z_]+)"', settings_src)) - {"DEVSTACK_HOME", "IHEARDAI_SECRETS_DIR"}  # local
    secret_names = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "SPACES_ACCESS_KEY", "SPACES_SECRET_KEY",
                    "KAFKA_PASSWORD", "KAFKA_USER"}
    # identities are per service (each pod's own principal Secret), never shared through the ConfigMap
    identities = {"KAFKA_USER", "POSTGRES_USER", "REDIS_USERNAME", "IHEARDAI_SECRETS_DIR", "KAFKA_PRINCIPAL",
                  "POSTGRES_PRINCIPAL", "REDIS_PRINCIPAL"}
    assert read - secret_names <= set(cm["data"]), f"ConfigMap lacks {sorted(read - secret_names - set(cm['data']))}"
    assert not (secret_names | identities) & set(cm["data"])
    assert cm["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    for key, value in cm["data"].items():
        assert isinstance(value, str), f"ConfigMap values must be strings: {key}"


# --- pipelines and their flags -----------------------------------------------------------------------

def test_pipeline_modules_named_are_known():
    pattern = re.compile(r"beam_pipelines\.(\w+)")
    named = set()
    for path in yaml_files() + [REPO / "Dockerfile", DEPLOY / "README.md"]:
        for m in pattern.finditer(path.read_text()):
            named.add(m.group(1))
    assert named, "no pipeline module named in the deployment files"
    modules = {f.stem for f in (REPO / "beam_pipelines").glob("*.py")}  # pipelines, options, worker_pool, ...
    assert named <= modules, f"unknown beam_pipelines modules: {sorted(named - modules)}"
    assert PIPELINES <= named, f"pipelines the deployment never names: {sorted(PIPELINES - named)}"


def _submit_jobs():
    out = {}
    for path, job in by_kind("Job"):
        c, = job["spec"]["template"]["spec"]["containers"]
        if c["command"][:3] == ["python", "flink-deploy/flinkctl.py", "submit"]:
            out[c["command"][3]] = (path, c)
    return out


def test_one_submit_job_per_pipeline():
    assert set(_submit_jobs()) == {f"beam_pipelines.{p}" for p in PIPELINES}


def test_submit_jobs_use_the_portable_flink_topology():
    for module, (path, c) in _submit_jobs().items():
        args = c["args"]
        name = module.rsplit(".", 1)[1]
        for flag in ("--runner=FlinkRunner", "--environment_type=EXTERNAL", "--environment_config=localhost:50000",
                     "--job_endpoint=$(BEAM_JOB_ENDPOINT)", "--artifact_endpoint=$(BEAM_ARTIFACT_ENDPOINT)",
                     f"--job_name=iheardai-{name}", "--retain_externalized_checkpoints_on_cancellation"):
            assert flag in args, f"{path}: missing {flag}"
        assert any(a.startswith("--checkpointing_interval=") for a in args), path


@pytest.fixture(scope="module")
def flinkctl():
    return _load_module("flinkctl", DEPLOY / "flinkctl.py")


def _declared_flags_parser(flinkctl):
    """A parser of every PipelineOptions flag the submitting process declares (Beam's, ours, flinkctl's)."""
    import beam_pipelines.options  # noqa: F401 - declares the project's options
    from apache_beam.options.pipeline_options import PipelineOptions

    flinkctl.register_restore_options()
    parser = argparse.ArgumentParser(allow_abbrev=False)
    seen, stack = set(), list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass
    return parser


def test_every_submitted_flag_is_declared(flinkctl):
    """Beam's FlinkRunner silently drops undeclared options when it submits to a job endpoint."""
    parser = _declared_flags_parser(flinkctl)
    env = {"SAVEPOINT_PATH": "s3://iheardai-flink/savepoints/savepoint-1", "ALLOW_NON_RESTORED_STATE": "true",
           "BEAM_ARTIFACT_ENDPOINT": "beam-job-server:8098"}
    for module, (path, c) in _submit_jobs().items():
        argv = flinkctl.submit_argv(module, c["args"], env)
        _, unknown = parser.parse_known_args(argv)
        assert not unknown, f"{path}: flags no PipelineOptions class declares (dropped by Beam): {unknown}"
        assert "--savepoint_path=s3://iheardai-flink/savepoints/savepoint-1" in argv
        assert "--allow_non_restored_state" in argv


def test_flinkctl_argv_defaults_and_validation(flinkctl):
    argv = flinkctl.submit_argv("beam_pipelines.kpi", ["--runner=FlinkRunner"], {"BEAM_ARTIFACT_ENDPOINT": "js:8098"})
    assert "--job_name=iheardai-kpi" in argv and "--artifact_endpoint=js:8098" in argv
    assert not any(a.startswith("--savepoint_path") for a in argv)
    with pytest.raises(SystemExit):
        flinkctl.submit_argv("beam_pipelines.nope", [], {})
    assert set(flinkctl.PIPELINES) == PIPELINES


def test_flinkctl_finds_running_jobs_by_name(flinkctl):
    overview = {"jobs": [
        {"jid": "a", "name": "iheardai-kpi", "state": "CANCELED", "start-time": 3},
        {"jid": "b", "name": "iheardai-kpi", "state": "RUNNING", "start-time": 2},
        {"jid": "c", "name": "iheardai-kpi-old", "state": "RUNNING", "start-time": 4},
        {"jid": "d", "name": "iheardai-billing", "state": "RUNNING", "start-time": 1},
    ]}
    assert [j["jid"] for j in flinkctl.matching_jobs(overview, "iheardai-kpi")] == ["b"]
    assert flinkctl.matching_jobs({"jobs": []}, "iheardai-kpi") == []


def test_flinkctl_parses_submit_flags_through(flinkctl, monkeypatch):
    calls = []
    monkeypatch.setattr(flinkctl, "cmd_submit", lambda module, flags, timeout: calls.append((module, flags)) or 0)
    assert flinkctl.main(["submit", "beam_pipelines.leads", "--runner=FlinkRunner", "--job_name=x",
                          "--streaming"]) == 0
    assert calls == [("beam_pipelines.leads", ["--runner=FlinkRunner", "--job_name=x", "--streaming"])]


_FRESH_SUBMITTER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("flinkctl", sys.argv[1])
flinkctl = importlib.util.module_from_spec(spec); spec.loader.exec_module(flinkctl)
flinkctl.register_restore_options()          # what `flinkctl.py _run` does first ...
import beam_pipelines.options                # ... then the pipeline module imports the project's options
from apache_beam.options.pipeline_options import PipelineOptions
opts = PipelineOptions(["--savepoint_path=s3://b/sp", "--allow_non_restored_state"])
opts.get_all_options()                       # what every external transform's expansion does
print(opts.get_all_options()["savepoint_path"])
"""


def test_flinkctl_restore_options_do_not_collide_with_the_projects(tmp_path):
    """In a fresh submitter process, flinkctl's declarations came first and beam_pipelines/options.py declared the
    same flags again: Beam's get_all_options() (run by every Kafka expansion) then failed with `argparse.ArgumentError:
    conflicting option string: --savepoint_path`, so every submit Job died while building its graph."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FRESH_SUBMITTER, str(DEPLOY / "flinkctl.py")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "s3://b/sp"
