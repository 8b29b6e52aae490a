"""The NetworkPolicies in flink-deploy/base/network-policies.yaml allow exactly the connections each component
needs: every needed path is open, every other path between our pods, from other pods and namespaces, and out
of the cluster is closed.

    .venv/bin/pytest tests/unit/test_deploy_network.py

The rules are evaluated the way Kubernetes defines them (a pod selected by a policy of a direction accepts only
what some rule of those policies allows; a connection needs the source's egress and the destination's
ingress). The needed paths are derived from the manifests where they say it (the endpoints in the settings
ConfigMap, Flink's pinned ports, the job server's --flink-master), so a changed port fails here until the policy
follows.
"""

from __future__ import annotations

import functools
import itertools
import sys
from pathlib import Path
from typing import Dict, Optional, Set, Tuple

import pytest
from tests.deploy_helpers import load

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "flink-deploy"
NS = "iheardai-streaming"




m = load("manifests")
POLICIES = m.by_kind("NetworkPolicy")

# --- endpoints ---------------------------------------------------------------------------------------------


def _pod_labels(name: str) -> Dict[str, str]:
    return m.pod(name).labels


ENDPOINTS: Dict[str, Tuple[str, Dict[str, str]]] = {
    # name: (namespace, labels); None namespace = outside the cluster
    "jobmanager": (NS, _pod_labels("iheardai-flink-jobmanager")),
    "taskmanager": (NS, _pod_labels("iheardai-flink-taskmanager")),
    "job-server": (NS, _pod_labels("beam-job-server")),
    "expansion": (NS, _pod_labels("beam-expansion")),
    **{f"submit-{p}": (NS, _pod_labels(f"submit-{p}")) for p in ("kpi", "frontend", "billing", "archive", "leads")},
    "migrate": (NS, _pod_labels("sql-migrate")),
    "status": (NS, _pod_labels("iheardai-status")),
    "collector": (NS, _pod_labels("iheardai-collector")),
    "extractor": (NS, _pod_labels("marketo-extractor")),
    "flinkctl": (NS, {"app.kubernetes.io/component": "flinkctl", "run": "flinkctl-1"}),
    "operator": ("flink-operator", {"app.kubernetes.io/name": "flink-kubernetes-operator"}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "alertmanager": ("monitoring", {"app.kubernetes.io/name": "alertmanager"}),
    "other-pod": (NS, {"app": "something-else"}),
    "other-namespace": ("default", {"app.kubernetes.io/component": "submitter"}),  # same labels, wrong namespace
}
EXTERNAL = "outside"  # managed services, Spaces, Marketo, the Kubernetes API


def _cm() -> Dict[str, str]:
    return m.named("ConfigMap", "iheardai-settings")["data"]


def _port(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def needed() -> Set[Tuple[str, str, int]]:
    """(source, destination, port) of every connection the components make."""
    cm = _cm()
    fd, = m.by_kind("FlinkDeployment")
    conf = m.flink_conf(fd)
    rest = int(cm["FLINK_REST_URL"].rsplit(":", 1)[1])
    js = m.pod("beam-job-server").container("job-server")
    assert f"--flink-master=iheardai-flink-rest:{rest}" in js["command"]
    kafka = _port(cm["KAFKA_BOOTSTRAP_SERVERS"])
    pg, redis, https = int(cm["POSTGRES_PORT"]), int(cm["REDIS_PORT"]), 443
    jm_rpc, blob = int(conf["jobmanager.rpc.port"]), int(conf["blob.server.port"])
    tm_rpc, tm_data = int(conf["taskmanager.rpc.port"]), int(conf["taskmanager.data.port"])
    metrics = int(conf["metrics.internal.query-service.port"])
    prom = int(conf["metrics.reporter.prom.port"])
    assert {e.get("targetPort") for e in m.named("PodMonitor", "iheardai-flink")["spec"]["podMetricsEndpoints"]} == {prom}
    status = next(p["containerPort"] for p in m.pod("iheardai-status").container("status")["ports"])
    collector = next(p["containerPort"] for p in m.pod("iheardai-collector").container("collector")["ports"])
    out = {
        ("taskmanager", "jobmanager", jm_rpc), ("taskmanager", "jobmanager", blob),
        ("jobmanager", "taskmanager", tm_rpc), ("jobmanager", "taskmanager", metrics),
        ("taskmanager", "taskmanager", tm_data),
        ("jobmanager", EXTERNAL, https),  # Kubernetes API (native mode, HA), Spaces
        ("taskmanager", EXTERNAL, https), ("taskmanager", EXTERNAL, kafka), ("taskmanager", EXTERNAL, pg),
        ("taskmanager", EXTERNAL, redis),
        ("job-server", "jobmanager", rest), ("job-server", EXTERNAL, kafka),
        ("flinkctl", "jobmanager", rest), ("operator", "jobmanager", rest),
        ("migrate", EXTERNAL, pg),
        ("extractor", EXTERNAL, https), ("extractor", EXTERNAL, kafka), ("extractor", EXTERNAL, pg),
        ("status", "jobmanager", rest), ("status", EXTERNAL, kafka), ("status", EXTERNAL, pg),
        ("status", EXTERNAL, redis), ("status", EXTERNAL, https),
        ("prometheus", "jobmanager", prom), ("prometheus", "taskmanager", prom),
        ("prometheus", "status", status), ("alertmanager", "status", status),
        ("prometheus", "collector", collector), ("collector", EXTERNAL, kafka),
    }
    for p in ("kpi", "frontend", "billing", "archive", "leads"):
        s = f"submit-{p}"
        out |= {(s, "job-server", _port(cm["BEAM_JOB_ENDPOINT"])), (s, "job-server", _port(cm["BEAM_ARTIFACT_ENDPOINT"])),
                (s, "expansion", _port(cm["BEAM_EXPANSION_SERVICE"])), (s, "jobmanager", rest), (s, EXTERNAL, kafka)}
    return out


# --- NetworkPolicy semantics -------------------------------------------------------------------------------

def _selects(selector: Optional[dict], labels: Dict[str, str]) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"] or e["operator"] == "NotIn" and value in e["values"] \
                or e["operator"] == "Exists" and not present or e["operator"] == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, ns: Optional[str], labels: Dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return ns is None  # our policies name no CIDR; an ipBlock stands for "outside the cluster" here
    if ns is None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns}):
            return False
    elif ns != policy_ns:
        return False
    return _selects(peer.get("podSelector"), labels)


