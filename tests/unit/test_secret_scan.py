"""The secret scan finds planted secrets (raw, JSON-escaped, percent-encoded; in logs, test output, dead
letters, Flink REST responses and Prometheus labels), reports names and short hashes, never the secret,
and honours the allowlist."""

from __future__ import annotations

import json

import pytest

from devstack import principals as pr
from devstack import secret_scan as ss
from transforms.field_crypto import new_ring, write_ring_file

pytestmark = pytest.mark.unit
PG_PW = "pg-Secret-Value-123"
SPACES = "spaces/Secret+Key=42"


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "stack"
    (home / "logs" / "flink").mkdir(parents=True)
    ring = new_ring("k1")
    write_ring_file(ring, home / "secrets" / "field-keys.json")
    (home / "devstack.env").write_text(
        f"# local\nPOSTGRES_PASSWORD={PG_PW}\nPOSTGRES_HOST=localhost\nSPACES_SECRET_KEY={SPACES}\n"
        f"PII_HMAC_KEY={'ab' * 32}\nIHEARDAI_FIELD_KEYS_FILE={home / 'secrets' / 'field-keys.json'}\nSHORT_TOKEN=abc\n")
    pr.ensure_passwords(home)
    from devstack import tls
    tls.ensure_tls(home / "tls", services=("kafka",))
    return home, json.loads(ring.to_json())["keys"]["k1"]


def _pw(home, system, name):
    return (home / "secrets" / system / f"{name}.password").read_text()


def test_collects_every_generated_secret(home):
    home, field_key = home
    secrets = {s.name: s.value for s in ss.collect_secrets(home, {"POSTGRES_PASSWORD": PG_PW, "HOME": "/root",
                                                                  "GITHUB_TOKEN": "not-ours-12345"})}
    assert secrets["POSTGRES_PASSWORD"] == PG_PW and secrets["SPACES_SECRET_KEY"] == SPACES
    assert secrets["IHEARDAI_FIELD_KEYS_FILE[k1]"] == field_key
    assert secrets["secrets/kafka/pipeline-kpi.password"] == _pw(home, "kafka", "pipeline-kpi")
    assert "tls/kafka.key" in secrets and "tls/ca.key" in secrets
    assert "SHORT_TOKEN" not in secrets and "POSTGRES_HOST" not in secrets and "GITHUB_TOKEN" not in secrets
    assert PG_PW not in repr(ss.collect_secrets(home, {}))


def test_finds_planted_secrets_in_logs_and_given_paths_and_never_prints_them(home, tmp_path):
    home, field_key = home
    kpi_pw = _pw(home, "kafka", "pipeline-kpi")
    (home / "logs" / "kafka.log").write_text("start\nok\n" + f"connect password={PG_PW}\n")
    (home / "logs" / "flink" / "taskmanager.log").write_text("x\n" * 5 + json.dumps({"conf": f'pw="{SPACES}"'}) + "\n")
    (home / "logs" / "clean.log").write_text("nothing here " * 1000)
    out = tmp_path / "pytest-out"
    out.mkdir()
    (out / "junit.xml").write_text(f"<failure>sasl.password={kpi_pw}</failure>\n<x>{field_key}</x>\n")
    (out / "url.txt").write_text("s3://?secret=" + __import__("urllib.parse").parse.quote(SPACES, safe="") + "\n")
    findings, secrets, covered, unreadable = ss.run(home, {}, [out], kafka=False, flink=False, prometheus=False)
    where = {(f.secret, f.location.replace(str(home), "H").replace(str(out), "O")) for f in findings}
    assert where == {("POSTGRES_PASSWORD", "H/logs/kafka.log:3"), ("SPACES_SECRET_KEY", "H/logs/flink/taskmanager.log:6"),
                     ("secrets/kafka/pipeline-kpi.password", "O/junit.xml:1"),
                     ("IHEARDAI_FIELD_KEYS_FILE[k1]", "O/junit.xml:2"), ("SPACES_SECRET_KEY", "O/url.txt:1")}
    text = ss.report(findings, secrets, covered, unreadable)
    for s in secrets:
        assert s.value not in text
    assert "FOUND: POSTGRES_PASSWORD (sha256:" in text and "5 finding(s)" in text
    assert ss.main(["--home", str(home), "--no-kafka", "--no-flink", "--no-prometheus"]) == 1


def test_dead_letters_flink_and_prometheus_records(home):
    home, _ = home
    kpi_pw = _pw(home, "kafka", "pipeline-kpi")
    m = ss.Matcher(ss.collect_secrets(home, {}))
    found = ss.scan_records([("t.dlq/0@5", b'{"payload": "x", "error": "auth ' + PG_PW.encode() + b'"}'),
                             ("t.dlq/1@0", b"clean")], m, "dlq")
    assert [(f.secret, f.location) for f in found] == [("POSTGRES_PASSWORD", "t.dlq/0@5")]
    pages = {"http://f/jobmanager/config": b"[]", "http://f/jobs": json.dumps({"jobs": [{"id": "j1"}]}).encode(),
             "http://f/jobs/j1": json.dumps({"name": "kpi", "plan": {"nodes": [{"description": "ReadFromKafka"}]}}).encode(),
             "http://f/jobs/j1/config": json.dumps({"execution-config": {"user-config": {
                 "sasl.jaas.config": f'ScramLoginModule required username="pipeline-kpi" password="{kpi_pw}";'}}}).encode(),
             "http://f/jobs/j1/exceptions": b"{}"}
    recs = list(ss.flink_records("http://f", pages.__getitem__))
    assert [r[0] for r in recs] == ["/jobmanager/config", "/jobs/j1", "/jobs/j1/config", "/jobs/j1/exceptions"]
    flink = ss.apply_allowlist(ss.scan_records(recs, m, "flink"), ss.load_allowlist())
    assert [(f.secret, f.location, bool(f.allowed)) for f in flink] == [
        ("secrets/kafka/pipeline-kpi.password", "/jobs/j1/config", True)]  # documented: Beam's Kafka IO
    prom = {"http://p/api/v1/labels": b'{"data": ["job"]}', "http://p/api/v1/label/job/values": b'{"data": ["kpi"]}'}
    assert ss.scan_records(ss.prometheus_records("http://p", prom.__getitem__), m, "prometheus") == []


def test_the_allowlist_is_narrow_and_needs_reasons(tmp_path):
    f = ss.Finding("POSTGRES_PASSWORD", "abcd1234", "flink", "/jobs/j1/config")
    assert not ss.apply_allowlist([f], ss.load_allowlist())[0].allowed  # only Kafka pipeline passwords
    log = ss.Finding("secrets/kafka/pipeline-kpi.password", "abcd1234", "log", "/x/flink.log:3")
    assert not ss.apply_allowlist([log], ss.load_allowlist())[0].allowed  # in a log it is a leak
    bad = tmp_path / "allow.json"
    bad.write_text(json.dumps({"allow": [{"secret": "*", "location": "*"}]}))
    with pytest.raises(ValueError, match="reason"):
        ss.load_allowlist(bad)


def test_an_unreachable_place_is_named_not_skipped(home):
    home, _ = home

    def down(url):
        raise ConnectionError("refused")

    findings, _, _, unreadable = ss.run(home, {}, [], kafka=False, flink=True, prometheus=True, get=down)
    assert findings == [] and len(unreadable) == 2 and "Flink REST" in unreadable[0]
