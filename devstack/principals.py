"""Who may do what: one principal per service, its grants in Kafka, Postgres and Redis, and its passwords.

    python -m devstack.principals              # writes the password files, prints principals and grants
    python -m devstack.principals --acls       # the Kafka ACLs, the Postgres GRANTs and the Redis ACL file

The grants are derived from one place: the topics a pipeline reads are its module's `TOPICS`
(beam_pipelines/<name>.py, which the events/topics.py registry names), it writes their dead-letter twins and
the outputs listed in `PIPELINE_OUTPUTS`; `tests/unit/test_principals.py` checks that the tables and topics
listed here are the ones the pipeline code writes. Kafka ACLs, Postgres GRANTs and the Redis ACL file are all
rendered from `principals()`, so adding a topic or a pipeline changes every system at once.

Passwords are random (`secrets.token_urlsafe`), generated once into $DEVSTACK_HOME/secrets/<system>/<name>
(mode 0600, directory 0700) and reused; nothing here prints one. The Redis ACL file stores SHA-256 hashes
(`#<hex>`), never the password. Kafka principals are `User:<name>` (SCRAM-SHA-512); `admin` is a Kafka super
user (it creates topics, ACLs and SCRAM credentials); the brokers authenticate to each other as admin and to
the controller with their certificate (`User:CN=kafka,O=...`, also a super user).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from events import topics as registry

PIPELINES = ("kpi", "frontend", "billing", "leads", "archive")
# What each pipeline writes besides the dead-letter twins of its inputs (checked against the code by the tests).
PIPELINE_OUTPUTS = {
    "kpi": {"tables": ("agent_turns", "session_kpis"), "topics": (), "redis": ("session:*",)},
    "frontend": {"tables": ("frontend_analytics", "frontend_session_engagement"), "topics": (), "redis": ()},
    "billing": {"tables": ("billing_usage",), "topics": (registry.BILLING,), "redis": ()},
    "leads": {"tables": ("marketo_leads",), "topics": (), "redis": ()},
    "archive": {"tables": (), "topics": (), "redis": ()},  # writes the Spaces bucket only
}
SINK_TABLES = ("agent_turns", "session_kpis", "frontend_analytics", "frontend_session_engagement", "billing_usage",
               "marketo_leads", "marketo_sync_state")
# The commands the KPI sink sends (io_connectors/redis_state.py: a Lua guard script; scripts are checked too).
REDIS_KPI_COMMANDS = ("ping", "evalsha", "eval", "script|load", "script|exists", "hget", "hset", "hmget", "hgetall",
                      "sadd", "expire", "client|setname")  # redis-py tries CLIENT SETINFO (7.2+) and ignores a refusal
REDIS_MONITOR_COMMANDS = ("ping", "info", "config|get", "client|list", "slowlog|get", "latency|latest",
                          "memory|stats", "client|setname")
BROKER_CERT_PRINCIPAL = "User:CN=kafka,O=iheardAI local stack"


@dataclass(frozen=True)
class Principal:
    """One service identity. Kafka: topics it reads (with the consumer groups it may use, as name prefixes)
    and writes; Postgres: tables it writes (SELECT, INSERT, UPDATE) and reads; Redis: key patterns and
    commands. `kafka_admin`/`pg_owner`/`redis_admin`: everything on that system (the operator, migrations)."""

    name: str
    description: str
    kafka_read: Tuple[str, ...] = ()
    kafka_write: Tuple[str, ...] = ()
    kafka_groups: Tuple[str, ...] = ()
    kafka_admin: bool = False
    pg_write: Tuple[str, ...] = ()
    pg_read: Tuple[str, ...] = ()
    pg_owner: bool = False
    pg_monitor: bool = False  # Postgres' pg_monitor role (server statistics, for the exporter)
    redis_keys: Tuple[str, ...] = ()
    redis_commands: Tuple[str, ...] = ()
    redis_admin: bool = False
    systems: Tuple[str, ...] = field(default=())

    @property
    def pg_role(self) -> str:
        return "iheardai_" + self.name.replace("-", "_")


def _systems(p: Principal) -> Tuple[str, ...]:
    return tuple(s for s, on in (("kafka", p.kafka_read or p.kafka_write or p.kafka_admin),
                                 ("postgres", p.pg_write or p.pg_read or p.pg_owner or p.pg_monitor),
                                 ("redis", p.redis_keys or p.redis_commands or p.redis_admin)) if on)


def pipeline_topics(name: str) -> Tuple[str, ...]:
    """The topics pipeline `name` reads: its module's TOPICS."""
    return tuple(importlib.import_module(f"beam_pipelines.{name}").TOPICS)


