"""Beam's Kafka expansion service and Flink job server, both from one jar shaded from
devstack/maven/beam-services/pom.xml (built on first use, cached in $DEVSTACK_HOME/downloads), and the Java SDK
harness that runs the Java half of Kafka IO in a PROCESS environment (devstack/java_harness/beam-java-harness).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from devstack import versions
from devstack.config import DATA, DOWNLOADS, PORTS, REPO
from devstack.process import StackError, java_bin, log, port_open, run, spawn
from devstack.services import Service


def _pom_digest() -> str:
    """The pom and our Java sources (src/: the idle-aware Kafka read), so a changed source builds a new jar."""
    import hashlib

    root = REPO / "devstack/maven/beam-services"
    h = hashlib.sha256((root / "pom.xml").read_bytes())
    for f in sorted((root / "src").rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


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


JAVA_BOOT_MODULE = "github.com/apache/beam/sdks/v2/java/container"
HARNESS_COMMAND = REPO / "devstack" / "java_harness" / "beam-java-harness"
EXPANSION_CONFIG = REPO / "devstack" / "java_harness" / "expansion-service.yaml"


def java_boot() -> Path:
    """Beam's Java SDK harness boot program (the container contract's entry point), at the Beam version."""
    return DOWNLOADS / "bin" / f"beam-java-boot-{versions.BEAM}"


def empty_jar() -> Path:
    """What the expansion service stages as the Java environment's only artifact: the harness jar is on the
    harness's classpath already (devstack/java_harness/bin/java), so no job uploads and copies ~200 MB."""
    return DOWNLOADS / "beam-java-harness-empty.jar"


def java_harness_install() -> None:
    import os
    import tempfile
    import zipfile

    beam_jar_install()
    if not java_boot().exists():
        if not shutil.which("go"):
            raise StackError("expansion-service: the Go toolchain is needed to build Beam's Java harness boot program")
        log(f"building Beam {versions.BEAM}'s Java SDK harness boot program from the Go module proxy (first run only)")
        with tempfile.TemporaryDirectory() as gobin:
            run(["go", "install", f"{JAVA_BOOT_MODULE}@v{versions.BEAM}"], "expansion-service",
                env={**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0"})
            java_boot().parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(gobin) / "container"), java_boot())
    if not empty_jar().exists():
        tmp = empty_jar().with_suffix(".partial")
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        tmp.rename(empty_jar())


def java_harness_env() -> dict:
    """The TaskManager's environment for beam-java-harness (the PROCESS environment's command)."""
    return {"BEAM_JAVA_BOOT": str(java_boot()), "BEAM_JAVA_HARNESS_JAR": str(beam_jar()),
            "BEAM_JAVA_HARNESS_DIR": str(DATA / "java-harness"), "BEAM_JAVA_HARNESS_HEAP": "512m"}


def expansion_start() -> subprocess.Popen:
    import json

    # PROCESS: the Java part of ReadFromKafka/WriteToKafka runs in a Java SDK harness process that the TaskManager
    # starts per job and stops with it (EMBEDDED ran it inside the TaskManager JVM, which kept every cancelled
    # job's Kafka threads and classes until metaspace ran out).
    # use_deprecated_read: the unbounded Kafka source is translated natively and checkpointed by Flink
    # (portable runners do not checkpoint SDF reads, apache/beam#20979).
    return spawn("expansion-service", [java_bin(), "-Xmx512m", "-cp", beam_jar(),
                                       "org.apache.beam.sdk.expansion.service.ExpansionService",
                                       PORTS["expansion-service"], "--defaultEnvironmentType=PROCESS",
                                       "--defaultEnvironmentConfig=" + json.dumps({"command": str(HARNESS_COMMAND)}),
                                       f"--filesToStage={empty_jar()}",
                                       # as in production: the Kafka transforms stage no artifact at all
                                       f"--expansionServiceConfigFile={EXPANSION_CONFIG}",
                                       "--experiments=use_deprecated_read"])


def job_server_start() -> subprocess.Popen:
    artifacts = DATA / "beam-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    return spawn("job-server", [java_bin(), "-Xmx1g", "-jar", beam_jar(),
                                f"--flink-master=localhost:{PORTS['flink']}",
                                f"--job-port={PORTS['job-server']}", f"--artifact-port={PORTS['job-server-artifacts']}",
                                f"--expansion-port={PORTS['job-server-expansion']}", f"--artifacts-dir={artifacts}"])


EXPANSION_SERVICE = Service("expansion-service", PORTS["expansion-service"], java_harness_install, expansion_start,
                            lambda: port_open(PORTS["expansion-service"]), 90, None,
                            f"localhost:{PORTS['expansion-service']} (Beam Java, Kafka IO)")
JOB_SERVER = Service("job-server", PORTS["job-server"], beam_jar_install, job_server_start,
                     lambda: port_open(PORTS["job-server"]), 90, None,
                     f"localhost:{PORTS['job-server']} (Beam Flink job server)")
