"""Submit, stop-with-savepoint and list the Beam pipelines on the production Flink session cluster.

    python flink-deploy/flinkctl.py submit beam_pipelines.kpi --job_name=iheardai-kpi --runner=FlinkRunner ...
    python flink-deploy/flinkctl.py stop --job-name=iheardai-kpi            # stop with a savepoint, print its path
    python flink-deploy/flinkctl.py savepoint --job-name=iheardai-kpi       # savepoint, job keeps running
    python flink-deploy/flinkctl.py list

Standard library only, talks to the Flink REST API at $FLINK_REST_URL (default http://localhost:8081).

`submit` is idempotent: if a job with the same --job_name is already running it does nothing (a retried
Kubernetes Job never starts a duplicate). Otherwise it runs `python -m <module> <flags> --no_wait_until_finish`:
the pipeline's launcher returns 0 once the Flink job has run healthy (every task RUNNING, no restart) for its
health period, or cancels a job that restarts or fails and exits 1 with the root cause, so the Kubernetes Job
fails. The job keeps running on Flink after the client exits. With $SAVEPOINT_PATH set it restores from it.

Beam's Python FlinkRunner drops options no Python class declares when it submits to a job endpoint, and
Beam 2.62's Python SDK declares no savepoint options; `_run` declares them (FlinkRestoreOptions) in the
submitting process so they reach the Java runner's FlinkPipelineOptions (savepointPath, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

PIPELINES = ("kpi", "frontend", "billing", "archive", "leads")
MODULES = tuple(f"beam_pipelines.{p}" for p in PIPELINES)
ACTIVE = ("INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "RECONCILING")

# Java FlinkPipelineOptions that Beam's Python SDK does not declare (snake_case reaches Java as camelCase).
RESTORE_FLAGS = (
    ("--savepoint_path", dict(default=None, help="Restore the job from this savepoint/checkpoint path.")),
    ("--allow_non_restored_state", dict(action="store_true", default=None,
                                        help="Skip savepoint state that maps to no operator (removed steps).")),
    ("--retain_externalized_checkpoints_on_cancellation", dict(
        action="store_true", default=None, help="Keep the last checkpoint when the job is cancelled.")),
)


def declared_flags() -> set:
    """Option strings that the PipelineOptions classes loaded so far declare."""
    import argparse as _argparse

    from apache_beam.options.pipeline_options import PipelineOptions

    parser = _argparse.ArgumentParser(conflict_handler="resolve", add_help=False)
    seen, stack = set(), list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        cls._add_argparse_args(parser)
    return set(parser._option_string_actions)


def register_restore_options():
    """Declare the RESTORE_FLAGS that no PipelineOptions class declares yet, as one PipelineOptions class; None
    when every one is declared already (beam_pipelines/options.py declares them all today).

    The project's options are imported first: Beam builds one parser from every PipelineOptions subclass when it
    serializes options (each external transform's expansion does), and a flag declared by two classes fails
    there with `argparse.ArgumentError: conflicting option string`."""
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        import beam_pipelines.options  # noqa: F401 - the project's own declarations win
    except ImportError:  # flinkctl used without the project on the path
        pass
    declared = declared_flags()
    missing = tuple((flag, kwargs) for flag, kwargs in RESTORE_FLAGS if flag not in declared)
    if not missing:
        return None

    class FlinkRestoreOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            for flag, kwargs in missing:
                parser.add_argument(flag, **kwargs)

    return FlinkRestoreOptions


# --------------------------------------------------------------------------------------------------
# Flink REST


def rest_url() -> str:
    return os.environ.get("FLINK_REST_URL", "http://localhost:8081").rstrip("/")


def rest(path: str, body: Optional[dict] = None, timeout: float = 30.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(rest_url() + path, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - in-cluster Flink REST
        return json.loads(r.read().decode() or "{}")


def matching_jobs(overview: dict, job_name: str, states=ACTIVE) -> List[dict]:
    """Jobs from /jobs/overview named `job_name` whose state is in `states`, newest first."""
    jobs = [j for j in overview.get("jobs", []) if j.get("name") == job_name and j.get("state") in states]
    return sorted(jobs, key=lambda j: j.get("start-time", 0), reverse=True)


def flag_value(flags: List[str], name: str) -> Optional[str]:
    for i, a in enumerate(flags):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(flags):
            return flags[i + 1]
    return None


def submit_argv(module: str, flags: List[str], env: Dict[str, str]) -> List[str]:
    """The pipeline's argv: the given flags, a default --job_name (iheardai-<pipeline>), --artifact_endpoint from
    $BEAM_ARTIFACT_ENDPOINT and --savepoint_path from $SAVEPOINT_PATH (upgrades, rollbacks)."""
    if module not in MODULES:
        raise SystemExit(f"unknown pipeline module {module!r}; expected one of {', '.join(MODULES)}")
    out = list(flags)
    if not flag_value(out, "--job_name"):  # how stop/savepoint and the idempotent submit find the job
        out.append(f"--job_name=iheardai-{module.rsplit('.', 1)[1]}")
    if env.get("BEAM_ARTIFACT_ENDPOINT") and not flag_value(out, "--artifact_endpoint"):
        # A job server bound to 0.0.0.0 advertises 0.0.0.0 as its artifact endpoint: name it explicitly.
        out.append(f"--artifact_endpoint={env['BEAM_ARTIFACT_ENDPOINT']}")
    if env.get("SAVEPOINT_PATH") and flag_value(flags, "--savepoint_path") is None:
        out.append(f"--savepoint_path={env['SAVEPOINT_PATH']}")
        if env.get("ALLOW_NON_RESTORED_STATE", "").lower() in ("1", "true", "yes"):
            out.append("--allow_non_restored_state")
    return out


def cmd_submit(module: str, flags: List[str], timeout_s: float) -> int:
    argv = submit_argv(module, flags, dict(os.environ))
    job_name = flag_value(argv, "--job_name")
    running = matching_jobs(rest("/jobs/overview"), job_name)
    if running:
        print(f"{job_name} already {running[0]['state']} as {running[0]['jid']}: nothing to submit")
        return 0
    print(f"submitting {module} as {job_name}" + (" from a savepoint" if "--savepoint_path" in " ".join(argv) else ""),
          flush=True)
    # The pipeline's own launcher (beam_pipelines/launcher.py) submits, waits until the Flink job and all its
    # tasks have run without a restart for its health period, and exits 0; a job that restarts or fails in
    # that time is cancelled and the client exits 1 with the root cause, so the Kubernetes Job fails too.
    if "--no_wait_until_finish" not in argv:
        argv.append("--no_wait_until_finish")
    client = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", module, *argv])
    try:
        rc = client.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"{job_name} not healthy after {timeout_s:.0f}s", file=sys.stderr)
        client.send_signal(signal.SIGINT)  # the launcher leaves the job on Flink and says where it is
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
        return 1
    if rc == 0:
        print(f"{job_name} RUNNING and healthy", flush=True)
    return rc


def cmd_run(module: str, flags: List[str]) -> None:
    import runpy

    register_restore_options()
    sys.argv = [module, *flags]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _one_job(job_name: str) -> dict:
    jobs = matching_jobs(rest("/jobs/overview"), job_name, ("RUNNING",))
    if not jobs:
        raise SystemExit(f"no RUNNING job named {job_name}")
    if len(jobs) > 1:
        raise SystemExit(f"{len(jobs)} RUNNING jobs named {job_name}: {[j['jid'] for j in jobs]}; stop extras by id")
    return jobs[0]


def _wait_savepoint(jid: str, trigger: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = rest(f"/jobs/{jid}/savepoints/{trigger}")
        if st.get("status", {}).get("id") == "COMPLETED":
            op = st.get("operation", {})
            if op.get("failure-cause"):
                raise SystemExit(f"savepoint failed: {op['failure-cause'].get('stack-trace', '')[:2000]}")
            return op["location"]
        time.sleep(3)
    raise SystemExit(f"savepoint of {jid} not complete after {timeout_s:.0f}s")


def cmd_stop(job_name: str, target_dir: Optional[str], timeout_s: float) -> int:
    job = _one_job(job_name)
    body = {"drain": False}
    if target_dir:
        body["targetDirectory"] = target_dir
    trigger = rest(f"/jobs/{job['jid']}/stop", body)["request-id"]
    location = _wait_savepoint(job["jid"], trigger, timeout_s)
    print(f"stopped {job_name} ({job['jid']})")
    print(f"SAVEPOINT_PATH={location}")
    return 0


def cmd_savepoint(job_name: str, target_dir: Optional[str], timeout_s: float) -> int:
    job = _one_job(job_name)
    body = {"cancel-job": False}
    if target_dir:
        body["target-directory"] = target_dir
    trigger = rest(f"/jobs/{job['jid']}/savepoints", body)["request-id"]
    print(f"SAVEPOINT_PATH={_wait_savepoint(job['jid'], trigger, timeout_s)}")
    return 0


def cmd_list() -> int:
    for j in sorted(rest("/jobs/overview").get("jobs", []), key=lambda j: (j.get("name", ""), -j.get("start-time", 0))):
        print(f"{j['jid']}  {j['state']:<12} {j.get('name', '')}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_run"]:  # internal: the pipeline client, with the restore options declared
        cmd_run(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("submit", help="submit a pipeline unless it is already running", allow_abbrev=False)
    p.add_argument("module", choices=MODULES)
    p.add_argument("--submit-timeout-s", type=float, default=900)
    for name in ("stop", "savepoint"):
        s = sub.add_parser(name)
        s.add_argument("--job-name", required=True)
        s.add_argument("--target-dir", default=None, help="default: the cluster's state.savepoints.dir")
        s.add_argument("--timeout-s", type=float, default=600)
    sub.add_parser("list")
    args, rest_flags = parser.parse_known_args(argv)
    if args.cmd == "submit":
        return cmd_submit(args.module, rest_flags, args.submit_timeout_s)
    if rest_flags:
        parser.error(f"unrecognized arguments: {' '.join(rest_flags)}")
    if args.cmd == "stop":
        return cmd_stop(args.job_name, args.target_dir, args.timeout_s)
    if args.cmd == "savepoint":
        return cmd_savepoint(args.job_name, args.target_dir, args.timeout_s)
    return cmd_list()


if __name__ == "__main__":
    raise SystemExit(main())
