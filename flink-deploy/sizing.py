"""Requests, limits and the Flink memory model of every production pod, placed on four s-4vcpu-8gb nodes.

    python flink-deploy/sizing.py            # print the tables
    python flink-deploy/sizing.py --write    # put them in flink-deploy/README.md (between the sizing markers)
    python flink-deploy/sizing.py --check    # exit 1 if the README's tables are stale or a pod does not fit

Everything is computed from the manifests (flink-deploy/manifests.py) and flink-deploy/operator-values.yaml.
The node figures are assumptions until a live cluster shows its own (`kubectl describe nodes`: Allocatable, and
the kube-system pods' requests); pass --nodes/--node-cpu/--node-memory-mib/--system-cpu/--system-memory-mib to
recompute.

Placement is shown twice: first-fit decreasing (does a packing with headroom exist?) and the order in which the
pods are created with kube-scheduler's default scoring (least allocated), which is where they will land.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

DEPLOY = Path(__file__).resolve().parent
README = DEPLOY / "README.md"
BEGIN, END = "<!-- sizing:begin (python flink-deploy/sizing.py --write) -->", "<!-- sizing:end -->"
MiB = 2 ** 20


def _sibling(name: str):
    import importlib.util

    key = f"flink_deploy_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, DEPLOY / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


m = _sibling("manifests")


@dataclass(frozen=True)
class NodeModel:
    """What one node offers to our pods. DOKS s-4vcpu-8gb: 4 vCPU, 8 GB; allocatable memory is roughly 6-6.5 GiB
    (the lower end taken), CPU ~3.8 of 4; the kube-system DaemonSets (Cilium, CSI, DO agent, konnectivity) and
    the cluster's CoreDNS/Cilium operator are estimated per node."""

    name: str = "s-4vcpu-8gb"
    # Four, not three: each TaskManager pod also holds up to three Java SDK harness processes (Kafka IO's Java half
    # in a PROCESS environment); with them no TaskManager fits beside the JobManager or the job server within the
    # headroom below, whatever the harness heap (README "Sizing").
    count: int = 4
    allocatable_cpu: float = 3.8
    allocatable_mem: int = 6144 * MiB
    system_cpu: float = 0.3
    system_mem: int = 512 * MiB
    headroom: float = 0.85  # a placement must exist that requests at most this share of every node
    worst_case: float = 0.95  # wherever the default scheduler puts the pods, no node beyond this share
    cluster_headroom: float = 0.85  # the steady state requests at most this share of all nodes together

    @property
    def cpu(self) -> float:
        return self.allocatable_cpu - self.system_cpu

    @property
    def mem(self) -> int:
        return self.allocatable_mem - self.system_mem


# --- Flink's memory model (Flink 1.19: TaskExecutorProcessUtils / JobManagerProcessUtils) -------------------

def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def taskmanager_memory(process: int, conf: Dict[str, str]) -> Dict[str, int]:
    """Flink's split of `taskmanager.memory.process.size` (the operator sets it to taskManager.resource.memory)."""
    g = lambda k, d: m.flink_memory(conf.get(k, d))  # noqa: E731
    f = lambda k, d: float(conf.get(k, d))  # noqa: E731
    metaspace = g("taskmanager.memory.jvm-metaspace.size", "256m")
    overhead = _clamp(process * f("taskmanager.memory.jvm-overhead.fraction", "0.1"),
                      g("taskmanager.memory.jvm-overhead.min", "192m"), g("taskmanager.memory.jvm-overhead.max", "1g"))
    total_flink = process - metaspace - overhead
    fw_heap = g("taskmanager.memory.framework.heap.size", "128m")
    fw_off = g("taskmanager.memory.framework.off-heap.size", "128m")
    task_off = g("taskmanager.memory.task.off-heap.size", "0m")
    network = _clamp(total_flink * f("taskmanager.memory.network.fraction", "0.1"),
                     g("taskmanager.memory.network.min", "64m"), g("taskmanager.memory.network.max", "1g"))
    managed = total_flink * f("taskmanager.memory.managed.fraction", "0.4")
    task_heap = total_flink - fw_heap - fw_off - task_off - network - managed
    if task_heap <= 0:
        raise ValueError(f"TaskManager process size {process // MiB} MiB leaves no task heap")
    return {k: int(v) for k, v in dict(
        frameworkHeap=fw_heap, taskHeap=task_heap, frameworkOffHeap=fw_off, taskOffHeap=task_off,
        networkMemory=network, managedMemory=managed, jvmMetaspace=metaspace, jvmOverhead=overhead,
        totalFlinkMemory=total_flink, totalProcessMemory=process).items()}


