"""What each production container is given must exist: every file path a process is passed is mounted in that
container (or baked into its image), every Secret and key a pod reads is one the deployment creates, every pod
can pull its images, the probes call something real, the operator chart and our RBAC own different objects, and
the README's deploy and upgrade steps run in a working order with the commands flinkctl.py accepts.

    .venv/bin/pytest tests/unit/test_deploy_pods.py

The pods are those of flink-deploy/manifests.py: the manifests' own plus the Flink JobManager and TaskManager
pods as the operator builds them from the FlinkDeployment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from devstack import versions
from tests.deploy_helpers import load

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "flink-deploy"
README = DEPLOY / "README.md"
BEAM_JAR = f"/opt/beam/beam-services-{versions.BEAM}-flink-{versions.FLINK_MINOR}.jar"
REGISTRY_SECRET = "registry-iheardai"




m = load("manifests")


LAUNCHER = "/opt/beam/java_harness/beam-java-harness"  # the PROCESS environment's command
HARNESS_DIR = REPO / "devstack" / "java_harness"


@pytest.fixture(scope="module")
def pipelines_image_files():
    return set(m.image_files())


_FLINK_FILES = {}


def _flink_files(dockerfile: Path = m.FLINK_DOCKERFILE) -> set:
    """Every file Dockerfile.flink puts in the Flink image (copied from the context or out of its build stages)."""
    if dockerfile not in _FLINK_FILES:
        _FLINK_FILES[dockerfile] = set(m.image_paths(dockerfile))
    return _FLINK_FILES[dockerfile]


def _flink_image_has(path: str, files=None) -> bool:
    """The Flink image holds the path: Dockerfile.flink put it there, or it is the base image's (Flink, the JDK)."""
    return m.image_has(path, _flink_files() if files is None else files, m.FLINK_BASE_DIRS)


def _unmounted(p, c, image_files, flink_files=None) -> list:
    mounted = m.mounted_files(p, c)
    image = p.image_of.get(c["name"], "")
    missing = []
    for where, path in m.paths_passed(c):
        if path in mounted or any(k.endswith("/") and (path + "/").startswith(k) for k in mounted):
            continue
        if any(k.startswith(path.rstrip("/") + "/") for k in mounted):  # a directory of mounted files
            continue
        if m.is_pipelines_image(image) and (path in image_files or any(f.startswith(path.rstrip("/") + "/")
                                                                       for f in image_files)):
            continue
        if m.is_flink_image(image) and _flink_image_has(path, flink_files):
            continue
        missing.append(f"{p.name}/{c['name']} {where}: {path}")
    return missing


def test_every_file_path_given_to_a_process_is_mounted_or_in_its_image(pipelines_image_files):
    missing = [x for p, c in m.iter_containers() for x in _unmounted(p, c, pipelines_image_files)]
    assert not missing, "paths that no mount and no image provides:\n" + "\n".join(missing)


def test_the_java_kafka_clients_can_read_the_truststore_the_submitter_names():
    """The submitter puts ssl.truststore.location=$KAFKA_SSL_CA_FILE in the Kafka config of the job; the Java
    clients that use that config run in the TaskManagers' flink-main-container (the Kafka source in the TaskManager
    JVM, the producers in the Java SDK harness processes it starts) and the job server (it splits the Kafka
    source): that path must be a mounted file there, holding the CA from the same Secret."""
    cm = m.named("ConfigMap", "iheardai-settings")["data"]
    ca = cm["KAFKA_SSL_CA_FILE"]
    for pod, container in (("iheardai-flink-taskmanager", "flink-main-container"), ("beam-job-server", "job-server")):
        p = m.pod(pod)
        assert m.mounted_files(p, p.container(container)).get(ca) == ("iheardai-kafka-ca", "ca.crt"), \
            f"{pod}/{container} does not mount {ca}"


def test_the_path_check_catches_an_unmounted_file(pipelines_image_files):
    p = m.pod("iheardai-flink-taskmanager")
    c = p.container("beam-worker-pool")
    assert not _unmounted(p, c, pipelines_image_files)
    broken = {**c, "env": c["env"] + [{"name": "EXTRA_FILE", "value": "/var/run/secrets/other/ca.crt"}]}
    assert _unmounted(p, broken, pipelines_image_files) == [
        "iheardai-flink-taskmanager/beam-worker-pool env EXTRA_FILE: /var/run/secrets/other/ca.crt"]
    no_mount = {**c, "volumeMounts": []}
    assert any("PII_HMAC_KEY_FILE" in x for x in _unmounted(p, no_mount, pipelines_image_files))


