"""Every production pod's requests fit a node, and the whole fits four s-4vcpu-8gb nodes with headroom, with
Flink's memory model applied to the Flink containers (its JVM overhead holding the Java SDK harness processes each
TaskManager starts); the README's sizing tables are the ones computed here.

    .venv/bin/pytest tests/unit/test_deploy_sizing.py
    python flink-deploy/sizing.py            # the tables
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tests.deploy_helpers import load

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "flink-deploy"
SAMPLES = Path(__file__).resolve().parent / "flink_samples"
MiB = 2 ** 20




s = load("sizing")
m = load("manifests")


def test_the_memory_model_is_flinks():
    """The local TaskManager (process 4096m, metaspace 1024m) as Flink 1.19.3 itself reported it over REST."""
    real = json.loads((SAMPLES / "taskmanager_memory.json").read_text())["memoryConfiguration"]
    ours = s.taskmanager_memory(4096 * MiB, {"taskmanager.memory.jvm-metaspace.size": "1024m"})
    for key, value in real.items():
        assert abs(ours[key] - value) <= 64, (key, ours[key], value)  # Flink rounds to whole bytes


def test_the_memory_model_refuses_a_taskmanager_without_heap():
    with pytest.raises(ValueError, match="no task heap"):
        s.taskmanager_memory(1024 * MiB, {"taskmanager.memory.jvm-metaspace.size": "512m"})


def test_flink_and_kubernetes_memory_units_differ():
    assert m.flink_memory("2048m") == 2048 * MiB  # Flink: mebibytes
    assert m.k8s_quantity("2048m") == pytest.approx(2.048)  # Kubernetes: milli-bytes
    assert m.k8s_quantity("1536Mi") == 1536 * MiB and m.k8s_quantity("250m") == 0.25


def test_the_flink_pods_get_what_the_flinkdeployment_asks():
    tm = s.demand(m.pod("iheardai-flink-taskmanager"))
    fd, = m.by_kind("FlinkDeployment")
    main = next(c for c in tm.containers if c[0] == "flink-main-container")
    assert main[2] == m.flink_memory(fd["spec"]["taskManager"]["resource"]["memory"])
    assert main[3] == fd["spec"]["taskManager"]["resource"]["cpu"] * 2  # kubernetes.taskmanager.cpu.limit-factor
    assert m.pod("iheardai-flink-taskmanager").replicas == 3  # 8 slots / 3 per TaskManager


def test_the_taskmanager_memory_holds_its_java_harnesses():
    """Kafka IO's Java half runs in one Java SDK harness process per job with a task on a TaskManager, inside
    flink-main-container but outside Flink's JVM: the container's memory (Flink's process size) must hold, as JVM
    overhead, the JVM's own native memory plus the most harnesses it can run at once (one per slot) at the heap the
    TaskManager gives them."""
    h = s.harnesses()
    fd, = m.by_kind("FlinkDeployment")
    conf = m.flink_conf(fd)
    assert h.per_taskmanager == int(conf["taskmanager.numberOfTaskSlots"]) == 3  # 5 jobs, 3 slots
    p = m.pod("iheardai-flink-taskmanager")
    assert h.heap == s.java_size(m.effective_env(p, p.container("flink-main-container"))["BEAM_JAVA_HARNESS_HEAP"])
    assert h.overhead >= h.needed
    assert conf["taskmanager.memory.jvm-overhead.min"] == conf["taskmanager.memory.jvm-overhead.max"], \
        "a fraction would let Flink shrink the overhead with the process size"
    assert s.java_size("128m") == 128 * MiB and s.java_size("1g") == 1024 * MiB
    with pytest.raises(ValueError):
        s.java_size("128Mi")


def test_the_sizing_check_fails_when_the_harnesses_outgrow_the_overhead(monkeypatch):
    """The local stack's 512m harness heap in production's TaskManager: three harnesses no longer fit its overhead."""
    real = m.pods

    def bigger_heap():
        pods = copy.deepcopy(real())
        for p in pods:
            if p.name == "iheardai-flink-taskmanager":
                c = p.container("flink-main-container")
                c["env"] = [e for e in c["env"] if e["name"] != "BEAM_JAVA_HARNESS_HEAP"] + [
                    {"name": "BEAM_JAVA_HARNESS_HEAP", "value": "512m"}]
        return pods

    monkeypatch.setattr(m, "pods", bigger_heap)
    assert s.harnesses().heap == 512 * MiB
    assert any("JVM overhead" in p and "Java SDK harnesses" in p for p in s.report().problems)


def test_every_pod_fits_and_the_steady_state_has_headroom():
    r = s.report()
    assert not r.problems, "\n".join(r.problems)
    assert r.ffd is not None and all(n.used_mem <= n.mem * r.model.headroom for n in r.ffd)


def test_readme_shows_the_computed_tables():
    assert s.readme_block(s.README.read_text()) == s.tables(s.report()), \
        "flink-deploy/README.md sizing tables are stale: run `python flink-deploy/sizing.py --write`"


def test_the_sizing_check_fails_when_a_pod_grows(monkeypatch):
    """The issue's original sizing (a 5.5 GiB TaskManager pod, 4 slots) must not pass."""
    real = m.pods

    def bigger():
        pods = copy.deepcopy(real())
        for p in pods:
            if p.name == "iheardai-flink-taskmanager":
                for c in p.spec["containers"]:
                    c["resources"] = {"requests": {"cpu": 1, "memory": "3584Mi"},
                                      "limits": {"cpu": 2, "memory": "3584Mi"}}
        return pods

    monkeypatch.setattr(m, "pods", bigger)
    problems = s.report().problems
    assert any("more than one node offers" in p for p in problems), problems
    assert any("does not pack" in p or "find no node" in p for p in problems), problems


def test_the_sizing_check_fails_on_overcommitted_memory(monkeypatch):
    real = m.pods

    def overcommitted():
        pods = copy.deepcopy(real())
        for p in pods:
            if p.name == "beam-expansion":
                p.spec["containers"][0]["resources"]["requests"]["memory"] = "256Mi"  # limit 512Mi
        return pods

    monkeypatch.setattr(m, "pods", overcommitted)
    assert any("memory limit" in p for p in s.report().problems)


def test_smaller_nodes_fail():
    problems = s.report(s.NodeModel(allocatable_mem=5 * 1024 * MiB)).problems
    assert problems
