"""A throwaway KRaft broker (Kafka 4.1 from the stack's downloaded jars, its own ports and temp data dir,
never the shared broker) secured the way devstack/kafka_security.py describes: SASL_SSL with SCRAM-SHA-512,
the local CA's certificate, StandardAuthorizer, the principals and ACLs of devstack/principals.py.

A wrong password, a plaintext client, a SASL client without TLS and a client that does not trust the CA are
refused; the KPI principal reads its input with its group and writes its dead letters, but cannot read
frontend.* or write billing.usage.metered, nor use another pipeline's consumer group."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from devstack import kafka_security as ks
from devstack import principals as pr
from devstack import tls
from events import topics
from tests.throwaway import free_port, ready_if, stop, wait_ready

pytestmark = pytest.mark.integration
KPI_IN, FRONTEND, BILLING = topics.TURNS, topics.FRONTEND_INTERACTION, topics.BILLING


class _Passwords(dict):
    """The generated passwords; pytest's assertion messages print fixtures, so the repr names keys only."""

    def __repr__(self) -> str:
        return f"<passwords of {sorted(self)}>"


def _kafka_lib() -> Path:
    from devstack.services.kafka import KAFKA_LIB

    if not KAFKA_LIB.exists():
        pytest.skip(f"no Kafka jars at {KAFKA_LIB} (python -m devstack up kafka downloads them)")
    return KAFKA_LIB


def _java(lib: Path, log4j: Path, main: str, *args) -> list:
    from devstack.process import java_bin

    return [java_bin(), "-Xmx320m", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*", main, *map(str, args)]


@pytest.fixture(scope="module")
def broker():
    lib = _kafka_lib()
    root = Path(tempfile.mkdtemp(prefix="iheardai-throwaway-kafka-", dir="/var/tmp"))
    port, cport = free_port(), free_port()
    t = tls.ensure_tls(root / "tls", services=("kafka",))
    ps = pr.principals()
    files = pr.ensure_passwords(root, ps)["kafka"]
    passwords = _Passwords(pr.read_passwords(files))
    conf = ks.write_private(root / "server.properties", ks.broker_properties(
        port, cport, root / "data", t.services["kafka"].keystore, t.ca_cert, passwords["admin"],
        pr.kafka_super_users(ps)))
    log4j = root / "log4j2.properties"
    log4j.write_text("rootLogger.level=WARN\nrootLogger.appenderRef.f.ref=F\nappender.f.type=File\n"
                     f"appender.f.name=F\nappender.f.fileName={root / 'broker.log'}\n"
                     "appender.f.layout.type=PatternLayout\nappender.f.layout.pattern=[%d] %p %m (%c)%n\n")
    cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    subprocess.run(_java(lib, log4j, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", conf,
                         *ks.format_scram_args(passwords["admin"])), check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen(_java(lib, log4j, "kafka.Kafka", conf), stdout=subprocess.DEVNULL,
                            stderr=open(root / "broker.stderr", "w"))
    from confluent_kafka.admin import AdminClient, NewTopic

    admin_conf = ks.client_config(port, t.ca_cert, "admin", passwords["admin"])
    try:
        wait_ready(ready_if(lambda: AdminClient({**admin_conf, "log_level": 0}).list_topics(timeout=3)), proc,
                   "broker", 60, lambda: "".join(p.read_text()[-2000:] for p in root.glob("broker.*")))
        admin = AdminClient(admin_conf)
        names = (KPI_IN, topics.dlq_topic(KPI_IN), FRONTEND, BILLING)
        for fut in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
            fut.result(30)
        ks.apply_principals(admin_conf, passwords, ps)
        yield {"port": port, "ca": t.ca_cert, "passwords": passwords, "root": root}
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)


class _Conf(dict):
    def __repr__(self) -> str:  # a client config holds a password
        return f"<client config of {self.get('sasl.username', 'no user')} ({self.get('security.protocol')})>"


def _conf(b, user, password=None, **over):
    conf = _Conf(ks.client_config(b["port"], b["ca"], user, password or b["passwords"][user]), log_level=0)
    conf.update(over)
    return conf


def _refused(conf) -> str:
    """The errors a client that cannot connect reports (error_cb and the metadata request's)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors = []
    admin = AdminClient({**conf, "log_level": 0, "error_cb": lambda err: errors.append(str(err))})
    with pytest.raises(KafkaException) as e:
        admin.list_topics(timeout=6)
    admin.poll(1)  # callbacks are served by poll()
    return " ".join(errors + [str(e.value)])


def _produce(conf, topic):
    from confluent_kafka import Producer

    errors = []
    p = Producer({**conf, "message.timeout.ms": 8000, "enable.idempotence": True, "log_level": 0})
    p.produce(topic, b"v", on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    return errors[0] if errors else "no delivery report"


def _consume(conf, topic, group):
    """The first message, or the first error of a consumer of `topic` in `group`."""
    from confluent_kafka import Consumer

    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "log_level": 0})
    c.subscribe([topic])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            m = c.poll(1)
            if m is None:
                continue
            if m.error():
                return m.error()
            c.commit(m, asynchronous=False)
            return m.value()
        return None
    finally:
        c.close()


def test_a_wrong_password_is_refused(broker):
    for user, password in (("pipeline-kpi", "not-the-password"), ("nobody", "whatever")):
        assert "invalid credentials" in _refused(_conf(broker, user, password))
    assert "invalid credentials" in _refused(_conf(broker, "pipeline-kpi", broker["passwords"]["pipeline-leads"]))


def test_plaintext_and_unverified_clients_are_refused(broker):
    port = broker["port"]
    assert "transport failure" in _refused({"bootstrap.servers": f"localhost:{port}", "security.protocol": "PLAINTEXT"})
    no_tls = _conf(broker, "pipeline-kpi", **{"security.protocol": "SASL_PLAINTEXT"})
    del no_tls["ssl.ca.location"], no_tls["ssl.endpoint.identification.algorithm"]
    assert "transport failure" in _refused(no_tls)
    other_ca = broker["root"] / "other-ca.crt"
    other_ca.write_bytes(tls._pem_cert(tls.new_ca()[0]))
    assert "certificate verify failed" in _refused(_conf(broker, "pipeline-kpi", **{"ssl.ca.location": str(other_ca)}))


def test_the_kpi_principal_gets_exactly_its_topics(broker):
    from confluent_kafka import KafkaError

    workload = _conf(broker, "workload")
    assert _produce(workload, KPI_IN) is None and _produce(workload, FRONTEND) is None
    kpi = _conf(broker, "pipeline-kpi")
    assert _consume(kpi, KPI_IN, "iheardai-kpi") == b"v"
    assert _produce(kpi, topics.dlq_topic(KPI_IN)) is None
    err = _produce(kpi, BILLING)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    err = _consume(kpi, FRONTEND, "iheardai-kpi")
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    err = _consume(kpi, KPI_IN, "iheardai-billing")  # another pipeline's consumer group
    assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    err = _produce(kpi, KPI_IN)  # its input is read-only to it
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert _produce(_conf(broker, "pipeline-billing"), BILLING) is None


def test_the_broker_log_holds_no_password(broker):
    text = "".join(p.read_text(errors="replace") for p in broker["root"].glob("broker.*"))
    for name, pw in broker["passwords"].items():
        assert pw not in text, name