# --- the Java SDK harness (Kafka IO's Java half in a PROCESS environment) ------------------------------------

def _expansion_command() -> list:
    return m.container_argv(m.pod("beam-expansion").container("expansion-service"))


def test_the_harness_command_and_its_java_shim_are_in_the_flink_image_and_executable(tmp_path):
    """The expansion service names the command each TaskManager runs for a job's harness: it must be in the image the
    TaskManagers run (they run the same Flink image), executable, with the java shim it puts first in PATH."""
    config, = [json.loads(a.split("=", 1)[1]) for a in _expansion_command()
               if a.startswith("--defaultEnvironmentConfig=")]
    assert config["command"] == LAUNCHER
    tm = m.pod("iheardai-flink-taskmanager")
    assert m.is_flink_image(tm.image_of["flink-main-container"])
    assert tm.image_of["flink-main-container"] == m.pod("beam-expansion").image_of["expansion-service"]
    root = m.build_image_tree(tmp_path, m.FLINK_DOCKERFILE)
    launcher = root / LAUNCHER.lstrip("/")
    shim = launcher.parent / "bin" / "java"  # beam-java-harness: PATH="$here/bin:$PATH"
    assert 'export PATH="$here/bin:$PATH"' in launcher.read_text()
    for image_file, source in ((launcher, HARNESS_DIR / "beam-java-harness"), (shim, HARNESS_DIR / "bin" / "java")):
        assert image_file.is_file(), f"Dockerfile.flink does not copy {source.relative_to(REPO)}"
        assert image_file.read_bytes() == source.read_bytes()
        assert os.access(image_file, os.X_OK), f"{image_file.relative_to(root)} is not executable in the image"


def test_the_files_the_expansion_service_stages_are_in_its_image():
    argv = _expansion_command()
    named = [a.split("=", 1)[1] for a in argv if a.startswith(("--filesToStage=", "--expansionServiceConfigFile="))]
    assert len(named) == 2
    for path in named:
        assert path in _flink_files(), f"the Flink image has no {path}"
    # the empty jar comes out of the Maven stage, the config with the launcher
    assert m.dockerfile_stage_outputs(m.FLINK_DOCKERFILE)["/opt/beam/beam-java-harness-empty.jar"][0] == "beam-services"


def test_the_path_check_catches_a_launcher_the_image_lacks(tmp_path):
    text = m.FLINK_DOCKERFILE.read_text()
    copy = "COPY --chmod=0755 devstack/java_harness/ /opt/beam/java_harness/\n"
    assert copy in text
    broken = tmp_path / "Dockerfile.flink"
    broken.write_text(text.replace(copy, ""))
    files = set(m.image_paths(broken))
    assert LAUNCHER not in files and LAUNCHER in _flink_files()
    p = m.pod("beam-expansion")
    assert not _unmounted(p, p.container("expansion-service"), set())
    missing = _unmounted(p, p.container("expansion-service"), set(), files)
    assert f"beam-expansion/expansion-service argv: {LAUNCHER}" in missing


def test_the_taskmanager_gives_the_harness_launcher_what_it_reads():
    """beam-java-harness and its java shim read their settings from the environment the TaskManager passes on: each
    one the scripts read is set in the TaskManager container (its image's ENV or the pod template), pointing at what
    the image or a mount holds. Production does not rely on the scripts' defaults ($TMPDIR, 512m)."""
    scripts = (HARNESS_DIR / "beam-java-harness").read_text() + (HARNESS_DIR / "bin" / "java").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", scripts))
    optional = set(re.findall(r"\$\{(BEAM_\w+):-", scripts))
    assert required == {"BEAM_JAVA_BOOT", "BEAM_JAVA_HARNESS_JAR", "JAVA_HOME"}, required
    assert optional == {"BEAM_JAVA_HARNESS_DIR", "BEAM_JAVA_HARNESS_HEAP"}, optional
    p = m.pod("iheardai-flink-taskmanager")
    c = p.container("flink-main-container")
    env = m.effective_env(p, c)
    assert not (required - {"JAVA_HOME"}) - set(env) and not optional - set(env), sorted(set(env))
    # JAVA_HOME is the base image's (eclipse-temurin); the image's build fails without it
    assert 'test -x "$JAVA_HOME/bin/java"' in m.FLINK_DOCKERFILE.read_text()
    assert m.dockerfile_stage_outputs(m.FLINK_DOCKERFILE)[env["BEAM_JAVA_BOOT"]][0] == "java-boot"
    assert env["BEAM_JAVA_HARNESS_JAR"] == BEAM_JAR and BEAM_JAR in _flink_files()
    # the working directories: a mount uid 9999 can write (an emptyDir), not the image's read-only layers
    assert m.mounted_files(p, c).get(env["BEAM_JAVA_HARNESS_DIR"].rstrip("/") + "/", "not mounted") is None
    assert re.fullmatch(r"[0-9]+[kmg]", env["BEAM_JAVA_HARNESS_HEAP"])


