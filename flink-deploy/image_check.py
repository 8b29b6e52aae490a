"""Does the pipelines image hold what its containers need? Build each pipeline's graph the way its submit Job
would, from a directory that holds exactly what ./Dockerfile copies, with the Job's environment, arguments and
mounted files; check the worker pool's environment the way the workers' DoFns read it.

    python flink-deploy/image_check.py                  # all five pipelines + the worker pool + every command
    python flink-deploy/image_check.py kpi leads        # some pipelines

Needs the Kafka expansion service (the graph's Kafka read and DLQ write are expanded by it): the local stack's
at localhost:8097, or $IMAGE_CHECK_EXPANSION_SERVICE. That address is the one deviation from the Job's settings
(in the cluster it is beam-expansion:8097). Nothing is submitted and no broker, database or Flink is contacted.

How the image is emulated: the tree from `manifests.build_image_tree` (COPY instructions, .dockerignore applied)
is the only place the project's packages can be imported from: the child interpreter starts without `site`
(`python -S`), adds this venv's site-packages for the third-party pins, and drops the editable install's
finder, so a package the Dockerfile forgot cannot be imported from the checkout. $DEVSTACK_HOME points at an
empty directory (the local stack's settings file must not fill in what the manifests do not give), and every
file a container mounts is written at its mount path under a scratch root with a placeholder value.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent


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
PIPELINES = ("kpi", "frontend", "billing", "archive", "leads")
OUR_PACKAGES = ("beam_pipelines", "transforms", "io_connectors", "events", "sql", "workloads", "observability",
                "iheardai_analytics", "devstack", "benchmarks")  # ("tests" is also the name of a package some wheel installs)

# Placeholder file contents by secret key (never real values; long enough to pass the code's own checks).
PLACEHOLDER = {"hmac-key": "0123456789abcdef" * 4,
               "field-keys": '{"active": "k0", "keys": {"k0": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}',
               "ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n"
               "-----END CERTIFICATE-----\n", "username": "placeholder-user"}

_CHILD = r"""
import importlib, importlib.util, json, os, sys, site
img = os.environ["IMAGE_CHECK_ROOT"]
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
sys.path.insert(0, img)
for d in os.environ["IMAGE_CHECK_SITE"].split(os.pathsep):
    site.addsitedir(d)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")
                    and "__editable__" not in type(f).__module__]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in (getattr(h, "__module__", "") or "")]
sys.path_importer_cache.clear()
ours = json.loads(os.environ["IMAGE_CHECK_PACKAGES"])
leaks = [t for t in ours if (s := importlib.util.find_spec(t)) is not None
         and not all(str(p).startswith(img) for p in (s.submodule_search_locations or [s.origin]))]
if leaks:
    raise SystemExit(f"image check broken: {leaks} importable from outside the image tree")
mode, arg = sys.argv[1], sys.argv[2:]
out = {}
if mode == "build":
    module, argv = arg[0], arg[1:]
    spec = importlib.util.spec_from_file_location("flinkctl", os.path.join(img, "flink-deploy", "flinkctl.py"))
    flinkctl = importlib.util.module_from_spec(spec); spec.loader.exec_module(flinkctl)
    argv = flinkctl.submit_argv(module, argv, dict(os.environ))
    flinkctl.register_restore_options()
    import apache_beam as beam
    from beam_pipelines.options import finalize_options
    mod = importlib.import_module(module)
    opts = finalize_options(argv, module.rsplit(".", 1)[1], mod.__doc__)
    p = beam.Pipeline(options=opts)
    mod.build(p, opts)
    proto = p.to_runner_api()
    import shutil
    shutil.rmtree(p.local_tempdir, ignore_errors=True)  # Pipeline.run() would; the resolved jars are ~200 MB each
    out["transforms"] = len(proto.components.transforms)
    out["runner"] = type(p.runner).__name__
    out["argv"] = argv