def jobmanager_memory(process: int, conf: Dict[str, str]) -> Dict[str, int]:
    g = lambda k, d: m.flink_memory(conf.get(k, d))  # noqa: E731
    metaspace = g("jobmanager.memory.jvm-metaspace.size", "256m")
    overhead = _clamp(process * float(conf.get("jobmanager.memory.jvm-overhead.fraction", "0.1")),
                      g("jobmanager.memory.jvm-overhead.min", "192m"), g("jobmanager.memory.jvm-overhead.max", "1g"))
    total_flink = process - metaspace - overhead
    off_heap = g("jobmanager.memory.off-heap.size", "128m")
    heap = total_flink - off_heap
    if heap <= 0:
        raise ValueError(f"JobManager process size {process // MiB} MiB leaves no heap")
    return {k: int(v) for k, v in dict(heap=heap, offHeap=off_heap, jvmMetaspace=metaspace, jvmOverhead=overhead,
                                       totalFlinkMemory=total_flink, totalProcessMemory=process).items()}


# --- the Java SDK harnesses in the TaskManager container ------------------------------------------------------
# Kafka IO's Java half runs in a PROCESS environment (flink-deploy/base/beam-services.yaml): one Java SDK harness
# process per job with a task on a TaskManager, started by the TaskManager in flink-main-container. Its memory is in
# the container but outside Flink's JVM, so Flink's model can hold it only as JVM overhead (native memory that Flink
# leaves to the JVM and never hands out): the overhead must cover the JVM's own and every harness's.
HARNESS_NATIVE = 240 * MiB  # a harness's memory beyond its heap (metaspace, code cache, threads, gRPC buffers, the
#                             boot program): an estimate (~750 MiB RSS at a 512m heap), not measured under load
#                             (benchmarks/taskmanager_cycles.py); idle at 128m it was 192 MiB in all (README "Sizing")
TM_JVM_OWN_OVERHEAD = 256 * MiB  # the TaskManager JVM's own native memory (the overhead it ran with before)
HARNESS_DEFAULT_HEAP = "512m"  # devstack/java_harness/bin/java without BEAM_JAVA_HARNESS_HEAP


def java_size(s: str) -> int:
    """A JVM size (-Xmx syntax: 256m, 1g, 524288k, bytes) -> bytes."""
    mt = re.fullmatch(r"([0-9]+)([kKmMgGtT]?)", str(s).strip())
    if not mt:
        raise ValueError(f"not a JVM memory size: {s!r}")
    return int(mt.group(1)) * {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}[mt.group(2).lower()]


@dataclass(frozen=True)
class Harnesses:
    """The Java SDK harnesses one TaskManager may run at once, and what its JVM overhead holds for them."""

    heap: int  # BEAM_JAVA_HARNESS_HEAP as the TaskManager's environment has it
    per_taskmanager: int  # one per job with a task there: at most one per slot, at most one per submitted job
    overhead: int  # the TaskManager's JVM overhead (Flink's memory model)

    @property
    def rss(self) -> int:
        return self.heap + HARNESS_NATIVE

    @property
    def needed(self) -> int:
        return TM_JVM_OWN_OVERHEAD + self.per_taskmanager * self.rss


def harnesses() -> Harnesses:
    p = m.pod("iheardai-flink-taskmanager")
    env = m.effective_env(p, p.container("flink-main-container"))
    fd, = m.by_kind("FlinkDeployment")
    conf = m.flink_conf(fd)
    slots = int(conf.get("taskmanager.numberOfTaskSlots", "1"))
    tm = taskmanager_memory(m.flink_memory(fd["spec"]["taskManager"]["resource"]["memory"]), conf)
    return Harnesses(java_size(env.get("BEAM_JAVA_HARNESS_HEAP", HARNESS_DEFAULT_HEAP)),
                     min(slots, len(m.submit_containers())), tm["jvmOverhead"])