def test_flink_has_the_beam_jar_on_its_classpath():
    """HADOOP_CLASSPATH: Flink's scripts append it after lib/ for the JobManager and the TaskManagers, so Beam's
    runner classes load from the cluster's classpath (parent-first, base/flink-session.yaml)."""
    for pod in ("iheardai-flink-jobmanager", "iheardai-flink-taskmanager"):
        p = m.pod(pod)
        entries = m.effective_env(p, p.container("flink-main-container"))["HADOOP_CLASSPATH"].split(":")
        assert BEAM_JAR in entries, pod
        assert all(_flink_image_has(e) for e in entries), entries
    # not in lib/: Flink's scripts put flink-dist last of lib/'s jars, so the shaded jar's own copies of Flink's
    # classes (it carries ~20k of them) would win over Flink's
    assert not [f for f in _flink_files() if f.startswith("/opt/flink/lib/")]


def _secret_refs(p) -> list:
    refs = []
    for c in p.containers():
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.append((f"{c['name']} env {e['name']}", ref["name"], ref["key"]))
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                refs.append((f"{c['name']} envFrom", src["secretRef"]["name"], None))
    for v in p.spec.get("volumes", []):
        for name, key, _ in m.volume_secret_refs(v):
            refs.append((f"volume {v['name']}", name, key))
    for s in p.spec.get("imagePullSecrets", []):
        refs.append(("imagePullSecrets", s["name"], ".dockerconfigjson"))
    return refs


def test_every_secret_and_key_a_pod_reads_is_in_the_templates():
    defined = m.secrets_defined()
    missing = []
    for p in m.pods():
        for where, name, key in _secret_refs(p):
            if name not in defined or (key is not None and key not in defined[name]):
                missing.append(f"{p.name} {where}: {name}/{key}")
    for sa in m.by_kind("ServiceAccount"):
        for s in sa.get("imagePullSecrets", []):
            if s["name"] not in defined:
                missing.append(f"ServiceAccount/{sa['metadata']['name']} imagePullSecrets: {s['name']}")
    assert not missing, "Secrets read but never created:\n" + "\n".join(missing)
    used = {name for p in m.pods() for _, name, _ in _secret_refs(p)} | {
        s["name"] for sa in m.by_kind("ServiceAccount") for s in sa.get("imagePullSecrets", [])}
    assert set(defined) == used, f"templates nobody reads: {sorted(set(defined) - used)}"


def test_every_pod_can_pull_from_the_registry():
    """DigitalOcean's registry integration covers the `default` account only; our pods run as other accounts."""
    accounts = {sa["metadata"]["name"]: sa for sa in m.by_kind("ServiceAccount")}
    for p in m.pods():
        sa = p.spec.get("serviceAccountName")
        assert sa in accounts, f"{p.name} runs as {sa!r}, which base/rbac.yaml does not create"
        pulls = {s["name"] for s in accounts[sa].get("imagePullSecrets", []) + p.spec.get("imagePullSecrets", [])}
        if any(i.startswith("registry.digitalocean.com/") for i in p.image_of.values()):
            assert REGISTRY_SECRET in pulls, f"{p.name} ({sa}) has no pull secret for registry.digitalocean.com"


def test_the_pii_key_reaches_the_workers_and_the_submitters_that_check_it():
    policy = __import__("transforms.pii", fromlist=["PiiPolicy"]).PiiPolicy.load()
    assert policy.needs_key()
    pool = m.pod("iheardai-flink-taskmanager").container("beam-worker-pool")
    assert m.container_env(pool)["PII_HMAC_KEY_FILE"] == "/var/run/secrets/iheardai/pii/hmac-key"
    redacting = {p for p in ("kpi", "frontend", "leads", "billing", "archive")
                 if "RedactPii" in (REPO / "beam_pipelines" / f"{p}.py").read_text()}
    for p in ("kpi", "frontend", "leads", "billing", "archive"):
        env = m.container_env(m.pod(f"submit-{p}").spec["containers"][0])
        assert ("PII_HMAC_KEY_FILE" in env) == (p in redacting), \
            f"submit-{p}: the key must be mounted exactly where the graph redacts ({sorted(redacting)})"


