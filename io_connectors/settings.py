"""Connection settings from the environment, with the local stack's values as defaults.

Precedence: process environment > the local stack's settings file ($DEVSTACK_HOME/devstack.env, written by
`python -m devstack up`, mode 0600) > built-in local defaults. Secrets are never flags and never logged:
`redacted()` is what may be printed.

Who connects (one principal per service, devstack/principals.py):
- production: the pod's environment names its identity (`KAFKA_USER`, `POSTGRES_USER`, `REDIS_USERNAME`) and
  its password (`*_PASSWORD_FILE` from the service's Secret);
- the local secured stack: no user is set; a principal name picks the password file that the stack generated,
  `$IHEARDAI_SECRETS_DIR/<kafka|postgres|redis>/<principal>.password`. The name is the one given to
  `from_env(principal)`, else the one this process runs as (`use_principal`, which `run_pipeline` sets to
  `pipeline-<name>`), else the settings file's default (`KAFKA_PRINCIPAL=workload`, `POSTGRES_PRINCIPAL=admin`,
  `REDIS_PRINCIPAL=admin`: the tests', tools' and demo's identity).
- `Settings.deferred()` is what a sink keeps in the job graph: the principal's name, resolved to settings in the
  worker that uses them, so no password is pickled into the graph.
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


_PROCESS_PRINCIPAL: Optional[str] = None


def use_principal(name: Optional[str]) -> None:
    """The identity this process connects as by default on the local secured stack (a pipeline's launcher:
    `pipeline-<name>`); sinks built afterwards carry it into the job graph by name (`deferred()`)."""
    global _PROCESS_PRINCIPAL
    _PROCESS_PRINCIPAL = name


def current_principal() -> Optional[str]:
    return _PROCESS_PRINCIPAL


def principal_password(system: str, name: str) -> Optional[str]:
    """The local stack's generated password of principal `name` on `system`, or None off the local stack."""
    directory = get("IHEARDAI_SECRETS_DIR")
    if not directory:
        return None
    path = Path(directory) / system / f"{name}.password"
    try:
        return path.read_text().strip()
    except OSError as e:
        raise RuntimeError(f"no {system} password for principal {name!r} ({path}): is it a principal of "
                           f"devstack/principals.py that uses {system}? `python -m devstack up` writes them") from e


def _identity(system: str, user_setting: str, principal: Optional[str], user_of=lambda n: n):
    """(user, password) for `system`: the configured user and password, or a local principal's."""
    user = get(user_setting, "")
    password_setting = user_setting.replace("_USERNAME", "_PASSWORD").replace("_USER", "_PASSWORD")
    if user or get(password_setting) or get(f"{password_setting}_FILE"):
        return user, None  # configured explicitly (a pod, or a process given its credentials): that wins
    name = principal or _PROCESS_PRINCIPAL or get(f"{system.upper()}_PRINCIPAL")
    if name and get("IHEARDAI_SECRETS_DIR"):
        return user_of(name), principal_password(system, name)
    return "", None


def pg_role(principal: str) -> str:
    """A principal's Postgres role (devstack.principals.Principal.pg_role)."""
    return "iheardai_" + principal.replace("-", "_")


class Deferred:
    """Settings of a principal resolved where they are used: pickles as (class, principal name), never as a
    password, so a sink's settings in the job graph hold no secret. Attribute access resolves once."""

    def __init__(self, cls, principal: Optional[str]):
        self.__dict__.update(_cls=cls, _principal=principal, _resolved=None)

    def resolve(self):
        if self.__dict__["_resolved"] is None:
            self.__dict__["_resolved"] = self.__dict__["_cls"].from_env(self.__dict__["_principal"])
        return self.__dict__["_resolved"]

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __getstate__(self):
        return {"cls": self.__dict__["_cls"], "principal": self.__dict__["_principal"]}

    def __setstate__(self, state):
        self.__dict__.update(_cls=state["cls"], _principal=state["principal"], _resolved=None)

    def __repr__(self) -> str:
        return f"Deferred({self.__dict__['_cls'].__name__}, principal={self.__dict__['_principal']!r})"


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

    @classmethod
    def deferred(cls, principal: Optional[str] = None) -> "Deferred":
        """These settings for `principal` (default: the process's, see `use_principal`), resolved on use."""
        return Deferred(cls, principal or _PROCESS_PRINCIPAL)