# --- pods ------------------------------------------------------------------------------------------------

@dataclass
class Demand:
    """One pod's scheduling demand (Kubernetes' rule: max(largest init container, sum of containers))."""

    pod: str
    cpu: float
    mem: int
    cpu_limit: Optional[float]  # None: some container has no CPU limit
    mem_limit: Optional[int]
    phase: str
    containers: List[Tuple[str, float, int, Optional[float], Optional[int]]] = field(default_factory=list)


def _res(c: dict) -> Tuple[float, int, Optional[float], Optional[int]]:
    r = c.get("resources") or {}
    req, lim = r.get("requests") or {}, r.get("limits") or {}
    cpu = m.k8s_quantity(req.get("cpu", lim.get("cpu", 0)))
    mem = int(m.k8s_quantity(req.get("memory", lim.get("memory", 0))))
    cpu_l = m.k8s_quantity(lim["cpu"]) if "cpu" in lim else None
    mem_l = int(m.k8s_quantity(lim["memory"])) if "memory" in lim else None
    return cpu, mem, cpu_l, mem_l


def demand(p) -> Demand:
    init = [c for c in p.spec.get("initContainers", []) if c.get("restartPolicy") != "Always"]
    sidecars = [c for c in p.spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    app = sidecars + list(p.spec.get("containers", []))
    rows = [(c["name"], *_res(c)) for c in app]
    cpu = sum(r[1] for r in rows)
    mem = sum(r[2] for r in rows)
    for c in init:
        ci, mi, _, _ = _res(c)
        cpu, mem = max(cpu, ci), max(mem, mi)
    cpu_l = None if any(r[3] is None for r in rows) else sum(r[3] for r in rows)
    mem_l = None if any(r[4] is None for r in rows) else sum(r[4] for r in rows)
    return Demand(p.name, cpu, mem, cpu_l, mem_l, p.phase, rows)


def operator_demand() -> Demand:
    vals = yaml.safe_load((DEPLOY / "operator-values.yaml").read_text())
    c = {"name": "flink-kubernetes-operator", "resources": vals["operatorPod"]["resources"]}
    cpu, mem, cpu_l, mem_l = _res(c)
    return Demand("flink-kubernetes-operator", cpu, mem, cpu_l, mem_l, "steady",
                  [("flink-kubernetes-operator", cpu, mem, cpu_l, mem_l)])


NODE_POOL_KEY = "doks.digitalocean.com/node-pool"


def own_pool(pod) -> Optional[str]:
    """The node pool a pod is pinned to (nodeSelector), if any: such pods (the analytics collector, scaled by its
    HorizontalPodAutoscaler on the `iheardai-edge` pool) do not land on the pipeline nodes sized here."""
    return (pod.spec.get("nodeSelector") or {}).get(NODE_POOL_KEY)


def all_demands() -> List[Tuple[Demand, int]]:
    """(demand, replicas) of the operator and every pod of the manifests that runs on the pipeline nodes."""
    return [(operator_demand(), 1)] + [(demand(p), p.replicas) for p in m.pods() if own_pool(p) is None]


# --- placement -------------------------------------------------------------------------------------------

@dataclass
class Node:
    name: str
    cpu: float
    mem: int
    pods: List[Demand] = field(default_factory=list)

    @property
    def used_cpu(self) -> float:
        return sum(p.cpu for p in self.pods)

    @property
    def used_mem(self) -> int:
        return sum(p.mem for p in self.pods)

    def fits(self, d: Demand, share: float = 1.0) -> bool:
        return self.used_cpu + d.cpu <= self.cpu * share + 1e-9 and self.used_mem + d.mem <= self.mem * share


def _nodes(model: NodeModel) -> List[Node]:
    return [Node(f"node-{i + 1}", model.cpu, model.mem) for i in range(model.count)]


def first_fit_decreasing(pods: List[Demand], model: NodeModel, share: float) -> Optional[List[Node]]:
    nodes = _nodes(model)
    for d in sorted(pods, key=lambda d: (d.mem, d.cpu), reverse=True):
        node = next((n for n in nodes if n.fits(d, share)), None)
        if node is None:
            return None
        node.pods.append(d)
    return nodes


def schedule_in_order(pods: List[Demand], model: NodeModel, nodes: Optional[List[Node]] = None
                      ) -> Tuple[List[Node], List[Demand]]:
    """kube-scheduler's defaults, simplified: a feasible node with the most free CPU and memory (the mean of the
    two free shares, LeastAllocated) wins. Returns (nodes, pods that found no node)."""
    nodes = nodes or _nodes(model)
    pending = []
    for d in pods:
        feasible = [n for n in nodes if n.fits(d)]
        if not feasible:
            pending.append(d)
            continue
        best = max(feasible, key=lambda n: ((n.cpu - n.used_cpu - d.cpu) / n.cpu
                                            + (n.mem - n.used_mem - d.mem) / n.mem) / 2)
        best.pods.append(d)
    return nodes, pending


def steady_pods() -> List[Demand]:
    out = []
    for d, n in all_demands():
        if d.phase == "steady":
            out.extend([d] * n)
    return out


def creation_orders(pods: List[Demand]) -> List[List[Demand]]:
    """The orders in which the steady pods can be created: the operator first (Helm, before anything else), the
    JobManager and the Beam services in any order (`kubectl apply -k`, then the operator creates the JobManager),
    the TaskManagers last (the JobManager asks for them when jobs are submitted)."""
    import itertools

    first = [d for d in pods if d.pod == "flink-kubernetes-operator"]
    tms = [d for d in pods if d.pod.endswith("-taskmanager")]
    middle = [d for d in pods if d not in first and d not in tms]
    seen, out = set(), []
    for perm in itertools.permutations(middle):
        key = tuple(d.pod for d in perm)
        if key not in seen:
            seen.add(key)
            out.append(first + list(perm) + tms)
    return out


def transient_pods() -> List[Demand]:
    """One-shot and periodic pods that run beside the steady state: the migration, one submitter at a time (the
    README applies them one by one), the Marketo extractor."""
    ds = [d for d, _ in all_demands() if d.phase in ("deploy", "periodic")]
    submitters = [d for d in ds if d.pod.startswith("submit-")]
    others = [d for d in ds if not d.pod.startswith("submit-")]
    return others + ([max(submitters, key=lambda d: (d.mem, d.cpu))] if submitters else [])


def _share(nodes: List[Node]) -> float:
    return max(max(n.used_mem / n.mem, n.used_cpu / n.cpu) for n in nodes)


@dataclass
class Report:
    model: NodeModel
    ffd: Optional[List[Node]]
    worst: List[Node]  # the creation order whose fullest node is fullest
    worst_order: List[str]
    pending: Dict[str, List[str]]  # creation order -> pods that found no node
    peak: List[Node]
    peak_pending: Dict[str, List[str]]
    all_submitters_fit: bool

    @property
    def problems(self) -> List[str]:
        out = []
        md = self.model
        for d, _ in all_demands():
            if d.cpu > md.cpu or d.mem > md.mem:
                out.append(f"{d.pod} requests {d.cpu:g} CPU / {d.mem // MiB} MiB: more than one node offers "
                           f"({md.cpu:g} CPU / {md.mem // MiB} MiB)")
            if d.phase == "steady":
                for name, _, mem, _, mem_l in d.containers:
                    if mem_l != mem:
                        out.append(f"{d.pod}/{name}: memory limit {_mi(mem_l)} != request {_mi(mem)} (a long-running "
                                   f"container must not count on memory the node did not reserve for it)")
        h = harnesses()
        if h.overhead < h.needed:
            out.append(f"the TaskManager's JVM overhead ({_mi(h.overhead)}) holds less than its own "
                       f"{_mi(TM_JVM_OWN_OVERHEAD)} + {h.per_taskmanager} Java SDK harnesses x {_mi(h.rss)} (heap "
                       f"{_mi(h.heap)} + {_mi(HARNESS_NATIVE)} native) = {_mi(h.needed)}")
        if self.ffd is None:
            out.append(f"the steady state does not pack on {md.count} nodes within {md.headroom:.0%} of each")
        for order, pods in self.pending.items():
            out.append(f"created in the order {order}, {pods} find no node")
        if self.worst and _share(self.worst) > md.worst_case:
            out.append(f"created in the order {self.worst_order}, a node is requested to {_share(self.worst):.0%} "
                       f"(more than {md.worst_case:.0%})")
        steady = steady_pods()
        for what, used, cap in (("CPU", sum(p.cpu for p in steady), md.cpu * md.count),
                                ("memory", sum(p.mem for p in steady), md.mem * md.count)):
            if used > cap * md.cluster_headroom:
                out.append(f"the steady state requests {used / cap:.0%} of the cluster's {what} "
                           f"(more than {md.cluster_headroom:.0%})")
        for order, pods in self.peak_pending.items():
            out.append(f"with the steady state created in the order {order}, {pods} find no node")
        return out


def report(model: NodeModel = NodeModel()) -> Report:
    import copy

    steady = steady_pods()
    ffd = first_fit_decreasing(steady, model, model.headroom)
    worst, worst_order, pending, peak, peak_pending = None, [], {}, None, {}
    transient = transient_pods()
    for order in creation_orders(steady):
        nodes, pend = schedule_in_order(order, model)
        names = [d.pod for d in order]
        key = " -> ".join(dict.fromkeys(names))
        if pend:
            pending[key] = [d.pod for d in pend]
            continue
        if worst is None or _share(nodes) > _share(worst):
            worst, worst_order = nodes, list(dict.fromkeys(names))
        after, pend2 = schedule_in_order(transient, model, copy.deepcopy(nodes))
        if pend2:
            peak_pending[key] = [d.pod for d in pend2]
        if peak is None or _share(after) > _share(peak):
            peak = after
    subs = [d for d, _ in all_demands() if d.pod.startswith("submit-")]
    all_fit = worst is not None and not schedule_in_order(subs, model, copy.deepcopy(worst))[1]
    return Report(model, ffd, worst or [], worst_order, pending, peak or [], peak_pending, all_fit)


# --- tables ----------------------------------------------------------------------------------------------

def _mi(b: Optional[int]) -> str:
    return "-" if b is None else f"{b / MiB:.0f}Mi"


def _cpu(c: Optional[float]) -> str:
    return "-" if c is None else f"{c:g}"


def tables(r: Report) -> str:
    md = r.model
    lines = [f"Nodes: {md.count} x {md.name}; per node {md.allocatable_cpu:g} CPU / {md.allocatable_mem // MiB} MiB "
             f"allocatable (assumed), minus kube-system {md.system_cpu:g} CPU / {md.system_mem // MiB} MiB "
             f"(estimated) = **{md.cpu:g} CPU / {md.mem // MiB} MiB for these pods**. Headroom rules (checked): "
             f"a placement within {md.headroom:.0%} of every node exists; in any creation order no node goes "
             f"beyond {md.worst_case:.0%}; the steady state requests at most {md.cluster_headroom:.0%} of the "
             f"cluster; memory limits equal requests for every long-running container.", "",
             "| pod | container | replicas | CPU request / limit | memory request / limit | when |",
             "|---|---|---|---|---|---|"]
    for d, n in all_demands():
        for name, cpu, mem, cpu_l, mem_l in d.containers:
            lines.append(f"| {d.pod} | {name} | {n} | {_cpu(cpu)} / {_cpu(cpu_l)} | {_mi(mem)} / {_mi(mem_l)} | "
                         f"{d.phase} |")
    fd, = m.by_kind("FlinkDeployment")
    conf = m.flink_conf(fd)
    tm = taskmanager_memory(m.flink_memory(fd["spec"]["taskManager"]["resource"]["memory"]), conf)
    jm = jobmanager_memory(m.flink_memory(fd["spec"]["jobManager"]["resource"]["memory"]), conf)
    lines += ["", "Flink memory model (what Flink makes of the container's memory; JVM heap = framework + task heap, "
              "direct = framework off-heap + task off-heap + network):", "",
              "| | process | JVM heap | managed (RocksDB) | network | direct max | metaspace | JVM overhead |",
              "|---|---|---|---|---|---|---|---|",
              f"| TaskManager ({conf.get('taskmanager.numberOfTaskSlots')} slots) | {_mi(tm['totalProcessMemory'])} | "
              f"{_mi(tm['frameworkHeap'] + tm['taskHeap'])} (task {_mi(tm['taskHeap'])}) | {_mi(tm['managedMemory'])} | "
              f"{_mi(tm['networkMemory'])} | {_mi(tm['frameworkOffHeap'] + tm['taskOffHeap'] + tm['networkMemory'])} | "
              f"{_mi(tm['jvmMetaspace'])} | {_mi(tm['jvmOverhead'])} |",
              f"| JobManager | {_mi(jm['totalProcessMemory'])} | {_mi(jm['heap'])} | - | - | {_mi(jm['offHeap'])} | "
              f"{_mi(jm['jvmMetaspace'])} | {_mi(jm['jvmOverhead'])} |", ""]
    h = harnesses()
    lines += [f"The TaskManager's JVM overhead holds the Java SDK harness processes it starts (Kafka IO's Java half, one "
              f"per job with a task on it): its own {_mi(TM_JVM_OWN_OVERHEAD)} + {h.per_taskmanager} harnesses x "
              f"{_mi(h.rss)} (heap `BEAM_JAVA_HARNESS_HEAP` {_mi(h.heap)} + {_mi(HARNESS_NATIVE)} native, estimated) = "
              f"{_mi(h.needed)} needed, {_mi(h.overhead)} configured.", ""]

    def node_table(title: str, nodes: List[Node]) -> List[str]:
        out = [title, "", "| node | pods | CPU requested | memory requested | memory limits |", "|---|---|---|---|---|"]
        for n in nodes:
            lim = sum((p.mem_limit or p.mem) for p in n.pods)
            out.append(f"| {n.name} | {', '.join(p.pod for p in n.pods)} | {n.used_cpu:g} of {n.cpu:g} "
                       f"({n.used_cpu / n.cpu:.0%}) | {_mi(n.used_mem)} of {_mi(n.mem)} ({n.used_mem / n.mem:.0%}) | "
                       f"{_mi(lim)} |")
        return out + [""]

    if r.ffd:
        lines += node_table(f"Steady state, a packing within {md.headroom:.0%} (first-fit decreasing):", r.ffd)
    lines += node_table("Steady state where the default scheduler (least allocated) puts it in the worst creation "
                        f"order ({' -> '.join(r.worst_order)}):", r.worst)
    lines += node_table("Deploy/upgrade peak (worst order): the steady state plus the migration, one submitter and "
                        "the Marketo extractor:", r.peak)
    tot_cpu = sum(p.cpu for p in steady_pods())
    tot_mem = sum(p.mem for p in steady_pods())
    lines += [f"Steady state in total: {tot_cpu:g} of {md.cpu * md.count:g} CPU "
              f"({tot_cpu / (md.cpu * md.count):.0%}), {_mi(tot_mem)} of {_mi(md.mem * md.count)} "
              f"({tot_mem / (md.mem * md.count):.0%}). All five submitters at once "
              + ("fit too." if r.all_submitters_fit else "do not fit beside the steady state: apply them one "
                 "after another (a Job applied early waits Pending until one finishes).")]
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> Optional[str]:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    d = NodeModel()
    parser.add_argument("--nodes", type=int, default=d.count)
    parser.add_argument("--node-cpu", type=float, default=d.allocatable_cpu)
    parser.add_argument("--node-memory-mib", type=int, default=d.allocatable_mem // MiB)
    parser.add_argument("--system-cpu", type=float, default=d.system_cpu)
    parser.add_argument("--system-memory-mib", type=int, default=d.system_mem // MiB)
    args = parser.parse_args(argv)
    model = NodeModel(count=args.nodes, allocatable_cpu=args.node_cpu, allocatable_mem=args.node_memory_mib * MiB,
                      system_cpu=args.system_cpu, system_mem=args.system_memory_mib * MiB)
    r = report(model)
    text = tables(r)
    for p in r.problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    if args.write:
        readme = README.read_text()
        if readme_block(readme) is None:
            raise SystemExit(f"{README} has no {BEGIN} ... {END} block")
        before, rest = readme.split(BEGIN, 1)
        README.write_text(before + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
    elif args.check:
        if readme_block(README.read_text()) != text:
            print(f"{README}: the sizing tables are stale: run `python flink-deploy/sizing.py --write`",
                  file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 1 if r.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
