"""The launcher on the Flink cluster, through the `python -m` command lines a user types: a job whose worker code
raises at every element makes the command fail with that error, in bounded time, and leaves no job behind;
the README's command with --no_wait_until_finish returns 0 once the job is RUNNING and healthy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.flink_helpers import (cancel_by_name, flink_get, flink_master_address, jobs_by_name, poll,
                                     producing_every_second)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _run(args, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


def test_a_job_that_fails_at_every_element_makes_the_command_fail_with_its_error(stack, kafka_settings, run_id):
    from tests.e2e import crashing_pipeline

    bootstrap = kafka_settings.bootstrap_servers
    crashing_pipeline.ensure_topic(bootstrap)
    producing = producing_every_second(bootstrap, crashing_pipeline.TOPIC, run_id, "admin").start()
    job_name = f"e2e-crash-{run_id}"
    started = time.monotonic()
    try:
        # a new consumer group starts at the earliest offset: older records fail the job at once
        proc = _run(["tests.e2e.crashing_pipeline", "--runner=FlinkRunner", f"--flink_master={flink_master_address()}",
                     f"--job_name={job_name}", f"--consumer_group={job_name}", "--parallelism=1",
                     "--max_restarts=1"], timeout_s=180)
        took = time.monotonic() - started
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        assert f"CrashingPipelineError: {crashing_pipeline.ERROR}" in out, out
        assert "[while running 'RaiseAtEveryElement']" in out and "cancelled it" in out, out
        assert "NameError" not in out, out  # the module's lambda was pickled by reference (issue 9)
        assert took < 180
        jobs = jobs_by_name(job_name)
        assert len(jobs) == 1, jobs
        poll(lambda: jobs_by_name(job_name)[0]["state"] == "CANCELED", 60, f"{job_name} CANCELED")
    finally:
        producing.stop()
        cancel_by_name(job_name)


def test_the_readme_command_with_no_wait_returns_0_once_the_job_runs_healthy(stack, run_id):
    job_name = f"e2e-kpi-cli-{run_id}"
    try:
        proc = _run(["beam_pipelines.kpi", "--runner=FlinkRunner", f"--flink_master={flink_master_address()}",
                     "--no_wait_until_finish", f"--job_name={job_name}", f"--consumer_group={job_name}"],
                    timeout_s=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "RUNNING and healthy" in proc.stdout and "dashboard: http://" in proc.stdout, out
        [job] = jobs_by_name(job_name)
        assert job["state"] == "RUNNING" and job["jid"] in proc.stdout
        restarts = flink_get(f"/jobs/{job['jid']}/metrics?get=numRestarts")
        assert restarts == [{"id": "numRestarts", "value": "0"}]
    finally:
        cancel_by_name(job_name)
