"""Flink standalone cluster (JobManager + one TaskManager) from the PyPI apache-flink wheels."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack import versions
from devstack.config import DATA, DOWNLOADS, LOGS, PORTS, RUN
from devstack.process import (http_json, java_bin, log, pid_alive, read_pid, run, spawn, spawn_supervised, stop_pid,
                               supervisor_name, wait_until)
from devstack.services import Service, beam_services


FLINK_DIST = DOWNLOADS / f"flink-{versions.FLINK}"
FLINK_HOME = FLINK_DIST / "pyflink"
FLINK_CONF = RUN / "flink-conf"


def flink_install() -> None:
    if (FLINK_HOME / "bin" / "jobmanager.sh").exists():
        return
    log(f"fetching Flink {versions.FLINK} from PyPI (apache-flink wheels, outside the project venv)")
    tmp = FLINK_DIST.with_name(FLINK_DIST.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp,
         f"apache-flink=={versions.FLINK}", f"apache-flink-libraries=={versions.FLINK}"], "flink")
    tmp.rename(FLINK_DIST)


# What Flink's Prometheus reporter leaves out (metrics.reporter.prom.filter.excludes; Flink's DefaultMetricFilter:
# `<scope>:<names>`, `*` any characters, full matches). Each scrape renders every series of every task: with the
# five pipelines running, 5,683 series and 4.5 MB per scrape, 42 % of them Beam's own per-transform and
# per-PCollection system metrics (`ref_PCollection_..._metric:element_count:v1`, `..._metric:pardo_execution_time:
# ...`), 12 % Flink's per-operator copies of the task's record/byte counts and watermarks, and most of the task
# level network-buffer, mailbox and checkpoint-alignment detail (22 % of the TaskManager's CPU samples were its
# Prometheus HTTP thread, 2026-12-07). Kept: the task metrics the rules and dashboards use (watermarks,
# busy/idle/back-pressured time, record rates), the sources' backlog, the JVM, and every Beam user metric
# (`iheardai:<step>:_<name>`, the iheardai_step_* series). The Flink dashboard reads metrics through the REST API,
# which this filter does not touch. The production session cluster (flink-deploy/base/flink-session.yaml) has
# the same list; tests/unit/test_deploy.py keeps them equal and checks the rules' and dashboards' metrics pass.
PROMETHEUS_EXCLUDES = (
    "*:*PCollection*,*AppliedPTransform*,*.metric*",  # Beam's system metrics (MonitoringInfos: `<id>.metric:<urn>`)
    "*.operator:numRecords*,numBytes*,current*Watermark",  # per-operator copies of the task's figures
    "*.task.buffers,*.task.Shuffle.*",  # network buffers and netty shuffle bytes
    "*.task:mailbox*,numBuffers*,numBytes*,accumulate*,soft*,hard*,max*BackPressureTimeMs,checkpoint*,"
    "changelog*,initializationTime",
)


def prometheus_filter_lines() -> list:
    """The reporter filter as config.yaml lines; DEVSTACK_FLINK_METRICS_FILTER=off reports everything (A/B)."""
    if os.environ.get("DEVSTACK_FLINK_METRICS_FILTER", "on") == "off":
        return []
    return ["metrics.reporter.prom.filter.excludes:", *[f"  - \"{f}\"" for f in PROMETHEUS_EXCLUDES]]


def _flink_conf() -> None:
    FLINK_CONF.mkdir(parents=True, exist_ok=True)
    for f in (FLINK_HOME / "conf").glob("log4j*.properties"):
        shutil.copy(f, FLINK_CONF / f.name)
    java_opts = ""
    for line in (FLINK_HOME / "conf" / "config.yaml").read_text().splitlines():
        if line.strip().startswith("all: --add"):
            java_opts = line.strip()[len("all: "):]
    slots = int(os.environ.get("DEVSTACK_FLINK_SLOTS", "8"))
    (FLINK_CONF / "config.yaml").write_text("\n".join([
        f"env.java.opts.all: {java_opts}",
        "jobmanager.bind-host: localhost",
        "jobmanager.rpc.address: localhost",
        f"jobmanager.rpc.port: {PORTS['flink-rpc']}",
        "jobmanager.memory.process.size: 1600m",
        # A failure restarts every task of the job, not just its region: Beam's Flink runner keeps one bundle
        # factory per job and TaskManager, with the job's SDK environments in it, for as long as any task of the
        # job holds it, and never checks a cached environment's connection. Under region failover a task whose
        # region did not fail (the leads job is one region per subtask) kept it alive, and every restart of the
        # failed one reused the SDK environment that the fault had broken: `CANCELLED: call already cancelled`
        # until the launcher gave up (fault matrix, leads x pool_kill x late). A full restart releases the factory,
        # and the restarted tasks start fresh environments. flink-deploy/base/flink-session.yaml has the same.
        "jobmanager.execution.failover-strategy: full",
        "taskmanager.bind-host: localhost",
        "taskmanager.host: localhost",
        f"taskmanager.numberOfTaskSlots: {slots}",
        "taskmanager.memory.process.size: 4096m",
        # The Beam runner's classes come from the beam-services jar on the cluster's classpath (HADOOP_CLASSPATH,
        # _flink_env), loaded once, not from each job's copy of it in a classloader of its own (+~50 MiB of
        # metaspace per job, kept after a cancel). Kafka IO's Java half runs outside, in a PROCESS environment.
        "classloader.resolve-order: parent-first",
        "taskmanager.memory.jvm-metaspace.size: 512m",
        # A job that keeps failing backs off instead of reloading classes in a tight loop.
        # A killed TaskManager (restart_taskmanager) is noticed in seconds, not the default 50 s.
        "heartbeat.interval: 3000",
        "heartbeat.timeout: 15000",
        "restart-strategy.type: exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff: 1 s",
        "restart-strategy.exponential-delay.max-backoff: 60 s",
        "parallelism.default: 1",
        "rest.address: localhost",
        "rest.bind-address: localhost",
        f"rest.port: {PORTS['flink']}",
        f"state.checkpoints.dir: file://{DATA / 'flink-checkpoints'}",
        f"state.savepoints.dir: file://{DATA / 'flink-savepoints'}",
        f"io.tmp.dirs: {DATA / 'flink-tmp'}",
        # Prometheus reporter (plugins/metrics-prometheus of the distribution): the JobManager takes the first
        # port of the range, the TaskManager the second (devstack.services.prometheus scrapes both).
        "metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        f"metrics.reporter.prom.port: {PORTS['flink-metrics-jobmanager']}-{PORTS['flink-metrics-taskmanager']}",
        *prometheus_filter_lines(),
        f"blob.storage.directory: {DATA / 'flink-blobs'}",
        "",
    ]))


def _flink_env() -> dict:
    # Flink's scripts put $HADOOP_CLASSPATH after lib/ (flink-dist first on the classpath, unlike a jar in lib/).
    return {"FLINK_HOME": str(FLINK_HOME), "FLINK_CONF_DIR": str(FLINK_CONF), "FLINK_LOG_DIR": str(LOGS / "flink"),
            "JAVA_HOME": os.environ.get("JAVA_HOME") or str(Path(os.path.realpath(java_bin())).parent.parent),
            "HADOOP_CLASSPATH": str(beam_services.beam_jar()), **beam_services.java_harness_env()}


def _install() -> None:
    flink_install()
    beam_services.java_harness_install()  # the TaskManager runs the Java harness and has the jar on its classpath


def flink_start() -> subprocess.Popen:
    _flink_conf()
    (LOGS / "flink").mkdir(parents=True, exist_ok=True)
    (DATA / "flink-tmp").mkdir(parents=True, exist_ok=True)
    jm = spawn("flink", ["bash", FLINK_HOME / "bin/jobmanager.sh", "start-foreground"], env=_flink_env())
    return jm


TM = "flink-taskmanager"


def _spawn_taskmanager() -> subprocess.Popen:
    """The TaskManager under devstack.supervise's restart loop: a TaskManager JVM killed with -9 is started
    again (backoff 1 s doubling to 30 s), as Kubernetes restarts a TaskManager pod; `run/flink-taskmanager.pid`
    is the JVM's."""
    # Its BLOB cache (every job's jar, ~190 MiB per job) in a directory of its own, emptied before each start: a
    # TaskManager killed with -9 never deletes its blobStore-* directory, and the fault matrix's kills had left 25 GiB
    # of them beside the JobManager's (which must stay) in flink-blobs.
    blobs = DATA / "flink-blobs-taskmanager"
    return spawn_supervised(TM, ["bash", "-c", 'rm -rf "$1" && mkdir -p "$1" && shift && exec "$@"', "taskmanager",
                                 str(blobs), "bash", str(FLINK_HOME / "bin/taskmanager.sh"), "start-foreground",
                                 "-D", f"blob.storage.directory={blobs}"], env=_flink_env())