def _port_matches(rule: dict, port: int, proto: str = "TCP") -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == proto and (p.get("port") is None or p["port"] == port
                                                      or p.get("endPort", -1) >= port >= p.get("port", 0))
               for p in ports)


def _direction(ns: Optional[str], labels: Dict[str, str], kind: str, peer_ns: Optional[str],
               peer_labels: Dict[str, str], port: int, proto: str = "TCP") -> bool:
    """Does the pod (ns, labels) admit this connection in direction `kind` (Ingress: from peer; Egress: to peer)?"""
    if ns is None:
        return True  # outside the cluster: not ours to police
    policies = [p for p in POLICIES if (p["metadata"].get("namespace") or NS) == ns
                and kind in p["spec"].get("policyTypes", ["Ingress"])
                and _selects(p["spec"]["podSelector"], labels)]
    if not policies:
        return True
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for p in policies:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(x, NS, peer_ns, peer_labels) for x in peers)) and \
                    _port_matches(rule, port, proto):
                return True
    return False


def allowed(src: str, dst: str, port: int, proto: str = "TCP") -> bool:
    s_ns, s_labels = ENDPOINTS[src] if src != EXTERNAL else (None, {})
    d_ns, d_labels = ENDPOINTS[dst] if dst != EXTERNAL else (None, {})
    return _direction(s_ns, s_labels, "Egress", d_ns, d_labels, port, proto) and \
        _direction(d_ns, d_labels, "Ingress", s_ns, s_labels, port, proto)


