"""Which production workload connects as which principal of devstack/principals.py, the Kubernetes Secrets that
hold each principal's credentials, and the commands that create the users and Secrets on DigitalOcean.

    python flink-deploy/identities.py                # workload, system, principal, user, Secret
    python flink-deploy/identities.py --setup        # doctl, redis-cli and kubectl commands (flink-deploy/README.md)
    python flink-deploy/identities.py --grants       # the Postgres GRANTs, to run as doadmin after the migration

One principal per service (io_connectors/settings.py, "Who connects"):
- a pod that is one service names its identity: `KAFKA_USER`/`POSTGRES_USER`/`REDIS_USERNAME` from key `username`
  of Secret `iheardai-<system>-<principal>`, the password as a file (`*_PASSWORD_FILE`, key `password`);
- the shared Beam Python worker pool (the `beam-worker-pool` sidecar of every TaskManager) runs the sinks of every
  pipeline, which keep only their principal's name in the job graph (`Settings.deferred()`): it sets no user and
  mounts each pipeline principal's password at `$IHEARDAI_SECRETS_DIR/<system>/<principal>.password` for each
  system that principal uses. So the session cluster's workers hold every pipeline's sink credentials (one
  session cluster, or an application-mode deployment, per pipeline would separate them).

Users: Kafka and Redis users are named as the principal, Postgres roles `iheardai_<principal, - as _>`
(`Principal.pg_role`): the worker pool derives the user from the file name, and the grants name these users.
tests/unit/test_deploy_identities.py checks the manifests, the Secret templates and the README against this file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devstack import principals as dp  # noqa: E402

SYSTEMS = ("kafka", "postgres", "redis")
USER_ENV = {"kafka": "KAFKA_USER", "postgres": "POSTGRES_USER", "redis": "REDIS_USERNAME"}
PASSWORD_FILE_ENV = {"kafka": "KAFKA_PASSWORD_FILE", "postgres": "POSTGRES_PASSWORD_FILE",
                     "redis": "REDIS_PASSWORD_FILE"}
SECRETS_ROOT = "/var/run/secrets/iheardai"  # the projected volume of every Python container
PRINCIPALS_DIR = f"{SECRETS_ROOT}/principals"  # IHEARDAI_SECRETS_DIR of the shared worker pool
WORKER_POOL = ("iheardai-flink-taskmanager", "beam-worker-pool")  # (pod, container)
PIPELINE_PRINCIPAL = "pipeline-{}"
DATABASE = "iheardai"


def workloads() -> Dict[Tuple[str, str], Dict[str, str]]:
    """(pod, container) -> {system: principal} of every container that connects as ONE identity. The submitters'
    Kafka identity also goes into the Java Kafka IO config inside the job graph (the TaskManagers' consumers and
    producers and the job server's partition listing use it): the pipeline's own, least-privileged principal."""
    out: Dict[Tuple[str, str], Dict[str, str]] = {
        (f"submit-{p}", "submit"): {"kafka": PIPELINE_PRINCIPAL.format(p)} for p in dp.PIPELINES}
    out[("marketo-extractor", "extractor")] = {"kafka": "marketo-extractor", "postgres": "marketo-extractor"}
    out[("iheardai-collector", "collector")] = {"kafka": "producer-frontend"}
    out[("iheardai-status", "status")] = {"kafka": "status", "postgres": "analytics", "redis": "monitor"}
    out[("sql-migrate", "migrate")] = {"postgres": "admin"}
    return out


def worker_pool_principals() -> Dict[str, Tuple[str, ...]]:
    """system -> the pipeline principals whose passwords the shared worker pool mounts (those that use it)."""
    by = dp.by_name()
    pipelines = [by[PIPELINE_PRINCIPAL.format(p)] for p in dp.PIPELINES]
    return {s: tuple(p.name for p in pipelines if s in p.systems) for s in SYSTEMS}


def secret_name(system: str, principal: str) -> str:
    return f"iheardai-{system}-{principal}"


def user(system: str, principal: str) -> str:
    return dp.by_name()[principal].pg_role if system == "postgres" else principal


def password_path(system: str, principal: str) -> str:
    """Where the worker pool finds a principal's password (io_connectors.settings.principal_password)."""
    return f"{PRINCIPALS_DIR}/{system}/{principal}.password"


def deployed() -> List[Tuple[str, str]]:
    """(system, principal) of every per-principal Secret the manifests read, in a stable order."""
    pairs = {(s, p) for ids in workloads().values() for s, p in ids.items()}
    pairs |= {(s, p) for s, ps in worker_pool_principals().items() for p in ps}
    order = [p.name for p in dp.principals()]
    return sorted(pairs, key=lambda sp: (SYSTEMS.index(sp[0]), order.index(sp[1])))


# --- DigitalOcean ---------------------------------------------------------------------------------------------

def do_kafka_acls(p: "dp.Principal") -> List[str]:
    """DO Managed Kafka ACL rules (`topic:permission`, permission consume | produce | produceconsume) for a
    principal's topics. DO's rules name topics only: the consumer-group prefixes of `kafka_groups` have no
    equivalent there."""
    rules = []
    for t in dict.fromkeys(p.kafka_read + p.kafka_write):
        perm = {(True, True): "produceconsume", (True, False): "consume", (False, True): "produce"}[
            (t in p.kafka_read, t in p.kafka_write)]
        rules.append(f"{t}:{perm}")
    return rules


def _var(principal: str) -> str:
    return "REDIS_PW_" + principal.upper().replace("-", "_")


def setup_commands() -> List[str]:
    """Shell lines that create each deployed principal's user (doctl; Redis: ACL SETUSER, see the README) and its
    Secret. Expects $NS, $KAFKA_ID, $PG_ID (`doctl databases list`) and $REDIS_URL (rediss://default:...@host:port)."""
    by = dp.by_name()
    lines = ['dopw() { doctl databases user get "$1" "$2" --format Password --no-header; }']
    for system, name in deployed():
        p, u, secret = by[name], user(system, name), secret_name(system, name)
        if system == "kafka":
            lines.append(f"doctl databases user create $KAFKA_ID {u} --acl {','.join(do_kafka_acls(p))}")
            pw = f'"$(dopw $KAFKA_ID {u})"'
        elif system == "postgres":
            lines.append(f"doctl databases user create $PG_ID {u}")
            pw = f'"$(dopw $PG_ID {u})"'
        else:
            var = _var(name)
            rules = ["on", f'">${var}"', "resetkeys", *[shlex.quote(f"~{k}") for k in p.redis_keys],
                     "resetchannels", "-@all", *[shlex.quote(f"+{c}") for c in p.redis_commands]]
            lines.append(f"{var}=$(openssl rand -hex 24)")
            lines.append(f'redis-cli -u "$REDIS_URL" ACL SETUSER {u} {" ".join(rules)}')
            pw = f'"${var}"'
        lines.append(f"kubectl -n $NS create secret generic {secret} --from-literal=username={u} "
                     f"--from-literal=password={pw}")
    return lines


def grant_statements() -> List[str]:
    """The GRANTs of devstack.principals for the deployed Postgres principals, without the role creation and
    password (doctl created the roles with generated passwords). Run as doadmin after the migration."""
    by = dp.by_name()
    names = [n for s, n in deployed() if s == "postgres"]
    out = []
    for name in names:
        if by[name].pg_owner:  # ALTER DATABASE ... OWNER TO needs doadmin to be a member of the new owner
            out.append(f"GRANT {by[name].pg_role} TO doadmin")
    for stmt, params in dp.postgres_statements([by[n] for n in names], {n: "" for n in names}, DATABASE):
        if stmt.startswith("DO $$") or stmt.startswith("ALTER ROLE"):
            continue
        out.append(stmt)
    return [s + ";" for s in out]


def table() -> List[str]:
    rows = []
    for (pod, container), ids in workloads().items():
        for s, p in ids.items():
            rows.append(f"{pod}/{container}\t{s}\t{p}\t{user(s, p)}\t{secret_name(s, p)}")
    for s, ps in worker_pool_principals().items():
        for p in ps:
            rows.append(f"{'/'.join(WORKER_POOL)}\t{s}\t{p}\t{user(s, p)}\t{secret_name(s, p)} "
                        f"-> {password_path(s, p)}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setup", action="store_true", help="commands that create the users and the Secrets")
    ap.add_argument("--grants", action="store_true", help="the Postgres GRANTs (psql as doadmin)")
    args = ap.parse_args(argv)
    print("\n".join(setup_commands() if args.setup else grant_statements() if args.grants else table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
