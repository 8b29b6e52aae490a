"""Observability end to end, as an operator sees it: Prometheus scrapes Flink, the exporters and the status
service; a pipeline started with the README's command shows a named step's Beam counter after a known number
of bad records and its consumer lag falling to 0; the status page (loaded in headless Chromium, screenshot
kept) lists the running job; a crash-looping job shows as restarting with its last exception."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from beam_pipelines import kpi
from devstack.config import LOGS
from tests.e2e.flink_helpers import (REPO, cancel_by_name, commit_group_at_end, flink_master_address, poll,
                                     produce_with_offsets, producing_every_second, readme_pipeline)
from workloads.generator import ProducedRecord, TurnWorkload

pytestmark = pytest.mark.e2e
PROMETHEUS = "http://localhost:9090"
STATUS = "http://localhost:8000"
SCREENSHOT = LOGS / "status-page.png"
# panels with no series while only the KPI pipeline runs: no archive job writes the default prefix
MAY_BE_EMPTY = {"Archive freshness"}


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def prom(query: str):
    return _get_json(f"{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(query)}")["data"]["result"]


def prom_value(query: str):
    result = prom(query)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_flink_the_exporters_and_the_status_service(stack):
    def all_up():
        targets = _get_json(f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        return health if health and all(h == "up" for h in health.values()) else None

    health = poll(all_up, 60, "every Prometheus target up")
    assert {job for job, _ in health} == {"flink", "postgres", "redis", "status", "prometheus", "alertmanager",
                                        "collector"}
    assert len([1 for job, _ in health if job == "flink"]) == 2  # JobManager and TaskManager
    assert prom_value("pg_up") == 1 and prom_value("redis_up") == 1
    assert prom_value('iheardai_health_up{service="kafka"}') == 1


def _chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        from devstack.process import apt_install

        apt_install("chromium")
        found = shutil.which("chromium")
    return found


def test_a_running_pipeline_shows_its_step_counters_its_lag_and_its_page(stack, kafka_settings, run_id):
    bootstrap = kafka_settings.bootstrap_servers
    group = f"e2e-kpi-{run_id}"
    commit_group_at_end(group, kpi.TOPICS, bootstrap)
    turns = TurnWorkload(seed=41, run_id=run_id, sessions=5, duplicate_rate=0, malformed_rate=0).generate(30)
    now_ms = int(time.time() * 1000)
    bad = [ProducedRecord(f"bad{i}".encode(), b'{"session_id": "x", ', now_ms, "malformed") for i in range(9)]
    produce_with_offsets(turns.records + bad, kpi.TOPICS[0], bootstrap)
    lag = f'sum(iheardai_consumer_lag_messages{{group="{group}"}})'
    age = f'max(iheardai_consumer_lag_seconds{{group="{group}"}})'
    # produced before the job starts: the group is 39 records behind, and the oldest is seconds old
    try:
        # both from one pass of the status service: the age of the oldest record comes with the count
        poll(lambda: prom_value(lag) == 39 and (prom_value(age) or 0) > 0, 90, f"{lag} == 39 and {age} > 0")
    except AssertionError as e:
        status = _get_json(f"{STATUS}/status")
        mine = [x for x in status["lag"] if x["group"] == group]
        raise AssertionError(f"{e}; Prometheus has {prom_value(lag)}, the status service {mine} (its pass at "
                             f"{status['taken_at']:.0f}, now {time.time():.0f}, errors {status['errors']})") from None

    with readme_pipeline("kpi", run_id, None) as job:
        flink_job = re.sub(r"[^a-zA-Z0-9:_]", "_", job.job_name)  # Flink's reporter filters label values
        # Beam counters of named steps, as Prometheus has them (events.metrics: the step is a label)
        invalid = (f'sum(iheardai_step_dead_letters_invalid_json{{job_name="{flink_job}", '
                   f'step="Validate_text_agent_turn_completed_"}})')
        poll(lambda: prom_value(invalid) == 9, 120, f"{invalid} == 9")
        written = f'sum(iheardai_step_agent_turns_rows_written{{job_name="{flink_job}"}})'
        poll(lambda: prom_value(written) == 30, 60, f"{written} == 30")
        # the other topics' validators run in the same fused Flink stage and keep their own counters
        valid_tools = (f'sum(iheardai_step_events_valid{{job_name="{flink_job}", '
                       f'step="Validate_agent_tool_invoked_"}})')
        assert prom_value(valid_tools) in (None, 0.0)
        assert prom_value(f'sum(iheardai_step_events_valid{{job_name="{flink_job}", '
                          f'step="Validate_text_agent_turn_completed_"}})') == 30
        poll(lambda: prom_value(lag) == 0, 120, f"{lag} falls to 0 (offsets committed on checkpoints)")
        assert prom_value(f'flink_jobmanager_job_uptime{{job_name="{flink_job}"}}') > 0  # Flink's own
        # the reporter's filter (devstack.services.flink.PROMETHEUS_EXCLUDES): Beam's per-transform system metrics
        # and the per-operator record counts are not scraped, the task-level ones are
        assert prom_value(f'count({{job="flink", job_name="{flink_job}", __name__=~".*metric:.*"}})') is None
        assert prom_value(f'count(flink_taskmanager_job_task_operator_numRecordsIn{{job_name="{flink_job}"}})') is None
        assert prom_value(f'count(flink_taskmanager_job_task_numRecordsIn{{job_name="{flink_job}"}})') > 0
        poll(lambda: prom_value(f'iheardai_job_up{{pipeline="kpi", job_name="{job.job_name}"}}') == 1, 30,
             "iheardai_job_up of the job")

        # every dashboard panel's query is valid PromQL and, with this pipeline running, has series
        from observability.dashboards import prometheus_queries

        def empty_panels():
            empty = []
            for q in prometheus_queries():
                body = _get_json(f"{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(q.expr)}")
                assert body["status"] == "success", (q, body)
                if not body["data"]["result"] and q.panel not in MAY_BE_EMPTY:
                    empty.append(f"{q.dashboard}/{q.panel}: {q.expr}")
            return empty

        last: list = []

        def all_have_series():
            last[:] = empty_panels()
            return not last

        try:
            poll(all_have_series, 90, "every dashboard panel with series")  # rates need two scrapes
        except AssertionError:
            raise AssertionError("panels without series:\n" + "\n".join(last)) from None

        status = _get_json(f"{STATUS}/status")
        mine = [j for j in status["jobs"] if j["name"] == job.job_name]
        assert mine and mine[0]["state"] == "RUNNING" and mine[0]["pipeline"] == "kpi"
        SCREENSHOT.unlink(missing_ok=True)
        browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--window-size=1280,1800"]
        dom = subprocess.run([*browser, "--dump-dom", f"{STATUS}/status.html"], capture_output=True, text=True,
                             timeout=120).stdout
        assert job.job_name in dom and "<h2>Jobs</h2>" in dom and "RUNNING" in dom
        subprocess.run([*browser, f"--screenshot={SCREENSHOT}", f"{STATUS}/status.html"], capture_output=True,
                       timeout=120, check=True)
        assert SCREENSHOT.stat().st_size > 10_000  # a rendered page, kept for people to look at
        print(f"\nstatus page screenshot: {SCREENSHOT}")


def _alert_group_delay_s(severity: str) -> float:
    """The longest Alertmanager may hold a new alert of this severity: group_wait + group_interval of its route."""
    import yaml

    route = yaml.safe_load((REPO / "observability" / "alertmanager.yml").read_text())["route"]
    sub = next((r for r in route.get("routes", []) if f'severity="{severity}"' in r.get("matchers", [])), {})

    def seconds(key):
        value = str(sub.get(key, route.get(key)))
        return float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]

    return seconds("group_wait") + seconds("group_interval")


def test_a_crash_looping_job_shows_as_restarting_with_its_last_exception(stack, kafka_settings, run_id):
    from tests.e2e import crashing_pipeline

    bootstrap = kafka_settings.bootstrap_servers
    crashing_pipeline.ensure_topic(bootstrap)
    producing = producing_every_second(bootstrap, crashing_pipeline.TOPIC, run_id, "admin").start()
    job_name = f"e2e-leads-crash-{run_id}"  # a name that names a pipeline: its alerts name it too
    launcher = subprocess.Popen([sys.executable, "-m", "tests.e2e.crashing_pipeline", "--runner=FlinkRunner",
                                 f"--flink_master={flink_master_address()}", f"--job_name={job_name}",
                                 f"--consumer_group={job_name}", "--parallelism=1", "--max_restarts=1000"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def restarting():
            jobs = [j for j in _get_json(f"{STATUS}/status")["jobs"] if j["name"] == job_name]
            return jobs[0] if jobs and jobs[0]["restarting"] and jobs[0]["restarts"] >= 1 else None

        job = poll(restarting, 180, f"{job_name} shown as restarting")
        assert crashing_pipeline.ERROR in (job["last_exception"] or ""), job["last_exception"]
        page = urllib.request.urlopen(f"{STATUS}/status.html", timeout=10).read().decode()
        assert job_name in page and "RESTARTING" in page

        # Prometheus fires PipelineJobRestarting for this job, Alertmanager has it and routes its group
        # (alertname, pipeline) to the status service's webhook, which shows it on the page
        def in_alertmanager():
            return [a for a in _get_json("http://localhost:9094/api/v2/alerts?filter=alertname%3DPipelineJobRestarting")
                    if a["labels"].get("job_name") == job_name and a["status"]["state"] == "active"]

        assert "leads" in poll(in_alertmanager, 120, "PipelineJobRestarting of the job in Alertmanager")[0][
            "annotations"]["summary"]

        def at_status_service():
            return [a for a in _get_json(f"{STATUS}/status")["alerts"]
                    if a["labels"].get("alertname") == "PipelineJobRestarting"
                    and a["labels"].get("pipeline") == "leads" and a["labels"].get("job_name") == job_name
                    and a["status"] == "firing"]

        # A new group is sent after group_wait; if the group (alertname, pipeline=leads) is already open (an
        # earlier leads job restarted in the last minutes), the new alert goes out with the group's next
        # notification, up to group_interval later.
        poll(at_status_service, _alert_group_delay_s("warning") + 60,
             "PipelineJobRestarting of the job sent to the status service")
        assert "PipelineJobRestarting" in urllib.request.urlopen(f"{STATUS}/status.html", timeout=10).read().decode()
    finally:
        producing.stop()
        launcher.send_signal(signal.SIGINT)  # Ctrl-C: the launcher leaves the job; we cancel it
        try:
            launcher.wait(30)
        except subprocess.TimeoutExpired:
            # Known, not what this test is about: a launcher watching a crash-looping job sometimes ignores Ctrl-C
            # (seen twice in full suite runs, never alone). Cleanup goes on.
            print("the launcher did not exit within 30 s of Ctrl-C; killed")
            launcher.kill()
        finally:
            cancel_by_name(job_name)  # never leave a crash-looping job to the rest of the suite
