"""The launcher without a cluster: root causes from real Flink 1.19 exception JSON (tests/unit/flink_samples/),
the restart and health decisions against a scripted Flink, `common.main` and the short --help."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from beam_pipelines import launcher
from beam_pipelines.launcher import (Cause, FlinkRest, JobFailed, JobStatus, JobWatch, LauncherOptions,
                                     RestartBudget, error_of, rest_url, root_cause)

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).parent / "flink_samples"
REPO = Path(__file__).resolve().parents[2]


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


# --- root cause


def test_root_cause_of_a_python_dofn_error_is_its_exception_line_and_last_frames():
    cause = root_cause(sample("exceptions_dofn_error.json"))
    assert cause.error == ("tests.e2e.crashing_pipeline.CrashingPipelineError: crashing_pipeline refuses every "
                           "element (offset 0) [while running 'RaiseAtEveryElement']")
    assert cause.tail[-2:] == ('File "/work/main/tests/e2e/crashing_pipeline.py", line 28, in process',
                               'raise CrashingPipelineError(f"{ERROR} (offset {record.offset})")')
    assert len(cause.tail) == 4 and not any(line.startswith("at ") for line in cause.tail)


def test_root_cause_of_the_issue_9_name_error_drops_the_caret_lines():
    cause = root_cause(sample("exceptions_nameerror.json"))
    assert cause.error == "NameError: name 'turn_activity' is not defined [while running 'TurnActivity']"
    assert any("lambda r: turn_activity(r)" in line for line in cause.tail)
    assert not any(set(line) <= set("^~ ") for line in cause.tail)
    assert str(cause).startswith("NameError: name 'turn_activity' is not defined")


def test_root_cause_uses_the_newest_history_entry_then_root_exception_then_none():
    exc = sample("exceptions_dofn_error.json")
    newer = copy.deepcopy(exc["exceptionHistory"]["entries"][0])
    newer["stacktrace"] = "java.lang.IllegalStateException: newer failure\n\tat a.B.c(B.java:1)"
    exc["exceptionHistory"]["entries"].insert(0, newer)
    assert root_cause(exc).error == "java.lang.IllegalStateException: newer failure"

    old_style = {"root-exception": "java.io.IOException: disk full\n\tat x.Y.z(Y.java:3)",
                 "exceptionHistory": {"entries": [], "truncated": False}}
    assert root_cause(old_style) == Cause("java.io.IOException: disk full", ("at x.Y.z(Y.java:3)",))
    # a healthy job's answer, as Flink 1.19 gives it
    assert root_cause({"root-exception": None, "timestamp": None, "all-exceptions": [], "truncated": False,
                       "exceptionHistory": {"entries": [], "truncated": False}}) is None


def test_a_java_only_trace_gives_its_deepest_caused_by():
    trace = textwrap.dedent("""\
        org.apache.flink.runtime.JobException: Recovery is suppressed by NoRestartBackoffTimeStrategy
        \tat org.apache.flink.runtime.A.b(A.java:1)
        Caused by: java.lang.RuntimeException: Failed to start remote bundle
        \tat org.apache.beam.C.d(C.java:2)
        Caused by: org.apache.kafka.common.errors.TimeoutException: Timeout expired while fetching topic metadata
        \tat org.apache.kafka.E.f(E.java:3)
        \tat org.apache.kafka.G.h(G.java:4)
        """)
    cause = error_of(trace)
    assert cause.error == ("org.apache.kafka.common.errors.TimeoutException: Timeout expired while fetching topic "
                           "metadata")
    assert cause.tail == ("at org.apache.kafka.E.f(E.java:3)", "at org.apache.kafka.G.h(G.java:4)")


# --- Flink REST answers


def _rest_answering(answers: dict) -> FlinkRest:
    rest = FlinkRest("http://flink.test:8081")
    rest._call = lambda path, method="GET": answers[path]
    return rest


def test_status_of_a_running_job_reads_every_vertex_and_the_restart_metric():
    job = sample("job_running.json")
    jid = job["jid"]
    rest = _rest_answering({f"/jobs/{jid}": job,
                            f"/jobs/{jid}/metrics?get=numRestarts": [{"id": "numRestarts", "value": "2"}]})
    assert rest.status(jid) == JobStatus("RUNNING", 2, True)

    job["vertices"][-1]["tasks"].update(RUNNING=0, DEPLOYING=1)  # one task still deploying
    assert rest.status(jid) == JobStatus("RUNNING", 2, False)


def test_flink_rest_url_env_then_flink_master_then_local(monkeypatch, tmp_path):
    from io_connectors import settings

    monkeypatch.setattr(settings, "_DEVSTACK_ENV", tmp_path / "absent.env")
    monkeypatch.delenv("FLINK_REST_URL", raising=False)
    assert rest_url("[auto]") == "http://localhost:8081"
    assert rest_url("flink-jm:8081") == "http://flink-jm:8081"
    assert rest_url("https://flink.example/") == "https://flink.example"
    monkeypatch.setenv("FLINK_REST_URL", "http://rest.internal:8081/")
    assert rest_url("flink-jm:8081") == "http://rest.internal:8081"


# --- decisions, against a scripted Flink and a fake clock


class FakeFlink:
    """Answers status() from a script (one JobStatus per poll; the last one repeats) and records cancels."""

    base_url = "http://flink.test:8081"

    def __init__(self, statuses, exceptions=None, jobs=()):
        self.statuses = list(statuses)
        self.exc = exceptions if exceptions is not None else sample("exceptions_dofn_error.json")
        self.listed = list(jobs)
        self.cancelled = []

    def jobs(self, name):
        return [j for j in self.listed if j["name"] == name]

    def status(self, jid):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def exceptions(self, jid):
        return self.exc

    def cancel(self, jid):
        self.cancelled.append(jid)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def _watch(flink, clock, beam_state=lambda: "RUNNING", beam_error=lambda: "", **opts):
    args = [f"--{k}={v}" for k, v in opts.items()]
    w = JobWatch(flink, "job-x", LauncherOptions(args), beam_state=beam_state, beam_error=beam_error,
                 clock=clock, sleep=clock.sleep, poll_s=2.0)
    w.jid = "jid-1"
    return w


def test_restart_budget_counts_restarts_inside_the_window_only():
    b = RestartBudget(max_restarts=2, window_s=60)
    assert b.observe(1, 0) == 1 and b.observe(2, 10) == 1 and not b.spent
    assert b.observe(2, 20) == 0
    assert b.observe(3, 30) == 1 and b.spent  # three restarts within 60 s
    b = RestartBudget(max_restarts=2, window_s=60)
    for i, t in enumerate((0, 100, 200, 300), start=1):
        b.observe(i, t)
        assert not b.spent  # one restart per 100 s never spends it


def test_wait_mode_cancels_and_fails_once_restarts_exceed_the_budget():
    clock = Clock()
    flink = FakeFlink([JobStatus("RUNNING", n, True) for n in (0, 1, 1, 2, 3, 4)])
    with pytest.raises(JobFailed) as e:
        _watch(flink, clock, max_restarts=3).until_finished()
    assert flink.cancelled == ["jid-1"]
    assert "restarted 4 times, more than 3" in str(e.value) and "CrashingPipelineError" in str(e.value)
    assert e.value.cause.error.endswith("[while running 'RaiseAtEveryElement']")


def test_wait_mode_prints_each_restart_and_keeps_watching_a_job_that_recovers(caplog):
    clock = Clock()
    flink = FakeFlink([JobStatus("RUNNING", 0, True), JobStatus("RESTARTING", 1, False),
                       JobStatus("RUNNING", 1, True), JobStatus("RESTARTING", 2, False),
                       JobStatus("RUNNING", 2, True), JobStatus("FINISHED", 2, False)])
    with caplog.at_level("WARNING", logger="beam_pipelines.launcher"):
        assert _watch(flink, clock, max_restarts=3).until_finished() == "FINISHED"
    assert flink.cancelled == []
    assert "restarted (1 restarts), cause:\ntests.e2e.crashing_pipeline.CrashingPipelineError" in caplog.text
    assert "restarted again (2 restarts), same error: tests.e2e.crashing_pipeline.CrashingPipelineError" in caplog.text


def test_wait_mode_fails_with_the_cause_of_a_failed_job_without_cancelling_it():
    flink = FakeFlink([JobStatus("RUNNING", 0, True), JobStatus("FAILED", 0, False)],
                      exceptions=sample("exceptions_nameerror.json"))
    with pytest.raises(JobFailed, match="job jid-1 FAILED") as e:
        _watch(flink, Clock()).until_finished()
    assert flink.cancelled == [] and "NameError: name 'turn_activity'" in str(e.value)


def test_beam_job_server_failure_ends_the_watch_and_cancels_the_flink_job():
    flink = FakeFlink([JobStatus("RUNNING", 0, True)], exceptions={"exceptionHistory": {"entries": []}})
    with pytest.raises(JobFailed, match="Beam job server reports the job FAILED") as e:
        _watch(flink, Clock(), beam_state=lambda: "FAILED", beam_error=lambda: "boom from the runner").until_finished()
    assert flink.cancelled == ["jid-1"] and "boom from the runner" in str(e.value)


def test_no_wait_returns_after_the_health_period_of_running_tasks():
    clock = Clock()
    flink = FakeFlink([JobStatus("INITIALIZING", 0, False), JobStatus("RUNNING", 0, False)]
                      + [JobStatus("RUNNING", 0, True)])
    _watch(flink, clock, health_period_seconds=20).until_healthy()
    # 2 polls before every task runs, then 20 s of health
    assert 20 <= clock.now - 4 <= 22 and flink.cancelled == []


def test_no_wait_cancels_and_fails_on_a_restart_during_the_health_period():
    clock = Clock()
    flink = FakeFlink([JobStatus("RUNNING", 0, True)] * 5 + [JobStatus("RESTARTING", 1, False)])
    with pytest.raises(JobFailed, match="restarted before it was healthy") as e:
        _watch(flink, clock, health_period_seconds=30).until_healthy()
    assert flink.cancelled == ["jid-1"] and "CrashingPipelineError" in str(e.value)


def test_no_wait_cancels_a_job_that_never_runs_within_the_startup_timeout():
    clock = Clock()
    flink = FakeFlink([JobStatus("CREATED", 0, False)], exceptions={"exceptionHistory": {"entries": []}})
    with pytest.raises(JobFailed, match="not RUNNING after 60s"):
        _watch(flink, clock, startup_timeout_seconds=60).until_healthy()
    assert flink.cancelled == ["jid-1"] and 60 < clock.now <= 64


def test_a_silent_rest_api_is_retried_then_fails_without_cancelling():
    import urllib.error

    clock = Clock()
    flink = FakeFlink([JobStatus("RUNNING", 0, True)])
    answers = [urllib.error.URLError("connection refused")] * 3 + [JobStatus("FINISHED", 0, False)]

    def flaky(jid):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    flink.status = flaky
    assert _watch(flink, clock).until_finished() == "FINISHED"  # three failed polls, then an answer

    flink.status = lambda jid: (_ for _ in ()).throw(urllib.error.URLError("connection refused"))
    with pytest.raises(JobFailed, match="has not answered for 60s"):
        _watch(flink, clock, startup_timeout_seconds=60).until_finished()
    assert flink.cancelled == []


def test_find_picks_the_newest_job_of_that_name_not_listed_before_submission():
    old = {"jid": "old", "name": "job-x", "start-time": 5, "state": "RUNNING"}
    flink = FakeFlink([], jobs=[old])
    clock = Clock()
    w = _watch(flink, clock)
    flink.listed += [{"jid": "new", "name": "job-x", "start-time": 9, "state": "CREATED"},
                     {"jid": "other", "name": "job-y", "start-time": 10, "state": "RUNNING"}]
    flink.listed.sort(key=lambda j: -j["start-time"])
    assert w.find({"old"}) == "new"


def test_find_fails_with_the_beam_error_when_the_job_never_reaches_flink():
    w = _watch(FakeFlink([]), Clock(), beam_state=lambda: "FAILED",
               beam_error=lambda: "Pipeline job_1 failed in state FAILED: translation error")
    w.jid = None
    with pytest.raises(JobFailed, match="translation error"):
        w.find(set())


# --- launch(): the glue, with Flink and the pipeline faked


class FakeResult:
    state = "RUNNING"


class FakePipeline:
    def __init__(self, flink: FakeFlink):
        self.flink = flink

    def run(self):
        self.flink.listed.insert(0, {"jid": "new", "name": "job-x", "start-time": 9, "state": "CREATED"})
        return FakeResult()


def _launch_opts(*flags):
    from beam_pipelines.options import finalize_options

    return finalize_options(["--job_name=job-x", "--flink_master=flink.test:8081", *flags], "kpi")


def test_launch_no_wait_prints_the_job_and_dashboard_once_healthy(monkeypatch, capsys):
    flink = FakeFlink([JobStatus("RUNNING", 0, True)],
                      jobs=[{"jid": "old", "name": "job-x", "start-time": 1, "state": "CANCELED"}])
    monkeypatch.setattr(launcher, "FlinkRest", lambda url: flink)
    result = launcher.launch(FakePipeline(flink), _launch_opts("--no_wait_until_finish", "--health_period_seconds=0"))
    assert isinstance(result, FakeResult)
    out = capsys.readouterr().out
    assert "job job-x RUNNING and healthy for 0s: Flink job new" in out
    assert "dashboard: http://flink.test:8081/#/job/running/new/overview" in out and flink.cancelled == []


def test_launch_ctrl_c_leaves_the_job_running_and_says_how_to_cancel_it(monkeypatch, capsys):
    flink = FakeFlink([JobStatus("RUNNING", 0, True)])

    def interrupted(jid):
        raise KeyboardInterrupt

    flink.status = interrupted
    monkeypatch.setattr(launcher, "FlinkRest", lambda url: flink)
    with pytest.raises(KeyboardInterrupt):
        launcher.launch(FakePipeline(flink), _launch_opts())
    out = capsys.readouterr().out
    assert "interrupted: the job keeps running as Flink job new" in out
    assert "curl -X PATCH 'http://flink.test:8081/jobs/new?mode=cancel'" in out and flink.cancelled == []


# --- common.main: the module under its real name, its duplicate options muted, exit codes


def _fake_main_module(monkeypatch, tmp_path, body: str):
    """A module `launcher_probe_<n>` importable from tmp_path, and a `__main__` holding a copy of its
    PipelineOptions class, as `python -m` leaves it."""
    import types

    from apache_beam.options.pipeline_options import PipelineOptions

    name = f"launcher_probe_{uuid.uuid4().hex[:8]}"  # its flag too: options classes stay registered
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body).replace("probe_flag", f"{name}_flag"))
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_main = types.ModuleType("__main__")

    class ProbeOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument(f"--{name}_flag", default="x")

    ProbeOptions.__module__ = "__main__"
    fake_main.ProbeOptions = ProbeOptions
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    monkeypatch.setattr(sys, "argv", ["probe", f"--{name}_flag=y"])
    beam_logger = logging.getLogger("apache_beam")
    monkeypatch.setattr(beam_logger, "level", beam_logger.level)  # main() quiets it; restore it afterwards
    return name


_PROBE = """
    from apache_beam.options.pipeline_options import PipelineOptions


    class ProbeOptions(PipelineOptions):
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--probe_flag", default="x")


    def run(argv):
        opts = PipelineOptions(argv)
        opts.get_all_options()  # what the runner does at submission: every class's flags in one parser
        assert opts.view_as(ProbeOptions).probe_flag == "y"
        {tail}
    """


def test_main_runs_the_module_under_its_name_and_mutes_the_main_copy_of_its_options(monkeypatch, tmp_path):
    from beam_pipelines.common import main

    name = _fake_main_module(monkeypatch, tmp_path, _PROBE.format(tail="return 'ok'"))
    with pytest.raises(SystemExit) as e:
        main(name)
    assert e.value.code == 0
    assert sys.modules[name].run.__module__ == name  # pickled by reference to an importable module


def test_main_exits_1_with_the_cause_when_the_job_fails(monkeypatch, tmp_path, capsys):
    from beam_pipelines.common import main

    tail = "from beam_pipelines.launcher import Cause, JobFailed; raise JobFailed('job j1 FAILED', 'j1', Cause('E: x'))"
    name = _fake_main_module(monkeypatch, tmp_path, _PROBE.format(tail=tail))
    with pytest.raises(SystemExit) as e:
        main(name)
    assert e.value.code == 1
    assert "FAILED: job j1 FAILED\nE: x" in capsys.readouterr().err


# --- --help


def test_help_lists_the_pipeline_options_first_grouped_and_short(capsys):
    from beam_pipelines.options import finalize_options

    with pytest.raises(SystemExit):
        finalize_options(["--help"], "archive", "Archive pipeline.")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) < 150
    groups = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert groups[:5] == ["options", "Kafka source", "Windows", "Sinks", "Transforms"]
    assert groups.index("Archive") < groups.index("Flink runner") < groups.index(
        "Launcher (see beam_pipelines/launcher.py)") == len(groups) - 1
    for flag in ("--consumer_group", "--session_gap_seconds", "--pg_batch_size", "--pii_policy_file",
                 "--archive_prefix", "--runner", "--flink_master", "--job_endpoint", "--parallelism",
                 "--checkpointing_interval", "--job_name", "--no_wait_until_finish", "--max_restarts",
                 "--health_period_seconds", "--help_all"):
        assert flag in out, flag
    assert not any(f in out for f in ("--dataflow", "--project", "--azure", "--gcs", "--spark"))


def test_help_all_lists_every_beam_option(capsys):
    from beam_pipelines.options import finalize_options

    with pytest.raises(SystemExit):
        finalize_options(["--help_all"], "kpi", "")
    out = capsys.readouterr().out
    assert "--dataflow_endpoint" in out and "--consumer_group" in out and len(out.splitlines()) > 300


def test_python_m_help_prints_no_google_future_warnings_and_exits_0():
    """The `python -m` path end to end, in a subprocess (about 5 s: it imports apache_beam)."""
    proc = subprocess.run([sys.executable, "-m", "tests.e2e.crashing_pipeline", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m tests.e2e.crashing_pipeline")
    assert "FutureWarning" not in proc.stderr, proc.stderr


def test_finalize_options_names_the_job_after_the_pipeline_and_checks_launcher_options():
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    from beam_pipelines.options import finalize_options

    opts = finalize_options([], "kpi")
    assert opts.view_as(GoogleCloudOptions).job_name == "iheardai-kpi"
    assert not opts.view_as(StandardOptions).no_wait_until_finish
    assert opts.view_as(LauncherOptions).max_restarts == 3
    mine = finalize_options(["--job_name=mine", "--no_wait_until_finish", "--health_period_seconds=5"], "kpi")
    assert mine.view_as(GoogleCloudOptions).job_name == "mine" and mine.view_as(StandardOptions).no_wait_until_finish
    with pytest.raises(ValueError, match="launcher options"):
        finalize_options(["--max_restarts=-1"], "kpi")
