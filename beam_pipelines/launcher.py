"""Submit a pipeline and watch its job on Flink, so that a job that fails or keeps restarting is never hidden.

`python -m beam_pipelines.<name>` ends here (through common.run_pipeline):

- by default the command waits until the job ends. Every restart prints its root cause (the Python or Java
  error line and a short tail of the trace, from Flink's /jobs/<jid>/exceptions). More than
  --max_restarts restarts within --restart_window_seconds: the launcher cancels the job it submitted and
  fails with the cause. A job that FAILED (or was cancelled by someone else) fails too.
- with --no_wait_until_finish it waits until the Flink job and all its tasks are RUNNING and stay so,
  without a restart, for --health_period_seconds, prints the job id and dashboard URL and returns; the job
  keeps running. A restart or failure in that time cancels the job and fails with the cause.
- Ctrl-C leaves the job running on Flink and says how to cancel it: a streaming job must not die with the
  terminal that started it (flink-deploy/flinkctl.py also stops its client once the job is RUNNING).

"Fails" is a JobFailed exception for callers of run(); `common.main` turns it into a non-zero exit.

The Flink job is the newest job named --job_name that was not there before submission. Flink's REST API:
$FLINK_REST_URL (the address as this process sees it), else --flink_master when it is host:port, else
http://localhost:8081. Restarts are Flink's numRestarts job metric.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import time
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Callable, Collection, Deque, List, Optional, Tuple


def quiet_warnings() -> None:
    """Hide the FutureWarnings that Google's client libraries (pulled in by apache_beam) print at import.

    Only those: our own warnings and every error still show. Call it before apache_beam is imported."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")


quiet_warnings()

from apache_beam.options.pipeline_options import (FlinkRunnerOptions, GoogleCloudOptions,  # noqa: E402
                                                  PipelineOptions, StandardOptions)

_LOG = logging.getLogger(__name__)

ENDED = ("FINISHED", "FAILED", "CANCELED")  # Flink's terminal job states
BEAM_FAILED = ("FAILED", "CANCELLED")  # Beam job server states that end a job without success
PORTABLE_RUNNERS = ("FlinkRunner", "PortableRunner")