def _with_dlqs(names: Iterable[str]) -> Tuple[str, ...]:
    names = tuple(names)
    return names + tuple(registry.dlq_topic(t) for t in names)


def principals() -> Tuple[Principal, ...]:
    product_topics = tuple(t.name for t in registry.TOPICS)
    inputs = tuple(t for t in product_topics if t not in (registry.BILLING, registry.LEADS))  # the products write these
    out: List[Principal] = []
    for name in PIPELINES:
        reads, extra = pipeline_topics(name), PIPELINE_OUTPUTS[name]
        out.append(Principal(
            f"pipeline-{name}", f"the {name} pipeline (Flink job, Kafka IO and its Python workers)",
            kafka_read=reads, kafka_write=tuple(registry.dlq_topic(t) for t in reads) + extra["topics"],
            # production's group is iheardai-<name>; the local stack's demo, e2e tests and benchmarks run the
            # pipeline as iheardai-demo-<name>, e2e-<name>-<run> and bench-<name>-<run>
            kafka_groups=(f"iheardai-{name}", f"iheardai-demo-{name}", f"e2e-{name}-", f"bench-{name}-"),
            pg_write=extra["tables"],
            redis_keys=extra["redis"], redis_commands=REDIS_KPI_COMMANDS if extra["redis"] else ()))
    out += [
        Principal("marketo-extractor", "the Marketo extractor job (publishes lead deltas, keeps its cursor)",
                  kafka_read=(registry.LEADS,), kafka_write=(registry.LEADS, registry.dlq_topic(registry.LEADS)),
                  kafka_groups=("marketo-extractor",), pg_write=("marketo_sync_state",)),
        # the producer library dead-letters an invalid event to its topic's DLQ (on_invalid="dead_letter")
        Principal("producer-frontend", "iheardAI_Frontend's event producer",
                  kafka_write=_with_dlqs(t for t in inputs if t.startswith("frontend."))),
        Principal("producer-agent", "text-agent-server's event producer",
                  kafka_write=_with_dlqs(t for t in inputs if not t.startswith("frontend."))),
        Principal("workload", "the local test and demo workload (produces every input, reads back every topic)",
                  kafka_read=tuple(t.name for t in registry.all_topics()), kafka_write=_with_dlqs(product_topics),
                  # it also positions the test and demo pipelines' groups before their jobs start
                  kafka_groups=("iheardai-workload", "iheardai-demo-", "e2e-", "bench-", "producer-tests")),
        Principal("status", "the status service (consumer lag of every group, the age of the records behind)",
                  kafka_read=tuple(t.name for t in registry.all_topics()),
                  kafka_groups=("iheardai-", "e2e-", "bench-")),
        Principal("analytics", "read-only BI users and the status service", pg_read=SINK_TABLES),
        Principal("monitor", "the Postgres and Redis exporters and status probes (server stats, no rows or keys)",
                  redis_commands=REDIS_MONITOR_COMMANDS, pg_monitor=True),
        Principal("admin", "the operator: topics, ACLs, SCRAM users; owns the schema (migrations)",
                  kafka_admin=True, pg_owner=True, redis_admin=True),
    ]
    return tuple(Principal(**{**p.__dict__, "systems": _systems(p)}) for p in out)


def by_name(ps: Optional[Iterable[Principal]] = None) -> Dict[str, Principal]:
    return {p.name: p for p in (principals() if ps is None else ps)}


# --- Kafka --------------------------------------------------------------------------------------------------

class Acl(NamedTuple):
    """One ALLOW binding as Kafka stores it (resource type, name, LITERAL/PREFIXED, principal, host *, op)."""

    principal: str
    resource_type: str  # TOPIC | GROUP
    name: str
    pattern: str  # LITERAL | PREFIXED
    operation: str  # READ | WRITE | DESCRIBE


def kafka_principal(p: Principal) -> str:
    return f"User:{p.name}"


