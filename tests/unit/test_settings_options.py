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


def test_a_worker_pool_named_alone_is_the_one_the_job_uses():
    from apache_beam.options.pipeline_options import PortableOptions

    from beam_pipelines.options import finalize_options

    own = finalize_options(["--runner=FlinkRunner", "--environment_config=localhost:50001"], "kpi")
    assert own.view_as(PortableOptions).environment_config == "localhost:50001"
    default = finalize_options(["--runner=FlinkRunner"], "kpi").view_as(PortableOptions)
    assert default.environment_type == "EXTERNAL" and default.environment_config.endswith(":50000")


@pytest.mark.parametrize("start_from", ["committed", "earliest", "latest"])
def test_the_kafka_consumer_never_commits_by_itself_and_never_starts_at_the_end(start_from):
    """Beam's cross-language read replaces KafkaIO's consumer defaults with ours: auto-commit must be off, or a
    restart before the first checkpoint resumes after records that were fetched but never processed."""
    from beam_pipelines.options import consumer_config, finalize_options

    conf = consumer_config(finalize_options([f"--start_from={start_from}", "--consumer_group=g1"], "kpi"))
    assert conf["enable.auto.commit"] == "false" and conf["auto.offset.reset"] == "earliest"
    assert conf["group.id"] == "g1"


def _local_secrets(tmp_path, monkeypatch):
    from io_connectors import settings

    monkeypatch.setattr(settings, "_file_env", dict)  # not this machine's stack settings file
    for system, name, pw in (("postgres", "pipeline-kpi", "pg-pw-of-kpi-123"), ("redis", "pipeline-kpi", "redis-pw-kpi-456"),
                             ("kafka", "pipeline-kpi", "kafka-pw-kpi-789"), ("kafka", "workload", "kafka-pw-work-000")):
        (tmp_path / system).mkdir(exist_ok=True)
        (tmp_path / system / f"{name}.password").write_text(pw + "\n")
    monkeypatch.setenv("IHEARDAI_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("KAFKA_PRINCIPAL", "workload")
    for name in ("KAFKA_USER", "POSTGRES_USER", "REDIS_USERNAME", "KAFKA_PASSWORD", "POSTGRES_PASSWORD",
                 "REDIS_PASSWORD", "KAFKA_PASSWORD_FILE", "POSTGRES_PASSWORD_FILE", "REDIS_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_a_local_principal_picks_its_password_file_and_a_pods_user_wins(tmp_path, monkeypatch):
    from io_connectors import settings

    _local_secrets(tmp_path, monkeypatch)
    k = KafkaSettings.from_env()
    assert (k.sasl_username, k.sasl_password) == ("workload", "kafka-pw-work-000")  # the file's default
    monkeypatch.setattr(settings, "_PROCESS_PRINCIPAL", "pipeline-kpi")  # what run_pipeline sets
    assert KafkaSettings.from_env().sasl_username == "pipeline-kpi"
    pg = PostgresSettings.from_env()
    assert (pg.user, pg.password) == ("iheardai_pipeline_kpi", "pg-pw-of-kpi-123")
    with pytest.raises(RuntimeError, match="no postgres password for principal 'pipeline-archive'"):
        PostgresSettings.from_env("pipeline-archive")
    monkeypatch.setenv("POSTGRES_USER", "pod-role")  # a pod names its identity: it wins
    monkeypatch.setenv("POSTGRES_PASSWORD", "pod-pw")
    assert (PostgresSettings.from_env("pipeline-kpi").user, PostgresSettings.from_env().password) == ("pod-role", "pod-pw")


def test_sinks_keep_the_principals_name_in_the_graph_never_its_password(tmp_path, monkeypatch):
    """A sink built by a launcher (use_principal) pickles the principal's name; the worker resolves it."""
    import base64
    import bz2

    from apache_beam.internal import pickler

    from io_connectors import settings
    from io_connectors.postgres import WriteToPostgres
    from io_connectors.redis_state import WriteSessionState

    _local_secrets(tmp_path, monkeypatch)
    monkeypatch.setattr(settings, "_PROCESS_PRINCIPAL", "pipeline-kpi")
    pg_sink = WriteToPostgres("agent_turns", ("session_id",), ("session_id", "x"))
    redis_sink = WriteSessionState()
    monkeypatch.setattr(settings, "_PROCESS_PRINCIPAL", None)
    for sink, secret in ((pg_sink, b"pg-pw-of-kpi-123"), (redis_sink, b"redis-pw-kpi-456")):
        blob = bz2.decompress(base64.b64decode(pickler.dumps(sink._fn)))  # the bytes the graph holds
        assert secret not in blob and b"pipeline-kpi" in blob
    fn = pickler.loads(pickler.dumps(pg_sink._fn))  # in the worker: the name resolves to its own password
    kwargs = fn.make_writer().settings.connect_kwargs()
    assert (kwargs["user"], kwargs["password"]) == ("iheardai_pipeline_kpi", "pg-pw-of-kpi-123")