@functools.lru_cache(maxsize=None)
def _ports_of_interest() -> Tuple[int, ...]:
    ports = {p for _, _, p in needed()} | {50000, 8096, 22, 5432, 6379, 9092, 9249, 9250}
    for pod in m.pods():
        for c in pod.containers():
            ports |= {p["containerPort"] for p in c.get("ports", [])}
    return tuple(sorted(ports))


# --- tests -------------------------------------------------------------------------------------------------

def test_every_pod_of_the_manifests_is_an_endpoint_here():
    """A new component must come with its policy and its needed paths in this file."""
    known = {labels_key(l) for ns, l in ENDPOINTS.values() if ns == NS}
    missing = [p.name for p in m.pods() if labels_key(p.labels) not in known]
    assert not missing, f"pods with no endpoint in this test (and likely no NetworkPolicy): {missing}"


def labels_key(labels: Dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


def test_every_needed_connection_is_allowed():
    blocked = sorted(c for c in needed() if not allowed(*c))
    assert not blocked, f"needed but blocked: {blocked}"


def _ours(name: str) -> bool:
    return name != EXTERNAL and ENDPOINTS[name][0] == NS


# The Flink pods' HTTPS egress names no peer (Cilium's kube-apiserver identity matches no ipBlock): it also reaches
# :443 of pods in other namespaces. Known and accepted (network-policies.yaml says so).
ACCEPTED = {(s, d, 443) for s in ("jobmanager", "taskmanager")
            for d in ("operator", "prometheus", "alertmanager", "other-namespace")}


def test_nothing_else_is_allowed():
    """Between every pair of endpoints (ours, the operator, a stranger pod, another namespace, the outside) on
    every port any of them listens on or dials: open only if needed. (Traffic between two endpoints that are both
    outside our namespace is not ours to police.)"""
    need = needed() | ACCEPTED
    extra = []
    for src, dst in itertools.product(list(ENDPOINTS) + [EXTERNAL], list(ENDPOINTS) + [EXTERNAL]):
        if not (_ours(src) or _ours(dst)):
            continue
        for port in _ports_of_interest():
            if allowed(src, dst, port) and (src, dst, port) not in need:
                extra.append((src, dst, port))
    assert not extra, f"allowed but not needed: {extra}"


def test_dns_is_open_for_every_pod_and_only_dns_is_open_to_anywhere():
    for name, (ns, _) in ENDPOINTS.items():
        if ns == NS:
            assert allowed(name, EXTERNAL, 53, "UDP") and allowed(name, EXTERNAL, 53, "TCP"), name


def test_the_sensitive_ports_are_closed_to_strangers():
    for src in ("other-pod", "other-namespace", "taskmanager", "extractor", "migrate"):
        assert not allowed(src, "job-server", 8099), src  # runs any pipeline it is given
        assert not allowed(src, "expansion", 8097), src
    for src in ("other-pod", "other-namespace", "extractor", "migrate", "taskmanager", "expansion"):
        assert not allowed(src, "jobmanager", 8081), src  # uploads and runs jars
    for src in ENDPOINTS:
        assert not allowed(src, "taskmanager", 50000), src  # the worker pool holds every secret


def test_the_evaluator_sees_a_policy_go_missing(monkeypatch):
    """Dropping the TaskManager's policy must show up as a blocked needed path (default deny remains)."""
    kept = [p for p in POLICIES if p["metadata"]["name"] != "flink-taskmanager"]
    monkeypatch.setattr(sys.modules[__name__], "POLICIES", kept)
    assert not allowed("taskmanager", EXTERNAL, 25073)
    assert not allowed("jobmanager", "taskmanager", 6122)
    widened = [dict(p, spec={**p["spec"], "ingress": [{}]}) if p["metadata"]["name"] == "beam-job-server" else p
               for p in POLICIES if p["metadata"]["name"] not in ("default-deny", "allow-dns")]
    monkeypatch.setattr(sys.modules[__name__], "POLICIES", widened)
    assert allowed("other-pod", "job-server", 8099)