def test_the_field_key_ring_reaches_the_workers_and_only_the_submitters_whose_topics_are_encrypted():
    from beam_pipelines import frontend, kpi, leads
    from transforms.pii import PiiPolicy

    policy = PiiPolicy.load()
    ring = "/var/run/secrets/iheardai/pii/field-keys"
    assert m.container_env(m.pod("iheardai-flink-taskmanager").container("beam-worker-pool"))[
        "IHEARDAI_FIELD_KEYS_FILE"] == ring
    for name, module in (("kpi", kpi), ("frontend", frontend), ("leads", leads)):
        encrypts = policy.needs_field_keys([policy.require(t) for t in module.TOPICS])
        env = m.container_env(m.pod(f"submit-{name}").spec["containers"][0])
        assert (env.get("IHEARDAI_FIELD_KEYS_FILE") == ring) == encrypts, f"submit-{name}"
    for name in ("billing", "archive"):
        assert "IHEARDAI_FIELD_KEYS_FILE" not in m.container_env(m.pod(f"submit-{name}").spec["containers"][0])


def test_long_running_containers_have_liveness_probes_that_call_the_service():
    p = m.pod("iheardai-flink-taskmanager")
    pool = p.container("beam-worker-pool")
    cmd = pool["livenessProbe"]["exec"]["command"]
    assert cmd[:3] == ["python", "/opt/iheardai/flink-deploy/probes.py", "worker-pool"], cmd
    for pod, container, method in (
            ("beam-job-server", "job-server", "org.apache.beam.model.job_management.v1.JobService/GetJobs"),
            ("beam-expansion", "expansion-service",
             "org.apache.beam.model.expansion.v1.ExpansionService/DiscoverSchemaTransform")):
        c = m.pod(pod).container(container)
        for probe in ("startupProbe", "livenessProbe"):
            script = " ".join(c[probe]["exec"]["command"])
            assert "--http2-prior-knowledge" in script and method in script and "grpc-status: 0" in script, \
                f"{pod} {probe}: {script}"
    assert "apt-get install -y --no-install-recommends curl" in (REPO / "Dockerfile.flink").read_text(), \
        "the Java services' probes run curl: Dockerfile.flink must install it"


def test_the_worker_pool_probe_sends_the_message_beam_defines():
    from apache_beam.portability.api import beam_fn_api_pb2

    probes = load("probes")
    assert probes.stop_worker_request() == beam_fn_api_pb2.StopWorkerRequest(
        worker_id=probes.PROBE_WORKER_ID).SerializeToString()
    assert probes.STOP_WORKER.endswith(
        beam_fn_api_pb2.DESCRIPTOR.services_by_name["BeamFnExternalWorkerPool"].methods_by_name["StopWorker"].name)


# --- the operator chart and our RBAC ------------------------------------------------------------------------

def test_operator_chart_values_leave_the_job_account_to_us():
    vals = yaml.safe_load((DEPLOY / "operator-values.yaml").read_text())
    assert vals["watchNamespaces"] == [m.NAMESPACE]
    assert vals["jobServiceAccount"]["create"] is False
    assert vals["rbac"]["jobRole"]["create"] is False and vals["rbac"]["jobRoleBinding"]["create"] is False
    # Whatever the chart would create in our namespace by default must not share a name with our objects.
    chart_defaults = {("ServiceAccount", "flink"), ("Role", "flink"), ("RoleBinding", "flink-role-binding"),
                      ("Role", "flink-operator"), ("RoleBinding", "flink-operator-role-binding")}
    ours = {(d["kind"], d["metadata"]["name"]) for _, d in m.objects()}
    assert not chart_defaults & ours
    (fd,) = m.by_kind("FlinkDeployment")
    assert fd["spec"]["serviceAccount"] in {n for k, n in ours if k == "ServiceAccount"}
    assert "iheardai-flink-cluster" in {s["name"] for rb in m.by_kind("RoleBinding") for s in rb["subjects"]}


# --- README: deploy order, upgrade and rollback -------------------------------------------------------------

