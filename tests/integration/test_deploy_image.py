"""The pipelines image holds what its containers need: from a directory holding exactly what ./Dockerfile copies
(the .dockerignore applied), each pipeline's graph builds with its submit Job's flags, environment and mounted
files, and serializes as it would be submitted; the worker pool's environment gives the workers every secret
they read; every command a pipelines-image container runs exists in the image.

    .venv/bin/pytest tests/integration/test_deploy_image.py

Needs the Kafka expansion service (the local stack's, localhost:8097): building a graph expands its Kafka read
and DLQ write there (read-only; nothing is submitted, no broker is contacted). See flink-deploy/image_check.py.
"""

from __future__ import annotations

import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.deploy_helpers import load

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "flink-deploy"
EXPANSION = "localhost:8097"




ic = load("image_check")


def _port_open(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


@pytest.fixture(scope="module")
def expansion_service(request):
    """The local stack's expansion service; the stack is started only if it is not listening already."""
    if not _port_open(EXPANSION):
        request.getfixturevalue("stack")
    return EXPANSION


@pytest.fixture(scope="module")
def box():
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        yield ic.ImageSandbox(Path(tmp))


@pytest.fixture(scope="module")
def graphs(box, expansion_service):
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {p: pool.submit(ic.build_graph, box, p, expansion_service) for p in ic.PIPELINES}
        return {p: f.result() for p, f in futures.items()}


@pytest.mark.parametrize("pipeline", ic.PIPELINES)
def test_each_pipeline_graph_builds_from_the_image_with_the_jobs_settings(graphs, pipeline):
    r = graphs[pipeline]
    assert r.ok, f"{pipeline}: the graph does not build from the image's files:\n{r.log}"
    assert r.output["runner"] == "FlinkRunner" and r.output["transforms"] > 10
    assert r.output["modules_outside_image"] == []
    argv = r.output["argv"]
    assert f"--job_name=iheardai-{pipeline}" in argv and "--environment_config=localhost:50000" in argv
    assert r.max_rss_mib < 512 * 0.75, f"{pipeline}: building the graph took {r.max_rss_mib} MiB, the Job has 512"


def test_the_worker_pool_environment_gives_the_workers_their_secrets(box):
    r = ic.worker_environment(box)
    assert r.ok, r.log
    out = r.output
    assert out["pii_key"], "the worker pool has no PII key: RedactPii's workers would fail in setup()"
    assert out["PostgresSettings"]["password"] and out["RedisSettings"]["password"]
    assert out["SpacesSettings"]["access_key"] and out["SpacesSettings"]["secret_key"]
    assert out["KafkaSettings"]["sasl_password"] and out["KafkaSettings"]["ssl_ca_file"]


def test_every_command_of_a_pipelines_image_container_exists_in_the_image(box):
    r = ic.check_commands(box)
    assert r.ok, r.log
    commands = {k: v for k, v in r.output.items() if ":" in k}
    assert commands and all(v is True for v in commands.values()), commands
    assert "module:sql.migrate" in commands and "file:flink-deploy/probes.py" in commands


# --- the check fails when the image misses something ----------------------------------------------------------

def test_an_image_without_config_fails_to_build_a_graph(expansion_service, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text((REPO / "Dockerfile").read_text().replace("COPY config ./config\n", ""))
    m = load("manifests")
    real = m.build_image_tree
    try:
        m.build_image_tree = lambda root, _d=dockerfile: real(root, _d)
        broken = ic.ImageSandbox(tmp_path / "box")
    finally:
        m.build_image_tree = real
    r = ic.build_graph(broken, "leads", expansion_service)
    assert not r.ok and "pii_policy.json" in r.log


def test_a_package_the_dockerfile_forgot_cannot_be_imported_from_the_checkout(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text((REPO / "Dockerfile").read_text().replace("COPY events ./events\n", ""))
    m = load("manifests")
    real = m.build_image_tree
    try:
        m.build_image_tree = lambda root, _d=dockerfile: real(root, _d)
        broken = ic.ImageSandbox(tmp_path / "box")
    finally:
        m.build_image_tree = real
    r = ic.check_commands(broken)
    assert "No module named 'events'" in str(r.output.get("module:sql.migrate", "")) + str(
        r.output.get("module:io_connectors.marketo_extractor", "")), r.output
    r = ic.worker_environment(broken)
    assert not r.ok and "events" in r.log


def test_a_submitter_without_the_pii_key_fails(box, expansion_service, monkeypatch):
    m = load("manifests")
    real = m.container_env

    def without_key(c):
        env = real(c)
        env.pop("PII_HMAC_KEY_FILE", None)
        return env

    monkeypatch.setattr(m, "container_env", without_key)
    r = ic.build_graph(box, "leads", expansion_service)
    assert not r.ok and "PII_HMAC_KEY" in r.log