class LauncherOptions(PipelineOptions):
    """How the command watches the job it submitted (with Beam's --no_wait_until_finish)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--max_restarts", type=int, default=3,
                            help="Cancel the job and fail once it restarted more than this many times within "
                                 "--restart_window_seconds (each restart prints its cause).")
        parser.add_argument("--restart_window_seconds", type=int, default=600,
                            help="Window for --max_restarts (seconds).")
        parser.add_argument("--health_period_seconds", type=int, default=30,
                            help="With --no_wait_until_finish: how long the job must run, every task RUNNING "
                                 "and no restart, before the command returns (seconds).")
        parser.add_argument("--startup_timeout_seconds", type=int, default=300,
                            help="How long the job may take to appear on Flink and reach RUNNING (seconds).")


@dataclass(frozen=True)
class Cause:
    """A failure boiled down: the error line(s) to show first, and the last lines of the trace."""

    error: str
    tail: Tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\n".join([self.error, *(f"    {line}" for line in self.tail)])


class JobFailed(RuntimeError):
    """The submitted job failed, kept restarting and was cancelled, or never became healthy."""

    def __init__(self, message: str, job_id: Optional[str] = None, cause: Optional[Cause] = None):
        super().__init__(f"{message}\n{cause}" if cause else message)
        self.job_id = job_id
        self.cause = cause


# --------------------------------------------------------------------------------------------------
# Root cause of a Flink stack trace

_TRACEBACK = "Traceback (most recent call last):"
_CAUSED_BY = re.compile(r"^Caused by: (.+)")
_TAIL_LINES = 4


def error_of(stacktrace: str) -> Cause:
    """The meaningful error of a Flink exception's stack trace.

    A Python worker's error arrives inside a Java exception ("Error received from SDK harness ...") with the
    Python traceback: its exception line (e.g. "NameError: name 'turn_activity' is not defined [while
    running 'TurnActivity']") and the frames just above it. Otherwise the deepest Java "Caused by:" and its
    first frames."""
    lines = stacktrace.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith(_TRACEBACK)]
    if starts:
        frames: List[str] = []
        for i in range(starts[-1] + 1, len(lines)):
            line = lines[i]
            if line[:1].isspace() or not line.strip():
                frames.append(line.strip())
                continue
            return Cause(line.strip(), tuple(f for f in frames if f.strip("^~ "))[-_TAIL_LINES:])
    causes = [i for i, line in enumerate(lines) if _CAUSED_BY.match(line)]
    at = causes[-1] if causes else 0
    error = _CAUSED_BY.sub(r"\1", lines[at]) if lines else "(empty stack trace)"
    frames = [line.strip() for line in lines[at + 1:] if line.strip().startswith("at ")]
    return Cause(error.strip(), tuple(frames[:_TAIL_LINES - 1]))


def root_cause(exceptions: dict) -> Optional[Cause]:
    """The newest failure of a /jobs/<jid>/exceptions answer (exceptionHistory, newest first; else
    root-exception), or None while Flink has recorded none."""
    entries = (exceptions.get("exceptionHistory") or {}).get("entries") or []
    trace = entries[0].get("stacktrace") if entries else exceptions.get("root-exception")
    return error_of(trace) if trace else None


# --------------------------------------------------------------------------------------------------
# Flink REST


def rest_url(flink_master: Optional[str] = None) -> str:
    """$FLINK_REST_URL, else --flink_master when it names a host:port, else the local cluster."""
    from io_connectors import settings

    url = settings.get("FLINK_REST_URL")
    if not url and flink_master and not flink_master.startswith("["):  # "[auto]", "[local]"
        url = flink_master if "://" in flink_master else f"http://{flink_master}"
    return (url or "http://localhost:8081").rstrip("/")


def dashboard_url(base: str, jid: str) -> str:
    return f"{base}/#/job/running/{jid}/overview"


@dataclass(frozen=True)
class JobStatus:
    state: str
    restarts: int
    tasks_running: bool  # every subtask of every vertex RUNNING


class FlinkRest:
    """The few Flink REST calls the launcher needs."""

    def __init__(self, base_url: str, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s

    def _call(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.base_url + path, method=method)
        with urllib.request.urlopen(req, timeout=self._timeout_s) as r:  # noqa: S310 - the cluster's REST API
            body = r.read().decode()
        return json.loads(body) if body else {}

    def jobs(self, name: str) -> List[dict]:
        """/jobs/overview entries named `name`, newest first."""
        jobs = [j for j in self._call("/jobs/overview").get("jobs", []) if j.get("name") == name]
        return sorted(jobs, key=lambda j: j.get("start-time", 0), reverse=True)

    def status(self, jid: str) -> JobStatus:
        job = self._call(f"/jobs/{jid}")
        vertices = job.get("vertices") or []
        running = bool(vertices) and all(v.get("tasks", {}).get("RUNNING", 0) == v.get("parallelism")
                                         for v in vertices)
        metrics = self._call(f"/jobs/{jid}/metrics?get=numRestarts")
        restarts = next((int(m["value"]) for m in metrics if m.get("id") == "numRestarts"), 0)
        return JobStatus(job["state"], restarts, running)

    def exceptions(self, jid: str) -> dict:
        return self._call(f"/jobs/{jid}/exceptions?maxExceptions=5")

    def cancel(self, jid: str) -> None:
        self._call(f"/jobs/{jid}?mode=cancel", method="PATCH")


# --------------------------------------------------------------------------------------------------
# Decisions


class RestartBudget:
    """Restarts of a job within a sliding window; spent once more than `max_restarts` fall in it."""

    def __init__(self, max_restarts: int, window_s: float):
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._seen = 0
        self._times: Deque[float] = collections.deque()

    def observe(self, restarts: int, now: float) -> int:
        """Record the job's restart counter at `now`; return how many restarts are new."""
        new = max(0, restarts - self._seen)
        self._seen = max(self._seen, restarts)
        self._times.extend([now] * new)
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        return new

    @property
    def spent(self) -> bool:
        return len(self._times) > self.max_restarts