elif mode == "worker-env":
    from transforms.pii import load_hmac_key
    from io_connectors.settings import KafkaSettings, PostgresSettings, RedisSettings, SpacesSettings
    out["pii_key"] = load_hmac_key() is not None
    # The shared pool names no user: each sink resolves its pipeline's principal (Settings.deferred(principal)).
    # arg[0]: {system: [pipeline principals]} (flink-deploy/identities.py); a field is set if it is for all of them.
    classes = {"postgres": PostgresSettings, "redis": RedisSettings, "kafka": KafkaSettings}
    for system, names in json.loads(arg[0]).items():
        resolved = [vars(classes[system].from_env(n)) for n in names]
        out[classes[system].__name__] = {k: all(bool(r[k]) for r in resolved) for k in resolved[0]}
        out.setdefault("principals", {})[system] = {
            n: {k: bool(v) for k, v in r.items() if k in ("user", "username", "sasl_username", "password",
                                                              "sasl_password")} for n, r in zip(names, resolved)}
    out["SpacesSettings"] = {k: bool(v) for k, v in vars(SpacesSettings.from_env()).items()}
elif mode == "commands":
    for kind, target in json.loads(arg[0]):
        if kind == "module":  # imported, not only found: its own imports must resolve in the image too
            try:
                importlib.import_module(target)
                ok = True
            except Exception as e:  # noqa: BLE001 - reported per command
                ok = f"{type(e).__name__}: {e}"
        else:
            ok = os.path.isfile(os.path.join(img, target))
        out[f"{kind}:{target}"] = ok
out["modules_outside_image"] = sorted(
    n for n, mo in list(sys.modules.items())
    if n.split(".")[0] in ours and getattr(mo, "__file__", None) and not mo.__file__.startswith(img))
