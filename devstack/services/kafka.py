"""Kafka (KRaft, single node) from Maven Central jars; the project's topics from events.topics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

from devstack import versions
from devstack.config import DATA, DOWNLOADS, HOME, PORTS, REPO, RUN, SECURITY, TLS_DIR, secured
from devstack.process import StackError, java_bin, log, port_open, run, spawn
from devstack.services import Service


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


def single_node_properties(data: Path, partitions: int = 3, offsets_partitions: int = 10) -> List[str]:
    """Storage and the internal topics of a one-node KRaft cluster (also devstack/kafka_security.py's)."""
    return [
        f"log.dirs={data}",
        f"num.partitions={partitions}",
        "offsets.topic.replication.factor=1",
        f"offsets.topic.num.partitions={offsets_partitions}",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
    ]


def _kafka_conf() -> Path:
    data = DATA / "kafka"
    conf = RUN / "kafka-server.properties"
    RUN.mkdir(parents=True, exist_ok=True)
    if secured():
        from devstack import kafka_security as ks
        from devstack import principals as pr
        from devstack import tls

        t = tls.ensure_tls(TLS_DIR)
        ks.write_private(conf, ks.broker_properties(
            PORTS["kafka"], PORTS["kafka-controller"], data, t.services["kafka"].keystore, t.ca_cert,
            _admin_password(), pr.kafka_super_users()))
    else:
        conf.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@localhost:{PORTS['kafka-controller']}",
            f"listeners=PLAINTEXT://localhost:{PORTS['kafka']},CONTROLLER://localhost:{PORTS['kafka-controller']}",
            f"advertised.listeners=PLAINTEXT://localhost:{PORTS['kafka']}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            *single_node_properties(data),
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


def _admin_password() -> str:
    from devstack import principals as pr

    return pr.password_file(HOME, "kafka", "admin").read_text().strip()


def admin_config() -> Dict[str, str]:
    """The stack's Kafka admin client settings (topics, ACLs, SCRAM users): the admin principal when secured."""
    if not secured():
        return {"bootstrap.servers": f"localhost:{PORTS['kafka']}"}
    from devstack import kafka_security as ks

    return {**ks.client_config(PORTS["kafka"], TLS_DIR / "ca.crt", "admin", _admin_password()), "log_level": "0"}


def _kafka_java(main: str, *args) -> List[str]:
    return [java_bin(), "-Xmx768m", "-Xms256m", f"-Dlog4j2.configurationFile={RUN / 'kafka-log4j2.properties'}",
            "-cp", f"{KAFKA_LIB}/*", main, *map(str, args)]


def kafka_start() -> subprocess.Popen:
    conf = _kafka_conf()
    data = DATA / "kafka"
    profile = data / ".devstack-security"
    if (data / "meta.properties").exists() and (profile.read_text() if profile.exists() else "plaintext") != SECURITY:
        # formatted for the other profile (no admin SCRAM user in its metadata, or ACLs it would not have):
        # local data only, so start over
        log(f"kafka: the data directory was formatted for another security profile; formatting it for {SECURITY}")
        shutil.rmtree(data)
    if not (data / "meta.properties").exists():
        data.mkdir(parents=True, exist_ok=True)
        cluster_id = subprocess.run(_kafka_java("kafka.tools.StorageTool", "random-uuid"),
                                    capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        scram = []
        if secured():
            from devstack import kafka_security as ks

            scram = ks.format_scram_args(_admin_password())
        # the admin password is an argument of this short-lived command only, logged without it
        fmt = _kafka_java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", conf, "--ignore-formatted")
        run(fmt + scram, "kafka", shown=fmt + (["--add-scram", "<admin credential>"] if scram else []))
        profile.write_text(SECURITY)
    return spawn("kafka", _kafka_java("kafka.Kafka", conf))


def kafka_healthy() -> bool:
    if not port_open(PORTS["kafka"]):
        return False
    from confluent_kafka.admin import AdminClient

    md = AdminClient(admin_config()).list_topics(timeout=3)
    return len(md.brokers) >= 1


def kafka_after_start() -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    from events.topics import all_topics

    admin = AdminClient(admin_config())
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
    if secured():
        from devstack import kafka_security as ks
        from devstack import principals as pr

        ps = pr.principals()
        # SCRAM users (upserted from the password files) and ACLs (creating an existing binding is a no-op)
        ks.apply_principals(admin_config(), pr.read_passwords(pr.ensure_passwords(HOME, ps)["kafka"]), ps)


SERVICE = Service("kafka", PORTS["kafka"], kafka_install, kafka_start, kafka_healthy, 90, kafka_after_start,
                  f"localhost:{PORTS['kafka']}")
