"""Every manifest under flink-deploy/ and both rendered kustomizations validate strictly against the Kubernetes
schemas of the DOKS versions we target and the CRDs of the Flink Kubernetes Operator and Strimzi versions we name
(devstack/versions.py), and the validator refuses what the API server would refuse.

    .venv/bin/pytest tests/unit/test_deploy_schemas.py

The schemas and kustomize come from package registries on first use (PyPI `kubernetes-validate`, Maven Central,
the Go module proxy) and are cached under $DEVSTACK_HOME/k8s (flink-deploy/validate.py); warm, this file runs in
seconds. Nothing talks to a cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from devstack import versions
from tests.deploy_helpers import load

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "flink-deploy"




v = load("validate")


@pytest.fixture(scope="module")
def validators():
    return {minor: v.Validator(minor) for minor in versions.K8S}


@pytest.fixture(scope="module")
def rendered():
    return {k: v.render(DEPLOY / k) for k in v.KUSTOMIZATIONS}


def _objects():
    return [(str(p.relative_to(DEPLOY)), d) for p in v.manifest_files() for d in v.api_objects(v.load_documents(p))]


@pytest.mark.parametrize("minor", versions.K8S)
def test_every_manifest_validates_strictly(validators, minor):
    problems = [f"{where}: {d['kind']}/{d['metadata']['name']}: {e}"
                for where, d in _objects() for e in validators[minor].errors(d)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("minor", versions.K8S)
def test_rendered_kustomizations_validate_strictly(validators, rendered, minor):
    problems = [f"kustomize build {k}: {d['kind']}/{d['metadata']['name']}: {e}"
                for k, docs in rendered.items() for d in docs for e in validators[minor].errors(d)]
    assert not problems, "\n".join(problems)


def test_rendered_kustomizations_are_what_the_files_say(rendered):
    """kustomize adds the namespace and the part-of label, and drops nothing."""
    files = {(d["kind"], d["metadata"]["name"]) for where, d in _objects()
             if where.split("/")[0] in v.KUSTOMIZATIONS}
    out = {(d["kind"], d["metadata"]["name"]) for docs in rendered.values() for d in docs}
    assert out == files
    for docs in rendered.values():
        for d in docs:
            if d["kind"] != "Namespace":
                assert d["metadata"]["namespace"] == "iheardai-streaming", d["metadata"]["name"]
            assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "iheardai-streaming"
    # YAML anchors in beam-services.yaml (the probes) come out expanded.
    js = next(d for d in rendered["base"] if d["kind"] == "Deployment" and d["metadata"]["name"] == "beam-job-server")
    c, = js["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["exec"]["command"] == c["startupProbe"]["exec"]["command"]


def test_the_crds_are_the_versions_we_name():
    fd = v.crd("flink.apache.org", "FlinkDeployment")
    (ver,) = [x for x in fd["spec"]["versions"] if x["served"]]
    assert ver["name"] == "v1beta1"
    assert "v1_19" in ver["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["flinkVersion"]["enum"]
    kt = v.crd("kafka.strimzi.io", "KafkaTopic")
    assert [x["name"] for x in kt["spec"]["versions"] if x["served"]] == ["v1"]


# --- the validator refuses what it must (each check fails when the thing it guards breaks) -------------------

def _one(kind, name):
    return copy.deepcopy(next(d for _, d in _objects() if d["kind"] == kind and d["metadata"]["name"] == name))


def _latest(validators):
    return validators[versions.K8S[-1]]


def test_an_unknown_field_in_a_container_fails(validators):
    d = _one("Deployment", "beam-job-server")
    d["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 8099}}
    assert any("livenesProbe" in e for e in _latest(validators).errors(d))


def test_an_unknown_field_deep_in_a_flinkdeployment_pod_template_fails(validators):
    d = _one("FlinkDeployment", "iheardai-flink")
    pod = d["spec"]["taskManager"]["podTemplate"]["spec"]
    pod["containers"][1]["resources"]["request"] = {"cpu": 1}
    errs = _latest(validators).errors(d)
    assert any("request" in e for e in errs), errs
    d = _one("FlinkDeployment", "iheardai-flink")
    d["spec"]["taskManager"]["slots"] = 3
    assert any("slots" in e for e in _latest(validators).errors(d))


def test_a_flinkdeployment_with_a_wrong_type_or_version_fails(validators):
    d = _one("FlinkDeployment", "iheardai-flink")
    d["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] = 3  # the CRD's map holds strings
    assert _latest(validators).errors(d)
    d = _one("FlinkDeployment", "iheardai-flink")
    d["spec"]["flinkVersion"] = "v1_21"
    assert _latest(validators).errors(d)
    d = _one("FlinkDeployment", "iheardai-flink")
    d["metadata"]["labelz"] = {}
    assert any("labelz" in e for e in _latest(validators).errors(d))


def test_a_v1beta2_kafkatopic_or_an_unknown_topic_field_fails(validators):
    t = _one("KafkaTopic", "text-agent-turn-completed")
    assert not _latest(validators).errors(t)
    old = dict(t, apiVersion="kafka.strimzi.io/v1beta2")
    assert any("serves only ['v1']" in e for e in _latest(validators).errors(old))
    bad = copy.deepcopy(t)
    bad["spec"]["replicationFactor"] = 3
    assert any("replicationFactor" in e for e in _latest(validators).errors(bad))


def test_an_api_the_cluster_does_not_serve_fails(validators):
    d = _one("NetworkPolicy", "default-deny")
    d["apiVersion"] = "extensions/v1beta1"
    assert _latest(validators).errors(d)
    cj = _one("CronJob", "marketo-extractor")
    cj["apiVersion"] = "batch/v1beta1"  # removed in Kubernetes 1.25
    assert _latest(validators).errors(cj)


def test_a_wrong_type_in_a_core_object_fails(validators):
    d = _one("Service", "beam-expansion")
    d["spec"]["ports"][0]["port"] = "eighty"
    assert _latest(validators).errors(d)


def test_the_prometheus_operator_resources_are_checked_too(validators):
    """monitoring.yaml and observability-generated.yaml against CRDs generated from the operator's API module."""
    pm = _one("PodMonitor", "iheardai-flink")
    assert not _latest(validators).errors(pm)
    pm["spec"]["podMetricsEndpoints"][0]["scrapeEvery"] = "15s"
    assert any("scrapeEvery" in e for e in _latest(validators).errors(pm))
    rule = _one("PrometheusRule", "iheardai-alerts")
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up == 0"
    assert any("exprr" in e for e in _latest(validators).errors(rule))