# VmHWM: this process's own peak. getrusage(RUSAGE_SELF).ru_maxrss is not: Linux carries the peak of the mm that
# exec replaced into it, which is the forking parent's RSS (pytest's, 408 MiB late in a full run).
out["max_rss_mib"] = round(int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))) / 1024)
print("IMAGE_CHECK " + json.dumps(out))
"""


@dataclass
class Result:
    ok: bool
    output: dict
    log: str
    max_rss_mib: float
    seconds: float


class ImageSandbox:
    """The image tree and a scratch root for mounted files; one per check run."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.image = m.build_image_tree(workdir / "image")
        self.app = self.image / m.PIPELINES_IMAGE_ROOT.lstrip("/")
        self.mounts = workdir / "mounts"
        self.devstack_home = workdir / "empty-devstack-home"
        self.devstack_home.mkdir(parents=True, exist_ok=True)
        # The children's temporary files (Beam resolves each Kafka transform's ~200 MB jar into the pipeline's
        # temp dir) stay inside the sandbox and go with it.
        self.tmp = workdir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _remap(self, value: str, mounted: Dict[str, object]) -> str:
        """Point absolute paths under a mount (and under the image root) at the sandbox."""
        # the mounted files and every directory above them, down to 4 levels (/var/run/secrets/iheardai): a
        # variable may name a directory of mounted files (the worker pool's IHEARDAI_SECRETS_DIR)
        parents = {"/".join(k.rstrip("/").split("/")[:i]) for k in mounted
                   for i in range(5, len(k.rstrip("/").split("/")))}
        roots = sorted({k.rstrip("/") for k in mounted} | {"/".join(k.rstrip("/").split("/")[:-1]) for k in mounted}
                       | parents, key=len, reverse=True)

        def sub(mt):
            path = mt.group(1)
            if path.startswith(m.PIPELINES_IMAGE_ROOT):
                return str(self.image) + path
            for r in roots:
                if r and (path == r or path.startswith(r + "/")):
                    return str(self.mounts) + path
            return path

        return m.PATH_RE.sub(sub, value)

    def environment(self, p, c, overrides: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The container's environment with its mounted files written under the scratch root."""
        mounted = m.mounted_files(p, c)
        for path, ref in mounted.items():
            target = self.mounts / path.lstrip("/")
            if ref is None:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(PLACEHOLDER.get(ref[1] or "", f"placeholder-{ref[0]}-{ref[1]}"))
        env = {}
        for k, v in m.container_env(c).items():
            env[k] = ("placeholder-secret-value" if v.startswith("<from Secret") else self._remap(v, mounted))
        env.update(overrides or {})
        env.update({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
                    "TMPDIR": str(self.tmp),
                    "DEVSTACK_HOME": str(self.devstack_home), "PYTHONDONTWRITEBYTECODE": "1",
                    "IMAGE_CHECK_ROOT": str(self.app), "IMAGE_CHECK_SITE": os.pathsep.join(_site_packages()),
                    "IMAGE_CHECK_PACKAGES": json.dumps(OUR_PACKAGES)})
        return env, mounted

    def run(self, env: Dict[str, str], *args: str, timeout: float = 300) -> Result:
        import time

        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-S", "-c", _CHILD, *args], cwd=self.app, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        line = next((l for l in out.splitlines()[::-1] if l.startswith("IMAGE_CHECK ")), None)
        output = json.loads(line[len("IMAGE_CHECK "):]) if line else {}
        return Result(proc.returncode == 0 and line is not None, output, out[-6000:],
                      float(output.get("max_rss_mib", 0)), time.monotonic() - t0)


def _site_packages() -> List[str]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(p for p in paths if os.path.isdir(p))


def submit_jobs() -> Dict[str, tuple]:
    """{pipeline: (Pod, container)} of the five submit Jobs."""
    out = {}
    for p in m.pods():
        c = p.spec["containers"][0]
        if c.get("command", [])[:3] == ["python", "flink-deploy/flinkctl.py", "submit"]:
            out[c["command"][3].rsplit(".", 1)[1]] = (p, c)
    return out


def build_graph(box: ImageSandbox, pipeline: str, expansion_service: str) -> Result:
    p, c = submit_jobs()[pipeline]
    overrides = {"BEAM_EXPANSION_SERVICE": expansion_service}
    env, mounted = box.environment(p, c, overrides)
    argv = [box._remap(a, mounted) for a in m.container_argv(c, overrides)]
    assert argv[:3] == ["python", "flink-deploy/flinkctl.py", "submit"], argv
    return box.run(env, "build", argv[3], *argv[4:])


def worker_environment(box: ImageSandbox) -> Result:
    p = m.pod("iheardai-flink-taskmanager")
    env, _ = box.environment(p, p.container("beam-worker-pool"))
    ids = _sibling("identities")
    return box.run(env, "worker-env", json.dumps(ids.worker_pool_principals()), timeout=120)


def pipelines_image_commands() -> List[tuple]:
    """(kind, target) of what each pipelines-image container runs: `python -m X` modules, `python path` files."""
    found = set()
    for p, c in m.iter_containers():
        if not m.is_pipelines_image(p.image_of.get(c["name"], "")):
            continue
        for argv in [m.container_argv(c)] + [((c.get(pr) or {}).get("exec") or {}).get("command", [])
                                              for pr in ("startupProbe", "readinessProbe", "livenessProbe")]:
            if len(argv) >= 2 and argv[0] == "python":
                if argv[1] == "-m":
                    found.add(("module", argv[2]))
                elif not argv[1].startswith("-"):
                    rel = argv[1][len(m.PIPELINES_IMAGE_ROOT) + 1:] if argv[1].startswith(m.PIPELINES_IMAGE_ROOT) \
                        else argv[1]
                    found.add(("file", rel))
    return sorted(found)


def check_commands(box: ImageSandbox) -> Result:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(box.workdir), "DEVSTACK_HOME": str(box.devstack_home),
           "TMPDIR": str(box.tmp),
           "IMAGE_CHECK_ROOT": str(box.app), "IMAGE_CHECK_SITE": os.pathsep.join(_site_packages()),
           "IMAGE_CHECK_PACKAGES": json.dumps(OUR_PACKAGES)}
    return box.run(env, "commands", json.dumps(pipelines_image_commands()), timeout=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="*", default=list(PIPELINES))
    parser.add_argument("--expansion-service", default=os.environ.get("IMAGE_CHECK_EXPANSION_SERVICE",
                                                                      "localhost:8097"))
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        box = ImageSandbox(Path(tmp))
        for name, res in [("commands", check_commands(box)), ("worker-pool env", worker_environment(box))] + [
                (f"graph {p}", build_graph(box, p, args.expansion_service)) for p in args.pipelines]:
            print(f"{'ok  ' if res.ok else 'FAIL'} {name}: {json.dumps({k: v for k, v in res.output.items() if k != 'argv'})}"
                  f" ({res.seconds:.1f}s)")
            if not res.ok:
                failed += 1
                print(res.log)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
