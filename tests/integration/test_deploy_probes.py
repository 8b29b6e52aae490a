"""The liveness/startup probes of the production manifests, run as written against the local stack's real
services (the ports are the same): the worker pool answers StopWorker, the job server GetJobs, the expansion
service DiscoverSchemaTransform, all read-only. And each probe fails against a port nobody serves and when
the call fails (an unknown method answers grpc-status 12), so it cannot pass by accident.

    .venv/bin/pytest tests/integration/test_deploy_probes.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.deploy_helpers import load

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "flink-deploy"




m = load("manifests")
PROBES = {
    # name: (pod, container, port the command calls)
    "worker-pool": ("iheardai-flink-taskmanager", "beam-worker-pool", 50000),
    "job-server": ("beam-job-server", "job-server", 8099),
    "expansion-service": ("beam-expansion", "expansion-service", 8097),
}


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nobody listens there


@pytest.fixture(scope="module")
def services(request):
    if not all(_open(port) for _, _, port in PROBES.values()):
        request.getfixturevalue("stack")


def _command(name: str) -> list:
    pod, container, _ = PROBES[name]
    cmd = list(m.pod(pod).container(container)["livenessProbe"]["exec"]["command"])
    if cmd[0] == "python":  # the pipelines image's interpreter and root are this venv and this checkout
        cmd = [sys.executable] + [a.replace(m.PIPELINES_IMAGE_ROOT, str(REPO)) for a in cmd[1:]]
    return cmd


def _run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", PROBES)
def test_the_probe_passes_against_the_real_service(services, name):
    r = _run(_command(name))
    assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"


@pytest.mark.parametrize("name", PROBES)
def test_the_probe_fails_when_nothing_serves_its_port(name):
    port = PROBES[name][2]
    cmd = [a.replace(str(port), str(_closed_port())) for a in _command(name)]
    assert cmd != _command(name)
    assert _run(cmd).returncode != 0


@pytest.mark.parametrize("name", ["job-server", "expansion-service"])
def test_the_java_probes_fail_when_the_call_fails(services, name):
    cmd = [a.replace("/GetJobs", "/NoSuchMethod").replace("/DiscoverSchemaTransform", "/NoSuchMethod")
           for a in _command(name)]
    assert cmd != _command(name)
    assert _run(cmd).returncode != 0


def test_startup_and_liveness_probes_are_the_same_call():
    for pod, container, _ in PROBES.values():
        c = m.pod(pod).container(container)
        if "startupProbe" in c:
            assert c["startupProbe"]["exec"] == c["livenessProbe"]["exec"]
