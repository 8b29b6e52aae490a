"""The local stack: install (cached), start, health-check and stop real services, without Docker.

Every service is a real process started by this module and recorded in $DEVSTACK_HOME/run/<name>.pid;
`down` stops only those. `up` is idempotent: a service already healthy is left alone.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from devstack import versions

REPO = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("DEVSTACK_HOME", "/var/tmp/iheardai-devstack"))
DOWNLOADS = HOME / "downloads"
DATA = HOME / "data"
RUN = HOME / "run"
LOGS = HOME / "logs"
ENV_FILE = HOME / "devstack.env"

PORTS = {
    "postgres": 5432,
    "redis": 6379,
    "s3": 9000,
    "kafka": 9092,
    "kafka-controller": 9093,
    "flink": 8081,
    "worker-pool": 50000,
    "expansion-service": 8097,
    "job-server": 8099,
    "job-server-artifacts": 8098,
    "job-server-expansion": 8096,
}


class StackError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[devstack] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# Helpers


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (localhost only)
        return json.loads(r.read().decode())


def run(cmd: List[str], log_name: str, **kw) -> None:
    """Run an install step to completion, its output appended to a log; raise with the log's tail."""
    LOGS.mkdir(parents=True, exist_ok=True)
    logf = LOGS / f"{log_name}.log"
    with open(logf, "ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    if rc != 0:
        raise StackError(f"{log_name}: `{' '.join(map(str, cmd))}` exited {rc}\n{tail(logf)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()[-20000:].decode(errors="replace").splitlines()
        return "\n".join("    " + l for l in data[-lines:])
    except OSError:
        return "    (no log)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def read_pid(name: str) -> Optional[int]:
    try:
        pid = int((RUN / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def spawn(name: str, cmd: List[str], env: Optional[dict] = None, cwd: Optional[Path] = None) -> subprocess.Popen:
    """Start a long-running service detached in its own session; record its pid; log to logs/<name>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    logf = open(LOGS / f"{name}.log", "ab")
    logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(map(str, cmd))}\n".encode())
    logf.flush()
    proc = subprocess.Popen(
        [str(c) for c in cmd],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=str(cwd) if cwd else None,
        start_new_session=True,
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    return proc


def wait_until(name: str, check: Callable[[], bool], timeout_s: float, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{name} exited with code {proc.returncode} while starting\n{tail(LOGS / f'{name}.log')}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a health probe that raises is simply not healthy yet
            pass
        time.sleep(0.5)
    raise StackError(f"{name} not healthy after {timeout_s:.0f}s\n{tail(LOGS / f'{name}.log')}")


def load_env_file() -> dict:
    env = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


def ensure_env_file() -> dict:
    """Local credentials: generated once, kept in a 0600 file, never printed."""
    env = load_env_file()
    wanted = {
        "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{PORTS['kafka']}",
        "POSTGRES_HOST": "localhost",
        "POSTGRES_PORT": str(PORTS["postgres"]),
        "POSTGRES_DB": "iheardai",
        "POSTGRES_USER": "iheardai",
        "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
        "POSTGRES_SSLMODE": "disable",
        "REDIS_HOST": "localhost",
        "REDIS_PORT": str(PORTS["redis"]),
        "REDIS_PASSWORD": secrets.token_urlsafe(18),
        "SPACES_ENDPOINT": f"http://localhost:{PORTS['s3']}",
        "SPACES_REGION": "us-east-1",
        "SPACES_BUCKET": "iheardai-archive",
        "SPACES_ACCESS_KEY": "dev" + secrets.token_hex(8),
        "SPACES_SECRET_KEY": secrets.token_urlsafe(24),
        "PII_HMAC_KEY": secrets.token_hex(32),
        "FLINK_REST_URL": f"http://localhost:{PORTS['flink']}",
        "BEAM_JOB_ENDPOINT": f"localhost:{PORTS['job-server']}",
        "BEAM_EXPANSION_SERVICE": f"localhost:{PORTS['expansion-service']}",
        "BEAM_WORKER_POOL": f"localhost:{PORTS['worker-pool']}",
    }
    changed = False
    for k, v in wanted.items():
        if k not in env:
            env[k] = v
            changed = True
    if changed:
        HOME.mkdir(parents=True, exist_ok=True)
        ENV_FILE.write_text("# written by `python -m devstack up`; local credentials only\n"
                            + "".join(f"{k}={v}\n" for k, v in env.items()))
        os.chmod(ENV_FILE, 0o600)
    return env


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(*packages: str) -> None:
    if not is_root():
        raise StackError(f"missing Debian packages {packages}: install them with apt-get (needs root)")
    run(["apt-get", "update", "-qq"], "apt")
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], "apt",
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    j = shutil.which("java")
    if not j:
        raise StackError("java not found: Java 17 is required")
    return j


# ---------------------------------------------------------------------------------------------------
# Services


@dataclass
class Service:
    name: str
    port: int
    install: Callable[[], None]
    start: Callable[[], subprocess.Popen]
    healthy: Callable[[], bool]
    timeout_s: float = 90
    after_start: Optional[Callable[[], None]] = None
    address: str = ""
    extra_pids: List[str] = field(default_factory=list)


# Postgres ---------------------------------------------------------------------------------------------

def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent


def _as_pg_user(cmd: List) -> List[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if is_root() else list(map(str, cmd))


PGDATA = DATA / "pg"


def pg_install() -> None:
    bindir = _pg_bin()
    if (PGDATA / "PG_VERSION").exists():
        return
    PGDATA.mkdir(parents=True, exist_ok=True)
    if is_root():
        for p in (HOME, DATA):
            os.chmod(p, 0o755)
        shutil.chown(PGDATA, "postgres", "postgres")
    os.chmod(PGDATA, 0o700)
    pw = PGDATA.parent / ".pg-superuser-pw"
    pw.write_text(secrets.token_urlsafe(24))
    if is_root():
        shutil.chown(pw, "postgres", "postgres")
    try:
        run(_as_pg_user([bindir / "initdb", "-D", PGDATA, "-U", "postgres", f"--pwfile={pw}",
                         "--auth-local=peer" if is_root() else "--auth-local=trust",
                         "--auth-host=scram-sha-256", "-E", "UTF8"]), "postgres")
    finally:
        pw.unlink(missing_ok=True)


def pg_start() -> subprocess.Popen:
    bindir = _pg_bin()
    return spawn("postgres", _as_pg_user([
        bindir / "postgres", "-D", PGDATA, "-p", PORTS["postgres"], "-k", PGDATA,
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=200",
        "-c", "shared_buffers=256MB"]))


def _psql(sql: str, db: str = "postgres") -> str:
    bindir = _pg_bin()
    user_args = [] if is_root() else ["-U", "postgres"]
    out = subprocess.run(_as_pg_user([bindir / "psql", "-h", PGDATA, "-p", PORTS["postgres"], *user_args,
                                      "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise StackError(f"postgres: psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def pg_healthy() -> bool:
    bindir = _pg_bin()
    return port_open(PORTS["postgres"]) and subprocess.call(
        [bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(PORTS["postgres"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def pg_after_start() -> None:
    env = ensure_env_file()
    user, db, pw = env["POSTGRES_USER"], env["POSTGRES_DB"], env["POSTGRES_PASSWORD"]
    if _psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'") != "1":
        _psql(f"CREATE ROLE {user} LOGIN")
    # The password is set from the env file on every start (kept in sync, never echoed).
    pw_sql = pw.replace("'", "''")
    _psql(f"ALTER ROLE {user} WITH LOGIN PASSWORD '{pw_sql}'")
    if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") != "1":
        _psql(f"CREATE DATABASE {db} OWNER {user}")


# Redis ------------------------------------------------------------------------------------------------

def redis_install() -> None:
    if not shutil.which("redis-server"):
        apt_install("redis-server")


def redis_start() -> subprocess.Popen:
    env = ensure_env_file()
    d = DATA / "redis"
    d.mkdir(parents=True, exist_ok=True)
    conf = RUN / "redis.conf"
    RUN.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"port {PORTS['redis']}\nbind 127.0.0.1\ndir {d}\nappendonly yes\nsave \"\"\n"
        f"requirepass {env['REDIS_PASSWORD']}\nprotected-mode yes\n")
    os.chmod(conf, 0o600)
    return spawn("redis", ["redis-server", conf])


def redis_healthy() -> bool:
    env = load_env_file()
    with socket.create_connection(("127.0.0.1", PORTS["redis"]), timeout=1) as s:
        pw = env.get("REDIS_PASSWORD", "")
        s.sendall(f"AUTH {pw}\r\nPING\r\n".encode() if pw else b"PING\r\n")
        time.sleep(0.05)
        return b"+PONG" in s.recv(100)


# S3 (versitygw, Apache-2.0, POSIX backend) ------------------------------------------------------------

S3_BIN = DOWNLOADS / "bin" / "versitygw"


def s3_install() -> None:
    if S3_BIN.exists():
        return
    if not shutil.which("go"):
        raise StackError("s3: the Go toolchain is needed to build versitygw from the Go module proxy")
    S3_BIN.parent.mkdir(parents=True, exist_ok=True)
    log(f"building versitygw {versions.VERSITYGW} from the Go module proxy (first run only)")
    run(["go", "install", f"github.com/versity/versitygw/cmd/versitygw@{versions.VERSITYGW}"], "s3",
        env={**os.environ, "GOBIN": str(S3_BIN.parent), "CGO_ENABLED": "0"})


def s3_start() -> subprocess.Popen:
    env = ensure_env_file()
    root = DATA / "s3"
    root.mkdir(parents=True, exist_ok=True)
    return spawn("s3", [S3_BIN, "--port", f"127.0.0.1:{PORTS['s3']}", "posix", root],
                 env={"ROOT_ACCESS_KEY": env["SPACES_ACCESS_KEY"], "ROOT_SECRET_KEY": env["SPACES_SECRET_KEY"]})


def s3_healthy() -> bool:
    if not port_open(PORTS["s3"]):
        return False
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{PORTS['s3']}/", timeout=2)
    except urllib.error.HTTPError:
        return True  # 403 to an unsigned request: the server answers
    return True


def s3_after_start() -> None:
    import boto3  # in the project venv

    env = load_env_file()
    s3 = boto3.client("s3", endpoint_url=env["SPACES_ENDPOINT"], region_name=env["SPACES_REGION"],
                      aws_access_key_id=env["SPACES_ACCESS_KEY"], aws_secret_access_key=env["SPACES_SECRET_KEY"])
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if env["SPACES_BUCKET"] not in names:
        s3.create_bucket(Bucket=env["SPACES_BUCKET"])


# Kafka (KRaft, single node) ---------------------------------------------------------------------------

KAFKA_LIB = DOWNLOADS / f"kafka-{versions.KAFKA}" / "lib"


def kafka_install() -> None:
    if KAFKA_LIB.exists() and any(KAFKA_LIB.glob("kafka_2.13-*.jar")):
        return
    log(f"fetching Kafka {versions.KAFKA} from Maven Central (first run only)")
    tmp = KAFKA_LIB.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run(["mvn", "-q", "-B", "-f", REPO / "devstack/maven/kafka/pom.xml", f"-Dkafka.version={versions.KAFKA}",
         "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"], "kafka")
    tmp.rename(KAFKA_LIB)


def _kafka_conf() -> Path:
    data = DATA / "kafka"
    conf = RUN / "kafka-server.properties"
    RUN.mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@localhost:{PORTS['kafka-controller']}",
        f"listeners=PLAINTEXT://localhost:{PORTS['kafka']},CONTROLLER://localhost:{PORTS['kafka-controller']}",
        f"advertised.listeners=PLAINTEXT://localhost:{PORTS['kafka']}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data}",
        "num.partitions=3",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "",
    ]))
    log4j = RUN / "kafka-log4j2.properties"
    log4j.write_text("rootLogger.level=INFO\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
                     "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
                     "appender.stdout.layout.type=PatternLayout\n"
                     "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
                     "logger.kafka.name=kafka\nlogger.kafka.level=WARN\n"
                     "logger.apache.name=org.apache.kafka\nlogger.apache.level=WARN\n")
    return conf


def _kafka_java(main: str, *args) -> List[str]:
    return [java_bin(), "-Xmx768m", "-Xms256m", f"-Dlog4j2.configurationFile={RUN / 'kafka-log4j2.properties'}",
            "-cp", f"{KAFKA_LIB}/*", main, *map(str, args)]


def kafka_start() -> subprocess.Popen:
    conf = _kafka_conf()
    data = DATA / "kafka"
    if not (data / "meta.properties").exists():
        data.mkdir(parents=True, exist_ok=True)
        cluster_id = subprocess.run(_kafka_java("kafka.tools.StorageTool", "random-uuid"),
                                    capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        run(_kafka_java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", conf, "--ignore-formatted"),
            "kafka")
    return spawn("kafka", _kafka_java("kafka.Kafka", conf))


def kafka_healthy() -> bool:
    if not port_open(PORTS["kafka"]):
        return False
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": f"localhost:{PORTS['kafka']}"}).list_topics(timeout=3)
    return len(md.brokers) >= 1


def kafka_after_start() -> None:
    sys.path.insert(0, str(REPO))
    from confluent_kafka.admin import AdminClient, NewTopic
    from events.topics import all_topics

    admin = AdminClient({"bootstrap.servers": f"localhost:{PORTS['kafka']}"})
    existing = set(admin.list_topics(timeout=10).topics)
    new = [NewTopic(t.name, t.partitions, 1, config={"retention.ms": str(t.retention_ms),
                                                      "cleanup.policy": t.cleanup_policy})
           for t in all_topics() if t.name not in existing]
    if new:
        for name, fut in admin.create_topics(new).items():
            try:
                fut.result(30)
            except Exception as e:  # noqa: BLE001
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise StackError(f"kafka: creating topic {name} failed: {e}") from e
        log(f"created {len(new)} Kafka topics")


# Flink standalone cluster -----------------------------------------------------------------------------

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
        "jobmanager.rpc.port: 6123",
        "jobmanager.memory.process.size: 1600m",
        "jobmanager.execution.failover-strategy: region",
        "taskmanager.bind-host: localhost",
        "taskmanager.host: localhost",
        f"taskmanager.numberOfTaskSlots: {slots}",
        "taskmanager.memory.process.size: 4096m",
        # Every Beam job loads the ~200 MB job jar (EMBEDDED Java harness) in its own classloader.
        "taskmanager.memory.jvm-metaspace.size: 1024m",
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
        f"blob.storage.directory: {DATA / 'flink-blobs'}",
        "",
    ]))


def _flink_env() -> dict:
    return {"FLINK_HOME": str(FLINK_HOME), "FLINK_CONF_DIR": str(FLINK_CONF), "FLINK_LOG_DIR": str(LOGS / "flink"),
            "JAVA_HOME": os.environ.get("JAVA_HOME") or str(Path(os.path.realpath(java_bin())).parent.parent)}


def flink_start() -> subprocess.Popen:
    _flink_conf()
    (LOGS / "flink").mkdir(parents=True, exist_ok=True)
    (DATA / "flink-tmp").mkdir(parents=True, exist_ok=True)
    jm = spawn("flink", ["bash", FLINK_HOME / "bin/jobmanager.sh", "start-foreground"], env=_flink_env())
    return jm


def flink_after_start() -> None:
    if read_pid("flink-taskmanager") is None:
        tm = spawn("flink-taskmanager", ["bash", FLINK_HOME / "bin/taskmanager.sh", "start-foreground"],
                   env=_flink_env())
    else:
        tm = None
    wait_until("flink-taskmanager",
               lambda: http_json(f"http://localhost:{PORTS['flink']}/overview")["taskmanagers"] >= 1, 90, tm)


def restart_taskmanager(timeout_s: float = 90) -> None:
    """A fresh TaskManager: the EMBEDDED Java harness leaks Kafka producer threads and classes of cancelled
    jobs into the TaskManager JVM, so long test sessions recycle it (running jobs restart on the new one)."""
    pid = read_pid("flink-taskmanager")
    if pid is not None:
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # The JobManager notices the lost TaskManager after its heartbeat timeout; wait for the new one to register.
    old = {t["id"] for t in http_json(f"http://localhost:{PORTS['flink']}/taskmanagers")["taskmanagers"]}
    tm = spawn("flink-taskmanager", ["bash", FLINK_HOME / "bin/taskmanager.sh", "start-foreground"], env=_flink_env())
    wait_until("flink-taskmanager", lambda: any(
        t["id"] not in old for t in http_json(f"http://localhost:{PORTS['flink']}/taskmanagers")["taskmanagers"]),
        timeout_s, tm)


def flink_healthy() -> bool:
    return "flink-version" in http_json(f"http://localhost:{PORTS['flink']}/overview")


# Beam: Python worker pool, Kafka expansion service, Flink job server ------------------------------------

def _pom_digest() -> str:
    import hashlib

    return hashlib.sha256((REPO / "devstack/maven/beam-services/pom.xml").read_bytes()).hexdigest()[:10]


# The pom's digest is in the name: a changed pom builds a new jar instead of reusing a stale cache.
BEAM_JAR = DOWNLOADS / f"beam-services-{versions.BEAM}-flink-{versions.FLINK_MINOR}-{_pom_digest()}.jar"


def beam_jar_install() -> None:
    if BEAM_JAR.exists():
        return
    log(f"assembling Beam {versions.BEAM} job server + Kafka expansion service from Maven Central (first run only)")
    pom = REPO / "devstack/maven/beam-services/pom.xml"
    run(["mvn", "-q", "-B", "-f", pom, f"-Dbeam.version={versions.BEAM}",
         f"-Dflink.minor={versions.FLINK_MINOR}", "package", "-DskipTests"], "beam-services")
    built = REPO / "devstack/maven/beam-services/target" / f"beam-services-{versions.BEAM}-flink-{versions.FLINK_MINOR}.jar"
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), BEAM_JAR)
    shutil.rmtree(REPO / "devstack/maven/beam-services/target", ignore_errors=True)


def worker_pool_start() -> subprocess.Popen:
    return spawn("worker-pool", [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                 f"--service_port={PORTS['worker-pool']}"], cwd=REPO,
                 # the pool starts workers as `python ...`: the venv's interpreter must come first on PATH
                 # the workers get the same settings a production pod gets from its Secrets/ConfigMaps
                 env={**load_env_file(), "PYTHONPATH": str(REPO),
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})


def expansion_start() -> subprocess.Popen:
    # EMBEDDED: the Java part of ReadFromKafka runs in the Flink TaskManager JVM from the job jar (no Docker);
    # use_deprecated_read: the unbounded Kafka source is translated natively and checkpointed by Flink
    # (portable runners do not checkpoint SDF reads, apache/beam#20979).
    return spawn("expansion-service", [java_bin(), "-Xmx512m", "-cp", BEAM_JAR,
                                       "org.apache.beam.sdk.expansion.service.ExpansionService",
                                       PORTS["expansion-service"], "--defaultEnvironmentType=EMBEDDED",
                                       "--experiments=use_deprecated_read"])


def job_server_start() -> subprocess.Popen:
    artifacts = DATA / "beam-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    return spawn("job-server", [java_bin(), "-Xmx1g", "-jar", BEAM_JAR,
                                f"--flink-master=localhost:{PORTS['flink']}",
                                f"--job-port={PORTS['job-server']}", f"--artifact-port={PORTS['job-server-artifacts']}",
                                f"--expansion-port={PORTS['job-server-expansion']}", f"--artifacts-dir={artifacts}"])


def _noop() -> None:
    pass


SERVICES: List[Service] = [
    Service("postgres", PORTS["postgres"], pg_install, pg_start, pg_healthy, 60, pg_after_start,
            f"postgresql://localhost:{PORTS['postgres']}/iheardai"),
    Service("redis", PORTS["redis"], redis_install, redis_start, redis_healthy, 30, None,
            f"redis://localhost:{PORTS['redis']}"),
    Service("s3", PORTS["s3"], s3_install, s3_start, s3_healthy, 30, s3_after_start,
            f"http://localhost:{PORTS['s3']} (S3 API, versitygw)"),
    Service("kafka", PORTS["kafka"], kafka_install, kafka_start, kafka_healthy, 90, kafka_after_start,
            f"localhost:{PORTS['kafka']}"),
    Service("flink", PORTS["flink"], flink_install, flink_start, flink_healthy, 90, flink_after_start,
            f"http://localhost:{PORTS['flink']} (dashboard + REST)", ["flink-taskmanager"]),
    Service("worker-pool", PORTS["worker-pool"], _noop, worker_pool_start,
            lambda: port_open(PORTS["worker-pool"]), 60, None, f"localhost:{PORTS['worker-pool']} (Beam Python SDK)"),
    Service("expansion-service", PORTS["expansion-service"], beam_jar_install, expansion_start,
            lambda: port_open(PORTS["expansion-service"]), 90, None,
            f"localhost:{PORTS['expansion-service']} (Beam Java, Kafka IO)"),
    Service("job-server", PORTS["job-server"], beam_jar_install, job_server_start,
            lambda: port_open(PORTS["job-server"]), 90, None, f"localhost:{PORTS['job-server']} (Beam Flink job server)"),
]


def _healthy(svc: Service) -> bool:
    try:
        return bool(svc.healthy())
    except Exception:  # noqa: BLE001
        return False


def up(names: Optional[List[str]] = None) -> int:
    t0 = time.monotonic()
    for d in (DOWNLOADS, DATA, RUN, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    ensure_env_file()
    for svc in SERVICES:
        if names and svc.name not in names:
            continue
        try:
            if _healthy(svc):
                if svc.after_start:
                    svc.after_start()
                log(f"{svc.name:18} already up  {svc.address}")
                continue
            if port_open(svc.port):
                raise StackError(f"{svc.name}: port {svc.port} is taken by a process this stack did not start")
            t = time.monotonic()
            svc.install()
            proc = svc.start()
            wait_until(svc.name, lambda: _healthy(svc), svc.timeout_s, proc)
            if svc.after_start:
                svc.after_start()
            log(f"{svc.name:18} up in {time.monotonic() - t:5.1f}s  {svc.address}")
        except StackError as e:
            log(f"FAILED to start {svc.name}: {e}")
            log(f"logs: {LOGS}")
            return 1
    log(f"stack up in {time.monotonic() - t0:.1f}s; logs in {LOGS}; settings in {ENV_FILE}")
    return 0


def status() -> int:
    bad = 0
    for svc in SERVICES:
        ok = _healthy(svc)
        pid = read_pid(svc.name)
        bad += not ok
        print(f"{svc.name:18} {'UP  ' if ok else 'DOWN'} pid={pid or '-':<8} {svc.address}")
    print(f"logs: {LOGS}")
    return 1 if bad else 0


def down() -> int:
    names = [n for svc in reversed(SERVICES) for n in (*svc.extra_pids, svc.name)]
    for name in names:
        pid = read_pid(name)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 20
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        (RUN / f"{name}.pid").unlink(missing_ok=True)
        log(f"stopped {name}")
    return 0


def main(argv: List[str]) -> int:
    cmd = argv[0] if argv else "status"
    if cmd == "up":
        return up(argv[1:] or None)
    if cmd == "status":
        return status()
    if cmd == "down":
        return down()
    if cmd == "env":
        # Names only: values are credentials.
        print("\n".join(f"{k}=<set>" for k in load_env_file()))
        return 0
    if cmd == "restart-taskmanager":
        restart_taskmanager()
        return 0
    if cmd == "logs":
        print(LOGS)
        return 0
    print("usage: python -m devstack up [service...] | status | down | env | logs", file=sys.stderr)
    return 2