def kafka_super_users(ps: Optional[Iterable[Principal]] = None) -> Tuple[str, ...]:
    return tuple(kafka_principal(p) for p in (principals() if ps is None else ps) if p.kafka_admin) + \
        (BROKER_CERT_PRINCIPAL,)


def kafka_acls(ps: Optional[Iterable[Principal]] = None) -> List[Acl]:
    """Least privilege: READ+DESCRIBE on each input, WRITE+DESCRIBE on each output, READ on each consumer
    group prefix. Write implies the idempotent producer (Kafka >= 2.8), so no cluster grant is needed."""
    acls = []
    for p in principals() if ps is None else ps:
        if p.kafka_admin:
            continue  # super user
        who = kafka_principal(p)
        for t in p.kafka_read:
            acls += [Acl(who, "TOPIC", t, "LITERAL", "READ"), Acl(who, "TOPIC", t, "LITERAL", "DESCRIBE")]
        for t in p.kafka_write:
            acls += [Acl(who, "TOPIC", t, "LITERAL", "WRITE"), Acl(who, "TOPIC", t, "LITERAL", "DESCRIBE")]
        for g in p.kafka_groups:
            acls.append(Acl(who, "GROUP", g, "PREFIXED", "READ"))
    return sorted(set(acls))


def kafka_allowed(acls: Iterable[Acl], super_users: Iterable[str], principal: str, resource_type: str, name: str,
                  operation: str) -> bool:
    """Kafka's StandardAuthorizer decision for ALLOW-only bindings: a super user may do anything; otherwise a
    binding must match the resource (LITERAL equal, PREFIXED prefix) and the operation (READ and WRITE imply
    DESCRIBE). No match: denied."""
    if principal in set(super_users):
        return True
    implied = {"DESCRIBE": {"DESCRIBE", "READ", "WRITE", "DELETE", "ALTER"}}.get(operation, {operation})
    return any(a.principal == principal and a.resource_type == resource_type and a.operation in implied and
               (a.name == name if a.pattern == "LITERAL" else name.startswith(a.name)) for a in acls)


