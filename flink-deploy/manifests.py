"""The production manifests as data: every pod that will run (the Flink pods the operator and the JobManager
create included), its containers with their effective environment, mounted files and resources, and the image
trees the Dockerfiles build. Used by tests/unit/test_deploy*.py, tests/integration/test_deploy_image.py and
flink-deploy/sizing.py; nothing here talks to a cluster.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = Path(__file__).resolve().parent
NAMESPACE = "iheardai-streaming"
PIPELINES_IMAGE_ROOT = "/opt/iheardai"  # WORKDIR of ./Dockerfile


def documents(path: Path) -> List[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and "kind" in d]


def manifest_files() -> List[Path]:
    """Every Kubernetes YAML under flink-deploy/ (the helm values file is not a manifest)."""
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "operator-values.yaml")


def objects() -> List[Tuple[Path, dict]]:
    return [(p, d) for p in manifest_files() for d in documents(p) if d["kind"] != "Kustomization"]


def by_kind(kind: str) -> List[dict]:
    return [d for _, d in objects() if d["kind"] == kind]


def named(kind: str, name: str) -> dict:
    found = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    if len(found) != 1:
        raise LookupError(f"{kind}/{name}: {len(found)} found")
    return found[0]


def secrets_defined() -> Dict[str, set]:
    """{secret name: keys} from the Secret templates (the Secrets a deployment must create)."""
    return {d["metadata"]["name"]: set((d.get("stringData") or {}) | (d.get("data") or {}))
            for d in by_kind("Secret")}


# --- quantities -----------------------------------------------------------------------------------------

_K8S_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "k": 10 ** 3, "M": 10 ** 6,
               "G": 10 ** 9, "T": 10 ** 12, "m": 10 ** -3, "": 1}


def k8s_quantity(q) -> float:
    """Kubernetes quantity -> number (bytes for memory, cores for CPU): "1536Mi", "500m", 2, "1.5"."""
    if isinstance(q, (int, float)):
        return float(q)
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m or m.group(2) not in _K8S_SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {q!r}")
    return float(m.group(1)) * _K8S_SUFFIX[m.group(2)]


def flink_memory(s: str) -> int:
    """Flink MemorySize -> bytes ("2048m" is 2048 MiB in Flink, unlike Kubernetes' milli-bytes)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(s))
    if not m:
        raise ValueError(f"not a Flink memory size: {s!r}")
    unit = m.group(2).lower()
    mult = {"": 1, "b": 1, "bytes": 1, "k": 2 ** 10, "kb": 2 ** 10, "kibibytes": 2 ** 10, "m": 2 ** 20, "mb": 2 ** 20,
            "mebibytes": 2 ** 20, "g": 2 ** 30, "gb": 2 ** 30, "gibibytes": 2 ** 30, "t": 2 ** 40, "tb": 2 ** 40}[unit]
    return int(float(m.group(1)) * mult)


# --- pods -----------------------------------------------------------------------------------------------

@dataclass
class Pod:
    """A pod that runs in production: where it comes from, its spec, how many of it run, and when."""

    name: str
    source: str  # the manifest object it comes from, e.g. "Deployment/beam-job-server"
    spec: dict
    labels: Dict[str, str]
    replicas: int = 1
    phase: str = "steady"  # steady | deploy (one-shot Jobs) | periodic (CronJob runs)
    image_of: Dict[str, str] = field(default_factory=dict)  # container name -> image

    def containers(self, init: bool = True) -> List[dict]:
        cs = list(self.spec.get("containers", []))
        return (list(self.spec.get("initContainers", [])) + cs) if init else cs

    def container(self, name: str) -> dict:
        found = [c for c in self.containers() if c["name"] == name]
        if len(found) != 1:
            raise LookupError(f"{self.name}: container {name}: {len(found)} found")
        return found[0]


def _template_pods(doc: dict) -> List[Pod]:
    kind, meta = doc["kind"], doc["metadata"]
    source = f"{kind}/{meta['name']}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        t = doc["spec"]["template"]
        return [Pod(meta["name"], source, t["spec"], dict(t.get("metadata", {}).get("labels", {})),
                    doc["spec"].get("replicas", 1), "steady")]
    if kind == "Job":
        t = doc["spec"]["template"]
        return [Pod(meta["name"], source, t["spec"], dict(t.get("metadata", {}).get("labels", {})), 1, "deploy")]
    if kind == "CronJob":
        t = doc["spec"]["jobTemplate"]["spec"]["template"]
        return [Pod(meta["name"], source, t["spec"], dict(t.get("metadata", {}).get("labels", {})), 1, "periodic")]
    return []


def flink_conf(fd: dict) -> Dict[str, str]:
    return dict(fd["spec"].get("flinkConfiguration") or {})


def submit_containers() -> List[dict]:
    """The container of each Job that submits a pipeline to the session cluster."""
    out = []
    for job in by_kind("Job"):
        c = job["spec"]["template"]["spec"]["containers"][0]
        if c.get("command", [])[:3] == ["python", "flink-deploy/flinkctl.py", "submit"]:
            out.append(c)
    return out


def slots_needed() -> int:
    """Task slots the five submitted jobs take (each job's --parallelism; slot sharing puts a whole pipeline in one
    slot per parallel instance)."""
    return sum(next((int(a.split("=", 1)[1]) for a in c.get("args", []) if a.startswith("--parallelism=")), 2)
               for c in submit_containers())


def _flink_pods(fd: dict) -> List[Pod]:
    """The JobManager and TaskManager pods of a FlinkDeployment as the operator and Flink build them: the pod
    template, with `flink-main-container` given the deployment image and resource (requests = cpu/memory,
    limits = cpu x kubernetes.<jm|tm>.cpu.limit-factor, memory x memory.limit-factor, default 1.0), labels
    app=<name>, component=jobmanager|taskmanager, type=flink-native-kubernetes."""
    import copy
    import math

    spec, name = fd["spec"], fd["metadata"]["name"]
    conf = flink_conf(fd)
    pods = []
    for role, comp in (("jobManager", "jobmanager"), ("taskManager", "taskmanager")):
        part = spec[role]
        base = copy.deepcopy((spec.get("podTemplate") or {}).get("spec") or {})
        tpl = copy.deepcopy((part.get("podTemplate") or {}).get("spec") or {})
        pod_spec = {**base, **tpl}
        containers = pod_spec.setdefault("containers", [])
        main = next((c for c in containers if c["name"] == "flink-main-container"), None)
        if main is None:
            main = {"name": "flink-main-container"}
            containers.insert(0, main)
        res = part["resource"]
        mem = flink_memory(res["memory"])
        key = "jobmanager" if comp == "jobmanager" else "taskmanager"
        cpu_factor = float(conf.get(f"kubernetes.{key}.cpu.limit-factor", "1.0"))
        mem_factor = float(conf.get(f"kubernetes.{key}.memory.limit-factor", "1.0"))
        main["image"] = spec["image"]
        main["resources"] = {"requests": {"cpu": res["cpu"], "memory": f"{mem // 2 ** 20}Mi"},
                             "limits": {"cpu": res["cpu"] * cpu_factor,
                                        "memory": f"{int(mem * mem_factor) // 2 ** 20}Mi"}}
        main.setdefault("env", [])
        pod_spec.setdefault("serviceAccountName", spec.get("serviceAccount"))
        labels = {**((part.get("podTemplate") or {}).get("metadata", {}).get("labels") or {}),
                  "app": name, "component": comp, "type": "flink-native-kubernetes"}
        if comp == "jobmanager":
            replicas = part.get("replicas", 1)
        else:
            slots = int(conf.get("taskmanager.numberOfTaskSlots", "1"))
            replicas = part.get("replicas") or math.ceil(slots_needed() / slots)
        images = {c["name"]: c.get("image", spec["image"]) for c in pod_spec.get("initContainers", []) + containers}
        pods.append(Pod(f"{name}-{comp}", f"FlinkDeployment/{name}", pod_spec, labels, replicas, "steady", images))
    return pods


def pods() -> List[Pod]:
    out: List[Pod] = []
    for _, d in objects():
        if d["kind"] == "FlinkDeployment":
            out.extend(_flink_pods(d))
        else:
            for p in _template_pods(d):
                p.image_of = {c["name"]: c.get("image", "") for c in p.containers()}
                out.append(p)
    return out


def pod(name: str) -> Pod:
    found = [p for p in pods() if p.name == name]
    if len(found) != 1:
        raise LookupError(f"pod {name}: {len(found)} found")
    return found[0]


# --- what a container sees --------------------------------------------------------------------------------

SECRET = "<from Secret {name}/{key}>"


def container_env(c: dict) -> Dict[str, str]:
    """The container's environment as Kubernetes assembles it: envFrom ConfigMaps first, then `env` (which wins);
    secretKeyRef values are shown as SECRET markers."""
    env: Dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(named("ConfigMap", src["configMapRef"]["name"]).get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(str(e["value"]), env)
        elif "secretKeyRef" in (e.get("valueFrom") or {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRET.format(**ref)
        else:
            env[e["name"]] = "<fieldRef>"
    return env


def _expand(s: str, env: Dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)


def container_argv(c: dict, overrides: Optional[Dict[str, str]] = None) -> List[str]:
    env = {**container_env(c), **(overrides or {})}
    return [_expand(str(a), env) for a in list(c.get("command", [])) + list(c.get("args", []))]


def volume_secret_refs(volume: dict) -> List[Tuple[str, Optional[str], str]]:
    """(secret name, key or None for all keys, path inside the volume) of a secret or projected volume."""
    out = []
    sources = [volume] if "secret" in volume else [s for s in (volume.get("projected") or {}).get("sources", [])]
    for s in sources:
        sec = s.get("secret")
        if not sec:
            continue
        name = sec.get("secretName") or sec.get("name")
        items = sec.get("items")
        if items:
            out.extend((name, i["key"], i["path"]) for i in items)
        else:
            out.append((name, None, ""))
    return out


def mounted_files(p: Pod, c: dict) -> Dict[str, Optional[Tuple[str, Optional[str]]]]:
    """{absolute path: (secret, key)} of every file a container's mounts hold; directories of emptyDir mounts map
    to None (anything below them may exist at run time)."""
    volumes = {v["name"]: v for v in p.spec.get("volumes", [])}
    out: Dict[str, Optional[Tuple[str, Optional[str]]]] = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"])
        if v is None:
            raise LookupError(f"{p.name}/{c['name']}: mounts undeclared volume {m['name']}")
        base = m["mountPath"].rstrip("/")
        sub = m.get("subPath")
        if "emptyDir" in v:
            out[base + "/"] = None
            continue
        for secret, key, path in volume_secret_refs(v):
            if sub:
                if path == sub:
                    out[base] = (secret, key)
            elif path:
                out[f"{base}/{path}"] = (secret, key)
            else:
                for k in sorted(secrets_defined().get(secret, ())):
                    out[f"{base}/{k}"] = (secret, k)
    return out


PATH_RE = re.compile(r"(?<![\w$.:/-])(/(?:[\w.-]+/)*[\w.-]+/?)")


def paths_passed(c: dict) -> List[Tuple[str, str]]:
    """(where, absolute path) of every file path given to the container's process: env values (also inside
    values like JAVA_TOOL_OPTIONS), command and args (also `-Dprop=/path`), probe commands."""
    found = []
    for k, v in container_env(c).items():
        for m in PATH_RE.finditer(v):
            found.append((f"env {k}", m.group(1)))
    for a in container_argv(c):
        for m in PATH_RE.finditer(a):
            found.append(("argv", m.group(1)))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        for a in ((c.get(probe) or {}).get("exec") or {}).get("command", []):
            for m in PATH_RE.finditer(str(a)):
                found.append((probe, m.group(1)))
    return [(w, p) for w, p in found if not p.startswith(("/dev/", "/proc/"))]


# --- images -----------------------------------------------------------------------------------------------

def dockerignore() -> List[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


def _pattern_re(pat: str) -> "re.Pattern":
    """A .dockerignore pattern as a regex over slash-separated paths (`**` spans directories)."""
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(rel: str, patterns: List[str]) -> bool:
    """Docker's rule: a path is excluded when it, or a directory above it, matches a pattern (no `!` patterns
    are used in our .dockerignore; one there fails loudly)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        if pat.startswith("!"):
            raise ValueError(".dockerignore exceptions (!) are not modelled here")
        rx = _pattern_re(pat.strip("/"))
        if any(rx.match(pr) for pr in prefixes):
            return True
    return False


def _dockerfile_instructions(dockerfile: Path) -> List[Tuple[str, str]]:
    """(INSTRUCTION, rest of the line) of each instruction, continuation lines joined, comments dropped."""
    out = []
    for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
        parts = line.strip().split(None, 1)
        if parts and not parts[0].startswith("#"):
            out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return out


def _substitute(s: str, values: Dict[str, str]) -> str:
    """Docker's ${VAR} and $VAR substitution (unknown names stay as they are)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), s)


def _final_stage(dockerfile: Path) -> Tuple[Dict[str, str], List[Tuple[str, str]]]:
    """The ARG defaults (those declared before the first FROM, in force where the final stage re-declares them) and
    the instructions of the final stage (what the image holds; COPYs into earlier build stages are not in it)."""
    global_args: Dict[str, str] = {}
    stages: List[List[Tuple[str, str]]] = []
    for ins, rest in _dockerfile_instructions(dockerfile):
        if ins == "FROM":
            stages.append([])
        elif not stages and ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            global_args[k.strip()] = v.strip()
        elif stages:
            stages[-1].append((ins, rest))
    final = stages[-1] if stages else []
    args = {}
    for ins, rest in final:
        if ins == "ARG":
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip() if v else global_args.get(k.strip(), "")
    return args, final


def _copy_args(rest: str) -> Tuple[Dict[str, str], List[str]]:
    flags, args = {}, []
    for p in rest.split():
        if p.startswith("--"):
            k, _, v = p[2:].partition("=")
            flags[k] = v
        else:
            args.append(p)
    return flags, args


def _absolute(dest: str, workdir: str) -> str:
    return dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest[2:] if dest.startswith('./') else dest}"


def dockerfile_copies(dockerfile: Path = REPO / "Dockerfile") -> List[Tuple[List[str], str]]:
    """(sources, destination) of each `COPY` from the build context (not `COPY --from=`) into the final stage,
    destinations made absolute against the WORKDIR in force."""
    return [(srcs, dest) for srcs, dest, _ in _context_copies(dockerfile)]


def _context_copies(dockerfile: Path) -> List[Tuple[List[str], str, Optional[int]]]:
    """(sources, destination, --chmod mode or None) of the final stage's COPYs from the build context."""
    args, final = _final_stage(dockerfile)
    workdir, out = "/", []
    for ins, rest in final:
        if ins == "WORKDIR":
            workdir = _absolute(_substitute(rest.strip(), args), workdir)
        elif ins == "COPY":
            flags, parts = _copy_args(_substitute(rest, args))
            if "from" in flags:
                continue
            mode = int(flags["chmod"], 8) if flags.get("chmod") else None
            out.append((parts[:-1], _absolute(parts[-1], workdir), mode))
    return out


def dockerfile_stage_outputs(dockerfile: Path) -> Dict[str, Tuple[str, str]]:
    """{image path: (build stage, path there)} of every file the final stage copies out of a build stage
    (`COPY --from=<stage>`): the files the image gets from a build, not from the context."""
    args, final = _final_stage(dockerfile)
    workdir, out = "/", {}
    for ins, rest in final:
        if ins == "WORKDIR":
            workdir = _absolute(_substitute(rest.strip(), args), workdir)
        elif ins == "COPY":
            flags, parts = _copy_args(_substitute(rest, args))
            if "from" not in flags:
                continue
            srcs, dest = parts[:-1], _absolute(parts[-1], workdir)
            for src in srcs:
                target = f"{dest.rstrip('/')}/{src.rstrip('/').rsplit('/', 1)[-1]}" \
                    if dest.endswith("/") or len(srcs) > 1 else dest
                out[target] = (flags["from"], src)
    return out


def dockerfile_env(dockerfile: Path) -> Dict[str, str]:
    """The environment the final stage's ENV instructions set (ARG defaults substituted), as every container of the
    image starts with it (a container's `env` overrides it)."""
    import shlex

    args, final = _final_stage(dockerfile)
    env: Dict[str, str] = {}
    for ins, rest in final:
        if ins != "ENV":
            continue
        for item in shlex.split(rest):
            k, _, v = item.partition("=")
            env[k] = _substitute(v, {**args, **env})
    return env


def build_image_tree(root: Path, dockerfile: Path = REPO / "Dockerfile") -> Path:
    """Copy into root/ exactly what the Dockerfile's COPY instructions put in the image (the .dockerignore applied),
    at their image paths (root/opt/iheardai/...). Returns root."""
    patterns = dockerignore()
    for sources, dest, mode in _context_copies(dockerfile):
        for src in sources:
            s = REPO / src
            if not s.exists():
                raise FileNotFoundError(f"{dockerfile.name}: COPY {src}: not in the build context")
            if s.is_dir():
                target = root / dest.lstrip("/")
                for f in sorted(s.rglob("*")):
                    rel = f.relative_to(REPO).as_posix()
                    if f.is_file() and not _ignored(rel, patterns):
                        t = target / f.relative_to(s)
                        t.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, t)
                        if mode is not None:
                            t.chmod(mode)
            else:
                if _ignored(src, patterns):
                    raise FileNotFoundError(f"{dockerfile.name}: COPY {src}: excluded by .dockerignore")
                t = root / dest.lstrip("/")
                if dest.endswith("/") or len(sources) > 1:
                    t = t / s.name
                t.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, t)
                if mode is not None:
                    t.chmod(mode)
    return root


def image_files(dockerfile: Path = REPO / "Dockerfile") -> List[str]:
    """Absolute paths of every file the Dockerfile copies from the build context."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = build_image_tree(Path(tmp), dockerfile)
        return sorted("/" + f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())


FLINK_DOCKERFILE = REPO / "Dockerfile.flink"
# What the Flink image's base (flink:<version>-java17) brings that the Dockerfile does not copy: Flink's distribution
# and the JDK (JAVA_HOME of the eclipse-temurin base).
FLINK_BASE_DIRS = ("/opt/flink/", "/opt/java/openjdk/")


def image_paths(dockerfile: Path) -> List[str]:
    """Every file the Dockerfile puts in its image: copied from the build context or out of a build stage."""
    return sorted(set(image_files(dockerfile)) | set(dockerfile_stage_outputs(dockerfile)))


def image_has(path: str, paths: Iterable[str], base_dirs: Tuple[str, ...] = ()) -> bool:
    """Whether `path` is one of the image's files, a directory holding some, or below a base image directory."""
    d = path.rstrip("/") + "/"
    return path in paths or any(f.startswith(d) for f in paths) or path.startswith(base_dirs) or d in base_dirs


def image_env(image: str) -> Dict[str, str]:
    """The environment an image's containers start with (its Dockerfile's ENV)."""
    if is_flink_image(image):
        return dockerfile_env(FLINK_DOCKERFILE)
    if is_pipelines_image(image):
        return dockerfile_env(REPO / "Dockerfile")
    return {}


def effective_env(p: Pod, c: dict) -> Dict[str, str]:
    """What the container's process sees: its image's ENV, overridden by the container's own env and envFrom."""
    return {**image_env(p.image_of.get(c["name"], "")), **container_env(c)}


def is_pipelines_image(image: str) -> bool:
    return image.rsplit(":", 1)[0].endswith("/pipelines")


def is_flink_image(image: str) -> bool:
    return image.rsplit(":", 1)[0].endswith("/flink")


def iter_containers(include_init: bool = True) -> Iterable[Tuple[Pod, dict]]:
    for p in pods():
        for c in p.containers(include_init):
            yield p, c