def _taskmanager_ids() -> set:
    return {t["id"] for t in http_json(f"http://localhost:{PORTS['flink']}/taskmanagers")["taskmanagers"]}


def flink_after_start() -> None:
    tm = None
    if read_pid(supervisor_name(TM)) is None:
        stop_pid(TM)  # a TaskManager of a stack started before supervision: replace it by a supervised one
        tm = _spawn_taskmanager()
    wait_until(TM, lambda: http_json(f"http://localhost:{PORTS['flink']}/overview")["taskmanagers"] >= 1, 90, tm)


def kill_taskmanager() -> int:
    """SIGKILL the TaskManager JVM (its process group), as a crashed pod; its supervisor starts a new one.
    Returns the killed pid."""
    pid = read_pid(TM)
    if pid is None:
        raise RuntimeError("no TaskManager running")
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid


def restart_taskmanager(timeout_s: float = 90) -> None:
    """A fresh TaskManager: the EMBEDDED Java harness leaks Kafka producer threads and classes of cancelled
    jobs into the TaskManager JVM, so long test sessions recycle it (running jobs restart on the new one).
    The supervisor starts the new JVM; without one (a stack of an older checkout) a supervised one is started."""
    _flink_conf()  # the new TaskManager reads the current settings (e.g. DEVSTACK_FLINK_METRICS_FILTER)
    old = _taskmanager_ids()
    tm = None
    if read_pid(supervisor_name(TM)) is not None:
        if read_pid(TM) is not None:
            kill_taskmanager()
    else:
        if read_pid(TM) is not None:
            kill_taskmanager()
        tm = _spawn_taskmanager()
    # The JobManager notices the lost TaskManager after its heartbeat timeout; wait for the new one to register.
    wait_until(TM, lambda: bool(_taskmanager_ids() - old), timeout_s, tm)


def flink_healthy() -> bool:
    return "flink-version" in http_json(f"http://localhost:{PORTS['flink']}/overview")


SERVICE = Service("flink", PORTS["flink"], _install, flink_start, flink_healthy, 90, flink_after_start,
                  f"http://localhost:{PORTS['flink']} (dashboard + REST)", [supervisor_name(TM), TM])
