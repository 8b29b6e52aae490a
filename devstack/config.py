"""Where the local stack lives and what it listens on: paths under $DEVSTACK_HOME, the port table and the
generated settings file ($DEVSTACK_HOME/devstack.env) that the pipelines and tests read.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("DEVSTACK_HOME", "/var/tmp/iheardai-devstack"))
DOWNLOADS = HOME / "downloads"
DATA = HOME / "data"
RUN = HOME / "run"
LOGS = HOME / "logs"
ENV_FILE = HOME / "devstack.env"
SECRETS = HOME / "secrets"  # generated key material and passwords, 0700 directory, 0600 files
FIELD_KEYS_FILE = SECRETS / "field-keys.json"

PORTS = {
    "postgres": 5432,
    "redis": 6379,
    "s3": 9000,
    "kafka": 9092,
    "kafka-controller": 9093,
    "flink": 8081,
    "flink-rpc": 6123,
    "worker-pool": 50000,
    "expansion-service": 8097,
    "job-server": 8099,
    "job-server-artifacts": 8098,
    "job-server-expansion": 8096,
    "flink-metrics-jobmanager": 9249,
    "flink-metrics-taskmanager": 9250,
    "prometheus": 9090,
    "alertmanager": 9094,
    "alertmanager-cluster": 9095,
    "postgres-exporter": 9187,
    "redis-exporter": 9121,
    "status": 8000,
    "collector": 8001,
}
# A second stack beside the first (another DEVSTACK_HOME, every port shifted), for trying a stack change while
# the first one runs; the tests and the pipelines' defaults assume the standard ports.
PORTS = {k: v + int(os.environ.get("DEVSTACK_PORT_OFFSET", "0")) for k, v in PORTS.items()}


TLS_DIR = HOME / "tls"  # the local CA and the servers' certificates (devstack/tls.py)
# The stack runs secured by default, the way production does (SASL_SSL Kafka with one principal per service and
# ACLs, Postgres and Redis over TLS with a role/user per service). `DEVSTACK_SECURITY=plaintext` before the first
# `up` gives the old plaintext, one-superuser stack for debugging; switching needs `./run stack down` and the
# Kafka data wiped (the stack does that itself when the profile of the data differs).
SECURITY = os.environ.get("DEVSTACK_SECURITY", "secured")
if SECURITY not in ("secured", "plaintext"):
    raise SystemExit(f"DEVSTACK_SECURITY must be secured or plaintext, not {SECURITY!r}")


def secured() -> bool:
    """The profile of the settings file once written (else of this process's DEVSTACK_SECURITY)."""
    return load_env_file().get("DEVSTACK_SECURITY", SECURITY) == "secured"


def load_env_file(path: Path = ENV_FILE) -> dict:
    env = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    return env


def ensure_env_file() -> dict:
    """Local credentials: generated once, kept in a 0600 file, never printed."""
    env = load_env_file()
    if env and env.get("DEVSTACK_SECURITY", "plaintext") != SECURITY:
        # another profile's settings: its identity keys would win over the new ones (settings precedence)
        for k in PROFILE_KEYS:
            env.pop(k, None)
        env["DEVSTACK_SECURITY"] = SECURITY
        _write_env(env)
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
        "IHEARDAI_FIELD_KEYS_FILE": str(FIELD_KEYS_FILE),  # the AES-256-GCM key ring (transforms/field_crypto.py)
        "FLINK_REST_URL": f"http://localhost:{PORTS['flink']}",
        "BEAM_JOB_ENDPOINT": f"localhost:{PORTS['job-server']}",
        "BEAM_EXPANSION_SERVICE": f"localhost:{PORTS['expansion-service']}",
        "BEAM_WORKER_POOL": f"localhost:{PORTS['worker-pool']}",
    }
    if SECURITY == "secured":
        for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
            wanted.pop(k)  # each service connects as its own principal (io_connectors/settings.py)
        ca = str(TLS_DIR / "ca.crt")
        wanted.update({
            "IHEARDAI_SECRETS_DIR": str(SECRETS),  # <system>/<principal>.password, 0600 (devstack/principals.py)
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SSL_CA_FILE": ca,
            "KAFKA_PRINCIPAL": "workload",  # the tests', demo's and tools' default identity
            "POSTGRES_SSLMODE": "verify-full", "POSTGRES_SSLROOTCERT": ca, "POSTGRES_PRINCIPAL": "admin",
            "REDIS_TLS": "true", "REDIS_TLS_CA_FILE": ca, "REDIS_PRINCIPAL": "admin",
        })
    wanted["DEVSTACK_SECURITY"] = SECURITY
    changed = False
    for k, v in wanted.items():
        if k not in env:
            env[k] = v
            changed = True
    if changed:
        _write_env(env)
    _ensure_secrets_dir()
    from transforms.field_crypto import ensure_ring_file

    ensure_ring_file(Path(env["IHEARDAI_FIELD_KEYS_FILE"]))  # created once; rotate with `field_crypto add-key`
    return env


# Settings that differ between the profiles (dropped from the file when the profile changes).
PROFILE_KEYS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_SSLMODE", "POSTGRES_SSLROOTCERT", "POSTGRES_PRINCIPAL",
                "REDIS_PASSWORD", "REDIS_TLS", "REDIS_TLS_CA_FILE", "REDIS_PRINCIPAL", "KAFKA_SECURITY_PROTOCOL",
                "KAFKA_SASL_MECHANISM", "KAFKA_SSL_CA_FILE", "KAFKA_PRINCIPAL", "IHEARDAI_SECRETS_DIR")


def _write_env(env: dict) -> None:
    HOME.mkdir(parents=True, exist_ok=True)
    ENV_FILE.write_text("# written by `python -m devstack up`; local credentials only\n"
                        + "".join(f"{k}={v}\n" for k, v in env.items()))
    os.chmod(ENV_FILE, 0o600)


def ensure_security() -> None:
    """The secured profile's key material: the CA and server certificates, one password per principal."""
    if not secured():
        return
    from devstack import principals, tls

    tls.ensure_tls(TLS_DIR)
    principals.ensure_passwords(HOME)


def _ensure_secrets_dir() -> Path:
    SECRETS.mkdir(parents=True, exist_ok=True)
    os.chmod(SECRETS, 0o700)
    return SECRETS
