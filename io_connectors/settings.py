"""Connection settings from the environment, with the local stack's values as defaults.

Precedence: process environment > the local stack's settings file ($DEVSTACK_HOME/devstack.env, written by
`python -m devstack up`, mode 0600) > built-in local defaults. Secrets are never flags and never logged:
`redacted()` is what may be printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Dict, Optional

_DEVSTACK_ENV = Path(os.environ.get("DEVSTACK_HOME", "/var/tmp/iheardai-devstack")) / "devstack.env"
_SECRET_WORDS = ("PASSWORD", "SECRET", "KEY")


def _file_env() -> Dict[str, str]:
    env: Dict[str, str] = {}
    try:
        for line in _DEVSTACK_ENV.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip()
    except OSError:
        pass
    return env


def get(name: str, default: Optional[str] = None) -> Optional[str]:
    if name in os.environ:
        return os.environ[name]
    file_value = _file_env().get(name)
    return file_value if file_value is not None else default


def environment() -> Dict[str, str]:
    """Every setting this process sees: the environment over the local stack's settings file."""
    return {**_file_env(), **os.environ}


def _secret_file(name: str) -> Optional[str]:
    """`<NAME>_FILE` points at a file holding the secret (Kubernetes secret volumes)."""
    path = get(f"{name}_FILE")
    return Path(path).read_text().strip() if path else None


@dataclass(frozen=True)
class _Settings:
    def redacted(self) -> Dict[str, str]:
        return {f.name: ("***" if any(w in f.name.upper() for w in _SECRET_WORDS) and getattr(self, f.name)
                         else str(getattr(self, f.name))) for f in fields(self)}

    def __repr__(self) -> str:  # never print secrets by accident
        return f"{type(self).__name__}({self.redacted()})"


@dataclass(frozen=True, repr=False)
class PostgresSettings(_Settings):
    host: str
    port: int
    dbname: str
    user: str
    password: str
    sslmode: str

    @classmethod
    def from_env(cls) -> "PostgresSettings":
        return cls(get("POSTGRES_HOST", "localhost"), int(get("POSTGRES_PORT", "5432")),
                   get("POSTGRES_DB", "iheardai"), get("POSTGRES_USER", "iheardai"),
                   _secret_file("POSTGRES_PASSWORD") or get("POSTGRES_PASSWORD", ""),
                   get("POSTGRES_SSLMODE", "prefer"))

    def connect_kwargs(self) -> Dict[str, object]:
        return dict(host=self.host, port=self.port, dbname=self.dbname, user=self.user, password=self.password,
                    sslmode=self.sslmode, connect_timeout=10, application_name="iheardai-pipelines")


@dataclass(frozen=True, repr=False)
class RedisSettings(_Settings):
    host: str
    port: int
    password: str
    username: str
    tls: bool
    db: int

    @classmethod
    def from_env(cls) -> "RedisSettings":
        return cls(get("REDIS_HOST", "localhost"), int(get("REDIS_PORT", "6379")),
                   _secret_file("REDIS_PASSWORD") or get("REDIS_PASSWORD", ""), get("REDIS_USERNAME", ""),
                   get("REDIS_TLS", "false").lower() in ("1", "true", "yes"), int(get("REDIS_DB", "0")))


@dataclass(frozen=True, repr=False)
class SpacesSettings(_Settings):
    endpoint: str
    region: str
    bucket: str
    access_key: str
    secret_key: str

    @classmethod
    def from_env(cls) -> "SpacesSettings":
        return cls(get("SPACES_ENDPOINT", "http://localhost:9000"), get("SPACES_REGION", "us-east-1"),
                   get("SPACES_BUCKET", "iheardai-archive"),
                   _secret_file("SPACES_ACCESS_KEY") or get("SPACES_ACCESS_KEY", ""),
                   _secret_file("SPACES_SECRET_KEY") or get("SPACES_SECRET_KEY", ""))


@dataclass(frozen=True, repr=False)
class KafkaSettings(_Settings):
    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str
    ssl_ca_file: str = ""  # PEM CA bundle of the brokers (DigitalOcean Managed Kafka's CA certificate)

    @classmethod
    def from_env(cls) -> "KafkaSettings":
        return cls(get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"), get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
                   get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"), get("KAFKA_USER", ""),
                   _secret_file("KAFKA_PASSWORD") or get("KAFKA_PASSWORD", ""), get("KAFKA_SSL_CA_FILE", ""))

    def client_config(self) -> Dict[str, str]:
        """Java-client style config (ReadFromKafka/WriteToKafka); librdkafka accepts the same keys."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.sasl_username:
            conf["sasl.mechanism"] = self.sasl_mechanism
            module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if self.sasl_mechanism == "PLAIN"
                      else "org.apache.kafka.common.security.scram.ScramLoginModule")
            user = self.sasl_username.replace('"', '\\"')
            pw = self.sasl_password.replace('"', '\\"')
            conf["sasl.jaas.config"] = f'{module} required username="{user}" password="{pw}";'
        if self.ssl_ca_file:
            conf.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": self.ssl_ca_file})
        return conf

    def librdkafka_config(self) -> Dict[str, str]:
        conf = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol
        if self.sasl_username:
            conf.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password})
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = self.ssl_ca_file
        return conf