@dataclass(frozen=True, repr=False)
class PostgresSettings(_Settings):
    host: str
    port: int
    dbname: str
    user: str
    password: str
    sslmode: str
    sslrootcert: str = ""  # the CA that signs the server's certificate (sslmode=verify-full)

    @classmethod
    def from_env(cls, principal: Optional[str] = None) -> "PostgresSettings":
        user, password = _identity("postgres", "POSTGRES_USER", principal, pg_role)
        if password is None:
            password = _secret_file("POSTGRES_PASSWORD") or get("POSTGRES_PASSWORD", "")
        return cls(get("POSTGRES_HOST", "localhost"), int(get("POSTGRES_PORT", "5432")),
                   get("POSTGRES_DB", "iheardai"), user or "iheardai", password,
                   get("POSTGRES_SSLMODE", "prefer"), get("POSTGRES_SSLROOTCERT", ""))

    def connect_kwargs(self) -> Dict[str, object]:
        kwargs = dict(host=self.host, port=self.port, dbname=self.dbname, user=self.user, password=self.password,
                      sslmode=self.sslmode, connect_timeout=10, application_name="iheardai-pipelines")
        if self.sslrootcert:
            kwargs["sslrootcert"] = self.sslrootcert
        return kwargs

    def dsn(self) -> str:
        """A libpq URL (for tools that take one, e.g. the Postgres exporter's DATA_SOURCE_NAME)."""
        from urllib.parse import quote

        query = f"sslmode={self.sslmode}" + (f"&sslrootcert={quote(self.sslrootcert)}" if self.sslrootcert else "")
        return (f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/"
                f"{self.dbname}?{query}")


@dataclass(frozen=True, repr=False)
class RedisSettings(_Settings):
    host: str
    port: int
    password: str
    username: str
    tls: bool
    db: int

    @classmethod
    def from_env(cls, principal: Optional[str] = None) -> "RedisSettings":
        user, password = _identity("redis", "REDIS_USERNAME", principal)
        if password is None:
            password = _secret_file("REDIS_PASSWORD") or get("REDIS_PASSWORD", "")
        return cls(get("REDIS_HOST", "localhost"), int(get("REDIS_PORT", "6379")), password, user,
                   get("REDIS_TLS", "false").lower() in ("1", "true", "yes"), int(get("REDIS_DB", "0")))


@dataclass(frozen=True, repr=False)
class SpacesSettings(_Settings):
    endpoint: str
    region: str
    bucket: str
    access_key: str
    secret_key: str

    @classmethod
    def from_env(cls, principal: Optional[str] = None) -> "SpacesSettings":
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
    def from_env(cls, principal: Optional[str] = None) -> "KafkaSettings":
        user, password = _identity("kafka", "KAFKA_USER", principal)
        if password is None:
            password = _secret_file("KAFKA_PASSWORD") or get("KAFKA_PASSWORD", "")
        return cls(get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"), get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
                   get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"), user, password, get("KAFKA_SSL_CA_FILE", ""))

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


def librdkafka_for(bootstrap: str, principal: Optional[str] = None) -> Dict[str, str]:
    """librdkafka settings for the brokers at `bootstrap`: the configured security and identity (`principal`'s,
    default as in `KafkaSettings.from_env`) when they are the configured cluster, bare ones for another (a
    test's throwaway broker)."""
    s = KafkaSettings.from_env(principal)
    return s.librdkafka_config() if bootstrap == s.bootstrap_servers else {"bootstrap.servers": bootstrap}
