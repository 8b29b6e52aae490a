"""Kafka the secured way: a SASL_SSL (SCRAM-SHA-512) listener with the local CA's certificate, the KRaft
StandardAuthorizer, and the principals and ACLs of devstack/principals.py. Used by the throwaway broker of
tests/integration/test_kafka_sasl_ssl.py today, and by devstack/services/kafka.py when the stack switches.

- clients: `SASL_SSL://localhost:<port>`, SCRAM-SHA-512, server certificate verified against the CA;
- the controller listener is SSL with client certificates required (SCRAM is not available on KRaft
  controller listeners): the broker presents its own certificate, whose principal is a super user;
- brokers talk to each other over SASL_SSL as `admin` (a super user, bootstrapped into the metadata by
  `kafka-storage format --add-scram`); every other principal's SCRAM credential and ACLs are applied by
  `apply_principals()` through the Admin API, idempotently;
- `allow.everyone.if.no.acl.found=false`: a resource without ACLs is closed to everyone but super users.

The properties file holds the admin password (in the JAAS line): it is written 0600, and Kafka logs that
setting as `[hidden]`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

from devstack import principals as pr
from devstack.services.kafka import single_node_properties

MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 8192


def broker_properties(port: int, controller_port: int, data_dir: Path, keystore: Path, ca_cert: Path,
                      admin_password: str, super_users: Sequence[str], node_id: int = 1, partitions: int = 3,
                      offsets_partitions: int = 10) -> str:
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
            f'password="{admin_password}";')
    return "\n".join([
        "process.roles=broker,controller",
        f"node.id={node_id}",
        f"controller.quorum.voters={node_id}@localhost:{controller_port}",
        f"listeners=SASL_SSL://localhost:{port},CONTROLLER://localhost:{controller_port}",
        f"advertised.listeners=SASL_SSL://localhost:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL",
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={ca_cert}",
        "ssl.enabled.protocols=TLSv1.3,TLSv1.2",
        "listener.name.controller.ssl.client.auth=required",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users=" + ";".join(super_users),
        "allow.everyone.if.no.acl.found=false",
        *single_node_properties(data_dir, partitions, offsets_partitions),
        "",
    ])


def write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def format_scram_args(admin_password: str) -> List[str]:
    """`kafka-storage format` arguments that put the admin's SCRAM credential into the bootstrap metadata."""
    return ["--add-scram", f"{MECHANISM}=[name=admin,password={admin_password}]"]


def client_config(port: int, ca_cert: Path, user: str, password: str) -> Dict[str, str]:
    """librdkafka settings of a principal (the same keys io_connectors.settings.KafkaSettings produces)."""
    return {"bootstrap.servers": f"localhost:{port}", "security.protocol": "SASL_SSL", "sasl.mechanism": MECHANISM,
            "sasl.username": user, "sasl.password": password, "ssl.ca.location": str(ca_cert),
            "ssl.endpoint.identification.algorithm": "https"}


def apply_principals(admin_config: Mapping[str, str], passwords: Mapping[str, str],
                     ps: Iterable[pr.Principal], timeout_s: float = 30) -> None:
    """SCRAM credentials for every Kafka principal but admin (upserted: a changed password file takes effect)
    and every ACL of `kafka_acls()` (creating an existing binding is a no-op)."""
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)

    ps = list(ps)
    admin = AdminClient(dict(admin_config))
    upserts = [UserScramCredentialUpsertion(p.name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS),
                                            passwords[p.name].encode())
               for p in ps if "kafka" in p.systems and not p.kafka_admin]
    if upserts:
        for fut in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).values():
            fut.result(timeout_s)
    bindings = pr.acl_bindings(pr.kafka_acls(ps))
    if bindings:
        for fut in admin.create_acls(bindings, request_timeout=timeout_s).values():
            fut.result(timeout_s)