class JobWatch:
    """Follows one submitted job on Flink (and on the Beam job server) and decides when to give up.

    `rest` is a FlinkRest (or a test double), `beam_state` returns the Beam job server's state name (or
    None when unknown), `beam_error` its last error message; `clock` and `sleep` are injectable."""

    def __init__(self, rest, name: str, opts: LauncherOptions, beam_state: Callable[[], Optional[str]] = lambda: None,
                 beam_error: Callable[[], str] = lambda: "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, poll_s: float = 2.0):
        self.rest, self.name, self.opts = rest, name, opts
        self._beam_state, self._beam_error = beam_state, beam_error
        self._clock, self._sleep, self._poll_s = clock, sleep, poll_s
        self._unanswered_since: Optional[float] = None
        self.jid: Optional[str] = None

    def find(self, existing: Collection[str]) -> str:
        """The newest Flink job named `name` not in `existing` (the jobs listed before submission)."""
        deadline = self._clock() + self.opts.startup_timeout_seconds
        while True:
            new = [j for j in self._ask(self.rest.jobs, self.name) or [] if j["jid"] not in existing]
            if new:
                self.jid = new[0]["jid"]
                return self.jid
            self._check_beam()
            if self._clock() > deadline:
                raise JobFailed(f"no Flink job named {self.name!r} appeared within "
                                f"{self.opts.startup_timeout_seconds}s of submission")
            self._sleep(self._poll_s)

    def until_healthy(self) -> None:
        """Return once the job and all its tasks have been RUNNING, without a restart, for the health period."""
        deadline = self._clock() + self.opts.startup_timeout_seconds
        healthy_since: Optional[float] = None
        while True:
            st = self._status()
            now = self._clock()
            if st is None:
                pass  # Flink's REST API did not answer this time
            elif st.restarts:
                self._give_up(f"job {self.jid} restarted before it was healthy")
            elif st.state == "RUNNING" and st.tasks_running:
                if healthy_since is None:
                    healthy_since = now
                    _LOG.info("job %s: every task RUNNING; watching it for %ss", self.jid,
                              self.opts.health_period_seconds)
                if now - healthy_since >= self.opts.health_period_seconds:
                    return
            else:
                healthy_since = None
                if now > deadline:
                    self._give_up(f"job {self.jid} not RUNNING after {self.opts.startup_timeout_seconds}s "
                                  f"(state {st.state})")
            self._sleep(self._poll_s)

    def until_finished(self) -> str:
        """Wait until the job ends; return its final state (FINISHED). Print each restart's cause, give up
        once the restart budget is spent."""
        budget = RestartBudget(self.opts.max_restarts, self.opts.restart_window_seconds)
        last_error = None
        while True:
            st = self._status()
            if st is not None and budget.observe(st.restarts, self._clock()):
                cause = self._cause()
                if budget.spent:
                    self._give_up(f"job {self.jid} restarted {st.restarts} times, more than {budget.max_restarts} "
                                  f"within {budget.window_s:.0f}s", cause)
                error = re.sub(r"\d+", "N", cause.error) if cause else None  # offsets, ids, instructions
                if error and error == last_error:
                    _LOG.warning("job %s restarted again (%d restarts), same error: %s", self.jid, st.restarts,
                                 cause.error)
                else:
                    _LOG.warning("job %s restarted (%d restarts), cause:\n%s", self.jid, st.restarts,
                                 cause or "unknown (Flink recorded no exception)")
                last_error = error
            if st is not None and st.state == "FINISHED":
                return st.state
            self._sleep(self._poll_s)

    # ---

    def _ask(self, call, *args):
        """call(*args), or None while Flink's REST API does not answer (a JobManager failover, a network
        blip); fails once it has not answered for the startup timeout."""
        try:
            answer = call(*args)
        except (OSError, ValueError) as e:
            now = self._clock()
            if self._unanswered_since is None:
                self._unanswered_since = now
                _LOG.warning("Flink's REST API does not answer (%s); retrying", e)
            if now - self._unanswered_since > self.opts.startup_timeout_seconds:
                raise JobFailed(f"Flink's REST API has not answered for {self.opts.startup_timeout_seconds}s "
                                f"({e}); the job {self.jid or self.name} may still be running", self.jid) from e
            return None
        self._unanswered_since = None
        return answer

    def _status(self) -> Optional[JobStatus]:
        st = self._ask(self.rest.status, self.jid)
        if st is not None and st.state in ("FAILED", "CANCELED"):
            raise JobFailed(f"job {self.jid} {st.state}", self.jid, self._cause())
        self._check_beam()
        return st

    def _check_beam(self) -> None:
        state = self._beam_state()
        if state in BEAM_FAILED:
            cause = (self._cause() if self.jid else None) or Cause(self._beam_error() or "unknown error")
            if self.jid:
                self._cancel()
            raise JobFailed(f"the Beam job server reports the job {state}", self.jid, cause)

    def _cause(self) -> Optional[Cause]:
        try:
            return root_cause(self.rest.exceptions(self.jid))
        except (OSError, ValueError, KeyError) as e:
            return Cause(f"(Flink's exceptions could not be read: {e})")

    def _cancel(self) -> None:
        try:
            self.rest.cancel(self.jid)
        except (OSError, ValueError) as e:
            _LOG.error("cancelling job %s failed: %s", self.jid, e)

    def _give_up(self, reason: str, cause: Optional[Cause] = None) -> None:
        cause = cause or self._cause()
        self._cancel()
        raise JobFailed(f"{reason}; cancelled it", self.jid, cause)


# --------------------------------------------------------------------------------------------------
# Submission


def _beam_state(result) -> Optional[str]:
    try:
        return str(result.state)
    except Exception:  # noqa: BLE001 - the job server is unreachable: Flink's view still counts
        return None


def _beam_error(result) -> str:
    """The job server's last error message for a job it reports failed."""
    try:
        result.wait_until_finish(duration=5000)
    except Exception as e:  # noqa: BLE001 - Beam raises a RuntimeError carrying the message
        return str(e)
    return ""


def launch(pipeline, opts: PipelineOptions, wait: bool = True):
    """Run `pipeline` and watch it as the options say; return the Beam PipelineResult.

    wait=False submits and returns at once (the caller watches the job, as the e2e tests do). Raises
    JobFailed when the job fails, keeps restarting or never becomes healthy."""
    std = opts.view_as(StandardOptions)
    if not wait:
        return pipeline.run()
    if std.runner not in PORTABLE_RUNNERS:
        result = pipeline.run()
        if not std.no_wait_until_finish:
            result.wait_until_finish()
        return result

    rest = FlinkRest(rest_url(opts.view_as(FlinkRunnerOptions).flink_master))
    name = opts.view_as(GoogleCloudOptions).job_name
    try:
        existing = rest.jobs(name)
    except (OSError, ValueError) as e:
        raise JobFailed(f"Flink's REST API at {rest.base_url} does not answer ({e}): nothing submitted. Set "
                        "$FLINK_REST_URL or --flink_master=host:port") from e
    active = [j["jid"] for j in existing if j.get("state") not in ENDED]
    if active:
        _LOG.warning("a job named %s is already active on Flink (%s); submitting another one", name,
                     ", ".join(active))
    result = pipeline.run()
    watch = JobWatch(rest, name, opts.view_as(LauncherOptions), beam_state=lambda: _beam_state(result),
                     beam_error=lambda: _beam_error(result))
    try:
        jid = watch.find({j["jid"] for j in existing})
        _LOG.info("submitted %s as Flink job %s: %s", name, jid, dashboard_url(rest.base_url, jid))
        if std.no_wait_until_finish:
            watch.until_healthy()
            print(f"job {name} RUNNING and healthy for {watch.opts.health_period_seconds}s: Flink job {jid}\n"
                  f"dashboard: {dashboard_url(rest.base_url, jid)}", flush=True)
        else:
            watch.until_finished()
    except KeyboardInterrupt:
        where = (f"as Flink job {watch.jid} ({dashboard_url(rest.base_url, watch.jid)}); cancel it there or with "
                 f"curl -X PATCH '{rest.base_url}/jobs/{watch.jid}?mode=cancel'") if watch.jid else "on Flink"
        print(f"\ninterrupted: the job keeps running {where}", flush=True)
        raise
    return result