def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _commands(section: str) -> list:
    """Shell lines of the section's ```bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip() if not line.strip().startswith("#") else ""
            if line:
                lines.append(line)
    return lines


DEPLOY_ORDER = [
    ("the namespace", r"kubectl apply -f flink-deploy/base/namespace\.yaml"),
    ("the registry pull secret", r"doctl registry kubernetes-manifest .*--name registry-iheardai"),
    ("the PII key", r"create secret generic iheardai-pii"),
    ("the Kafka CA", r"create secret generic iheardai-kafka-ca"),
    ("the operator, watching the namespace", r"helm install flink-kubernetes-operator .*-f flink-deploy/operator-values\.yaml"),
    ("the Kafka topics", r"gen_topics\.py"),
    ("the long-running pieces", r"kubectl apply -k flink-deploy/base"),
    ("the JobManager ready", r"kubectl -n \S+ wait flinkdeployment/iheardai-flink"),
    ("the schema", r"kubectl apply -f flink-deploy/jobs/migrate\.yaml"),
    ("the schema applied", r"wait --for=condition=complete job/sql-migrate"),
    ("the pipelines, one after another", r"kubectl apply -f flink-deploy/jobs/submit-\$p\.yaml"),
]


def test_readme_deploy_steps_run_in_a_working_order():
    cmds = _commands(_section("Deploy"))
    at = -1
    for what, pattern in DEPLOY_ORDER:
        hits = [i for i, c in enumerate(cmds) if re.search(pattern, c)]
        assert hits, f"README Deploy: no step for {what} (/{pattern}/)"
        assert hits[0] > at, f"README Deploy: {what} comes before the step it needs"
        at = hits[0]
    every_secret = set(m.secrets_defined()) - {REGISTRY_SECRET}
    created = {s for c in cmds for s in re.findall(r"create secret generic (\S+)", c)}
    assert every_secret <= created, f"README Deploy creates no {sorted(every_secret - created)}"
    helm = next(c for c in cmds if c.startswith("helm install"))
    assert f"--version {versions.FLINK_OPERATOR}" in helm and "--set watchNamespaces" not in helm
    repo = next(c for c in cmds if c.startswith("helm repo add"))
    assert f"flink-kubernetes-operator-{versions.FLINK_OPERATOR}" in repo


def _flinkctl_calls(section: str) -> list:
    out = []
    for c in _commands(section):
        for call in re.findall(r"(?:^|[;&|(]\s*|do\s+)ctl ([^;|&]+)", c):
            out.append(shlex.split(call.replace("$p", "kpi")))
    return out


@pytest.mark.parametrize("title", ["Upgrade with savepoints", "Roll back"])
def test_readme_upgrade_and_rollback_use_what_flinkctl_accepts(title, capsys):
    flinkctl = load("flinkctl")
    calls = _flinkctl_calls(_section(title))
    assert calls, f"README {title}: no flinkctl call"
    for argv in calls:
        assert argv[0] in ("stop", "savepoint", "list"), argv
        called = {}

        def fake(*a, _name=argv[0]):
            called[_name] = a
            return 0

        import unittest.mock as mock

        with mock.patch.object(flinkctl, "cmd_stop", fake), mock.patch.object(flinkctl, "cmd_savepoint", fake), \
                mock.patch.object(flinkctl, "cmd_list", fake):
            assert flinkctl.main(argv) == 0, argv
        assert called, argv
    text = _section(title)
    for p in flinkctl.PIPELINES:
        assert p in text
    # The loop names every pipeline, and the resubmission sets the variable flinkctl.submit_argv reads.
    assert "for p in kpi frontend billing archive leads" in text
    if title.startswith("Upgrade"):
        assert "SAVEPOINT_PATH" in text
        assert flinkctl.submit_argv("beam_pipelines.kpi", [], {"SAVEPOINT_PATH": "s3://b/sp-1"})[-1] == \
            "--savepoint_path=s3://b/sp-1"


def test_readme_ctl_pod_can_reach_flink_and_pull_its_image():
    """The ad-hoc flinkctl pod needs the label the flinkctl NetworkPolicy selects and an account with the pull
    secret."""
    text = _section("Upgrade with savepoints")
    ctl = next(c for c in _commands(text) if c.startswith("ctl() {"))
    assert "--labels=app.kubernetes.io/component=flinkctl" in ctl
    assert '"serviceAccountName":"iheardai-pipelines"' in ctl.replace(" ", "")
    policies = {d["metadata"]["name"]: d for d in m.by_kind("NetworkPolicy")}
    assert policies["flinkctl"]["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "flinkctl"}