def acl_bindings(acls: Iterable[Acl]):
    """The ACLs as confluent_kafka AclBinding objects (AdminClient.create_acls)."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return [AclBinding(ResourceType[a.resource_type], a.name, ResourcePatternType[a.pattern], a.principal, "*",
                       AclOperation[a.operation], AclPermissionType.ALLOW) for a in acls]


# --- Postgres -----------------------------------------------------------------------------------------------

def postgres_statements(ps: Iterable[Principal], passwords: Mapping[str, str], database: str) -> List[Tuple[str, tuple]]:
    """(SQL, params) statements that create or update each role and grant exactly its tables; run as a
    superuser after the migrations. Identifiers come from this module only; passwords are parameters."""
    out: List[Tuple[str, tuple]] = []
    for p in ps:
        if "postgres" not in p.systems:
            continue
        role = p.pg_role
        out.append((f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
                    f"CREATE ROLE {role} LOGIN; END IF; END$$", ()))
        out.append((f"ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s",
                    (passwords[p.name],)))
        out.append((f"GRANT CONNECT ON DATABASE {database} TO {role}", ()))
        if p.pg_owner:
            out.append((f"GRANT ALL ON SCHEMA public TO {role}", ()))
            out.append((f"ALTER DATABASE {database} OWNER TO {role}", ()))
            continue
        if p.pg_monitor:
            out.append((f"GRANT pg_monitor TO {role}", ()))
        out.append((f"REVOKE CREATE ON SCHEMA public FROM {role}", ()))
        out.append((f"GRANT USAGE ON SCHEMA public TO {role}", ()))
        for t in p.pg_write:
            out.append((f"GRANT SELECT, INSERT, UPDATE ON TABLE {t} TO {role}", ()))
        for t in p.pg_read:
            out.append((f"GRANT SELECT ON TABLE {t} TO {role}", ()))
    out.append(("REVOKE CREATE ON SCHEMA public FROM PUBLIC", ()))
    return out


# --- Redis --------------------------------------------------------------------------------------------------

def redis_acl_lines(ps: Iterable[Principal], passwords: Mapping[str, str]) -> List[str]:
    """An ACL file (`aclfile` directive): the default user off, one user per principal with its key patterns
    and commands, passwords as SHA-256 hashes.

    The default user is off (no connection can be it: a client must AUTH as a principal) but keeps every
    permission: a Redis without redis/redis#14545 (Debian's 7.0.15 here) re-checks a transaction's ACLs at EXEC
    while it loads the AOF, as the default user (redis/redis#14541). With `-@all` every MULTI/EXEC
    in the AOF, and every script that wrote more than one key (the KPI sink's guard script), was refused on
    restart: a Redis restart silently lost the session state written since the last AOF rewrite."""
    lines = ["user default off resetkeys resetchannels ~* &* +@all"]
    for p in ps:
        if "redis" not in p.systems:
            continue
        digest = hashlib.sha256(passwords[p.name].encode()).hexdigest()
        if p.redis_admin:
            lines.append(f"user {p.name} on #{digest} ~* &* +@all")
            continue
        keys = " ".join(f"~{k}" for k in p.redis_keys)
        cmds = " ".join(f"+{c}" for c in p.redis_commands)
        lines.append(f"user {p.name} on #{digest} resetkeys {keys} resetchannels -@all {cmds}".replace("  ", " "))
    return lines


# --- passwords ----------------------------------------------------------------------------------------------

def password_file(home: Path, system: str, name: str) -> Path:
    return Path(home) / "secrets" / system / f"{name}.password"


def ensure_passwords(home: Path, ps: Optional[Iterable[Principal]] = None) -> Dict[str, Dict[str, Path]]:
    """{system: {principal: password file}}: one random password per principal and system, created once
    (0600 files in 0700 directories) and reused."""
    out: Dict[str, Dict[str, Path]] = {}
    for p in principals() if ps is None else ps:
        for system in p.systems:
            path = password_file(home, system, p.name)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                for d in (path.parent, path.parent.parent):
                    os.chmod(d, 0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(24))
            os.chmod(path, 0o600)
            out.setdefault(system, {})[p.name] = path
    return out


def read_passwords(files: Mapping[str, Path]) -> Dict[str, str]:
    return {name: Path(path).read_text().strip() for name, path in files.items()}


def describe(ps: Sequence[Principal]) -> str:
    """Each principal with its grants (what the closing note of the stack switch lists)."""
    lines = []
    for p in ps:
        lines.append(f"{p.name}: {p.description}")
        if p.kafka_admin:
            lines.append("  kafka: super user")
        else:
            for label, items in (("kafka read", p.kafka_read), ("kafka write", p.kafka_write),
                                 ("kafka groups (prefix)", p.kafka_groups)):
                if items:
                    lines.append(f"  {label}: {', '.join(items)}")
        if p.pg_owner:
            lines.append("  postgres: owns the database (migrations)")
        if p.pg_monitor:
            lines.append("  postgres: pg_monitor (server statistics, no table rows)")
        for label, items in (("postgres write", p.pg_write), ("postgres read", p.pg_read),
                             ("redis keys", p.redis_keys), ("redis commands", p.redis_commands)):
            if items:
                lines.append(f"  {label}: {', '.join(items)}")
        if p.redis_admin:
            lines.append("  redis: all keys and commands")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from devstack.config import HOME

    parser = argparse.ArgumentParser(prog="python -m devstack.principals", description=__doc__.split("\n")[0])
    parser.add_argument("--acls", action="store_true", help="print the Kafka ACLs, Postgres grants, Redis ACL file")
    args = parser.parse_args(argv)
    ps = principals()
    files = ensure_passwords(HOME, ps)
    print(describe(ps))
    print("\npassword files: " + ", ".join(f"{s}: {len(f)}" for s, f in sorted(files.items())) +
          f" under {HOME / 'secrets'}")
    if args.acls:
        print("\n# Kafka super users: " + ", ".join(kafka_super_users(ps)))
        for a in kafka_acls(ps):
            print(f"kafka {a.principal} {a.operation} {a.resource_type}:{a.pattern}:{a.name}")
        masked = {n: "<password>" for n in files.get("postgres", {})}
        for stmt, params in postgres_statements(ps, masked, "iheardai"):
            print("postgres " + (stmt.replace("%s", "'<password>'") if params else stmt))
        for line in redis_acl_lines(ps, {n: "x" for n in files.get("redis", {})}):
            print("redis " + line.split(" #")[0] + (" #<sha256> " + line.split(" #", 1)[1].split(" ", 1)[1]
                                                    if " #" in line else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
