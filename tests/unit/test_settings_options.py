"""Settings from the environment (secrets never in repr) and pipeline options validated at build time."""

import pytest

from io_connectors.settings import KafkaSettings, PostgresSettings

pytestmark = pytest.mark.unit


def test_secrets_come_from_env_or_files_and_never_print(monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-from-file\n")
    monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("POSTGRES_HOST", "db.internal")
    s = PostgresSettings.from_env()
    assert s.password == "s3cr3t-from-file" and s.host == "db.internal"
    assert "s3cr3t" not in repr(s) and s.redacted()["password"] == "***"


def test_managed_kafka_sasl_ssl_config_for_java_and_librdkafka(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:25073")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_USER", "doadmin")
    monkeypatch.setenv("KAFKA_PASSWORD", 'p"w')
    monkeypatch.setenv("KAFKA_SSL_CA_FILE", "/etc/kafka/ca.crt")
    k = KafkaSettings.from_env()
    java = k.client_config()
    assert java["security.protocol"] == "SASL_SSL" and java["ssl.truststore.location"] == "/etc/kafka/ca.crt"
    assert 'username="doadmin" password="p\\"w"' in java["sasl.jaas.config"]
    rd = k.librdkafka_config()
    assert rd["sasl.username"] == "doadmin" and rd["ssl.ca.location"] == "/etc/kafka/ca.crt"
    assert "p\"w" not in repr(k)


def test_options_fail_at_build_time_and_savepoint_flags_are_declared():
    from beam_pipelines.options import FlinkCheckpointOptions, finalize_options

    with pytest.raises(ValueError):
        finalize_options(["--session_gap_seconds=0"], "kpi")
    opts = finalize_options(["--savepoint_path=s3://b/sp-1", "--allow_non_restored_state"], "kpi")
    ck = opts.view_as(FlinkCheckpointOptions)
    assert ck.savepoint_path == "s3://b/sp-1" and ck.allow_non_restored_state and ck.checkpointing_interval == 10_000


@pytest.mark.parametrize("start_from", ["committed", "earliest", "latest"])
def test_the_kafka_consumer_never_commits_by_itself_and_never_starts_at_the_end(start_from):
    """Beam's cross-language read replaces KafkaIO's consumer defaults with ours: auto-commit must be off, or a
    restart before the first checkpoint resumes after records that were fetched but never processed."""
    from beam_pipelines.options import consumer_config, finalize_options

    conf = consumer_config(finalize_options([f"--start_from={start_from}", "--consumer_group=g1"], "kpi"))
    assert conf["enable.auto.commit"] == "false" and conf["auto.offset.reset"] == "earliest"
    assert conf["group.id"] == "g1"
