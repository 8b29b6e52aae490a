"""Beam's Kafka expansion service and Flink job server, both from one jar shaded from
devstack/maven/beam-services/pom.xml (built on first use, cached in $DEVSTACK_HOME/downloads).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from devstack import versions
from devstack.config import DATA, DOWNLOADS, PORTS, REPO
from devstack.process import java_bin, log, port_open, run, spawn
from devstack.services import Service


def _pom_digest() -> str:
    import hashlib

    return hashlib.sha256((REPO / "devstack/maven/beam-services/pom.xml").read_bytes()).hexdigest()[:10]


@functools.cache
def beam_jar() -> Path:
    """The cached jar. The pom's digest is in the name: a changed pom builds a new jar instead of reusing a
    stale cache. Computed on first use (once per process), not when the module is imported."""
    return DOWNLOADS / f"beam-services-{versions.BEAM}-flink-{versions.FLINK_MINOR}-{_pom_digest()}.jar"


def beam_jar_install() -> None:
    if beam_jar().exists():
        return
    log(f"assembling Beam {versions.BEAM} job server + Kafka expansion service from Maven Central (first run only)")
    pom = REPO / "devstack/maven/beam-services/pom.xml"
    run(["mvn", "-q", "-B", "-f", pom, f"-Dbeam.version={versions.BEAM}",
         f"-Dflink.minor={versions.FLINK_MINOR}", "package", "-DskipTests"], "beam-services")
    built = REPO / "devstack/maven/beam-services/target" / f"beam-services-{versions.BEAM}-flink-{versions.FLINK_MINOR}.jar"
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), beam_jar())
    shutil.rmtree(REPO / "devstack/maven/beam-services/target", ignore_errors=True)


def expansion_start() -> subprocess.Popen:
    # EMBEDDED: the Java part of ReadFromKafka runs in the Flink TaskManager JVM from the job jar (no Docker);
    # use_deprecated_read: the unbounded Kafka source is translated natively and checkpointed by Flink
    # (portable runners do not checkpoint SDF reads, apache/beam#20979).
    return spawn("expansion-service", [java_bin(), "-Xmx512m", "-cp", beam_jar(),
                                       "org.apache.beam.sdk.expansion.service.ExpansionService",
                                       PORTS["expansion-service"], "--defaultEnvironmentType=EMBEDDED",
                                       "--experiments=use_deprecated_read"])


def job_server_start() -> subprocess.Popen:
    artifacts = DATA / "beam-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    return spawn("job-server", [java_bin(), "-Xmx1g", "-jar", beam_jar(),
                                f"--flink-master=localhost:{PORTS['flink']}",
                                f"--job-port={PORTS['job-server']}", f"--artifact-port={PORTS['job-server-artifacts']}",
                                f"--expansion-port={PORTS['job-server-expansion']}", f"--artifacts-dir={artifacts}"])


EXPANSION_SERVICE = Service("expansion-service", PORTS["expansion-service"], beam_jar_install, expansion_start,
                            lambda: port_open(PORTS["expansion-service"]), 90, None,
                            f"localhost:{PORTS['expansion-service']} (Beam Java, Kafka IO)")
JOB_SERVER = Service("job-server", PORTS["job-server"], beam_jar_install, job_server_start,
                     lambda: port_open(PORTS["job-server"]), 90, None,
                     f"localhost:{PORTS['job-server']} (Beam Flink job server)")
