"""Field-level encryption: AES-256-GCM tokens with a key id round-trip with the key, fail without it, with a
wrong or tampered token or one moved to another field, and a rotated ring still decrypts old data; the PII
policy encrypts the lead contact fields, fails closed without keys, and the leads graph builds and writes
tokens (DirectRunner)."""

from __future__ import annotations

import io
import json
import os
import stat

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from events import topics
from events.contracts import MarketoLeadDelta
from events.topics import CONTRACTS
from events.dead_letters import split_dead_letters
from transforms import field_crypto as fc
from transforms.field_crypto import FieldCipher, InvalidToken, KeyRing, KeyRingError, context
from transforms.pii import DEFAULT_POLICY_FILE, PiiPolicy, RedactPii, Redactor
from transforms.rows import ENCRYPTED_COLUMNS, LEAD_COLUMNS, lead_to_row
from transforms.scoring import ScoreLeads, Scored, score_lead

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
EMAIL_CTX = context(topics.LEADS, "email")
NAME_CTX = context(topics.LEADS, "first_name")
HMAC = "unit-test-key-0123456789abcdef"


@pytest.fixture
def ring():
    return fc.new_ring("k1")


@pytest.fixture
def ring_env(monkeypatch, tmp_path, ring):
    """A ring file the way a pod gets it (IHEARDAI_FIELD_KEYS_FILE), and the HMAC key."""
    path = tmp_path / "field-keys.json"
    fc.write_ring_file(ring, path)
    monkeypatch.setenv(fc.KEYS_FILE_ENV, str(path))
    monkeypatch.delenv(fc.KEYS_ENV, raising=False)
    monkeypatch.setenv("PII_HMAC_KEY", HMAC)
    return path


@pytest.fixture
def no_ring(monkeypatch):
    """The environment names no ring."""
    monkeypatch.delenv(fc.KEYS_FILE_ENV, raising=False)
    monkeypatch.delenv(fc.KEYS_ENV, raising=False)
    monkeypatch.setenv("PII_HMAC_KEY", HMAC)


def _lead(**over):
    d = {"lead_id": 7, "marketo_guid": "g7", "timestamp": TS, "email": "Jane.Doe@Acme-Corp.com",
         "first_name": "Jane", "last_name": "Doe", "company": "Acme", "title": "VP Sales", "phone": "+1 415 555 0132",
         "lead_source": "Referral", "lead_score": 90}
    d.update(over)
    return MarketoLeadDelta.model_validate(d)


# --- the cipher -------------------------------------------------------------------------------------------

def test_round_trip_with_the_key_and_the_token_format(ring):
    c = FieldCipher(ring)
    token = c.encrypt("Jane Doe ünicode", NAME_CTX)
    assert token.startswith("enc:v1:k1:") and "Jane" not in token and fc.TOKEN_RE.fullmatch(token)
    assert c.decrypt(token, [NAME_CTX]) == "Jane Doe ünicode"
    assert c.encrypt("", NAME_CTX) != c.encrypt("", NAME_CTX) and c.decrypt(c.encrypt("", NAME_CTX), [NAME_CTX]) == ""


def test_email_keeps_its_domain_readable_and_authenticated(ring):
    c = FieldCipher(ring)
    token = c.encrypt_email(" Jane.Doe@Acme-Corp.com ", EMAIL_CTX)
    assert token.endswith("@acme-corp.com") and "Jane" not in token
    assert c.decrypt(token, [EMAIL_CTX]) == "Jane.Doe@Acme-Corp.com"
    with pytest.raises(InvalidToken):  # the visible domain is part of the associated data
        c.decrypt(token.replace("@acme-corp.com", "@gmail.com"), [EMAIL_CTX])
    with pytest.raises(InvalidToken):
        c.decrypt(token.rsplit("@", 1)[0], [EMAIL_CTX])
    assert c.decrypt(c.encrypt_email("not-an-address", EMAIL_CTX), [EMAIL_CTX]) == "not-an-address"


def test_a_wrong_key_or_no_key_fails(ring):
    token = FieldCipher(ring).encrypt("secret", NAME_CTX)
    other = fc.new_ring("k1")  # same id, other key
    with pytest.raises(InvalidToken, match="does not authenticate"):
        FieldCipher(other).decrypt(token, [NAME_CTX])
    with pytest.raises(InvalidToken, match="not in the field key ring"):
        FieldCipher(fc.new_ring("k2")).decrypt(token, [NAME_CTX])


def test_a_tampered_token_fails(ring):
    c = FieldCipher(ring)
    token = c.encrypt("secret value", NAME_CTX)
    head, payload = token.rsplit(":", 1)
    for i in (0, 5, len(payload) // 2, len(payload) - 1):  # nonce, ciphertext and tag bytes
        flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1:]
        with pytest.raises(InvalidToken):
            c.decrypt(f"{head}:{flipped}", [NAME_CTX])
    with pytest.raises(InvalidToken):
        c.decrypt(f"{head}:{payload[:-4]}", [NAME_CTX])  # truncated
    with pytest.raises(InvalidToken, match="not an enc:v1 token"):
        c.decrypt("enc:v2:k1:" + payload, [NAME_CTX])


def test_a_token_moved_to_another_field_or_topic_fails(ring):
    c = FieldCipher(ring)
    token = c.encrypt("Jane", NAME_CTX)
    for ctx in (context(topics.LEADS, "last_name"), context(topics.LEADS, "company"), context(topics.TURNS, "first_name")):
        with pytest.raises(InvalidToken, match="belongs to another field"):
            c.decrypt(token, [ctx])
    assert c.decrypt(token, [context(topics.LEADS, "last_name"), NAME_CTX]) == "Jane"  # one of the allowed ones


def test_a_rotated_ring_still_decrypts_old_data_and_reencrypts_to_the_new_key(ring):
    old = FieldCipher(ring).encrypt("Jane", NAME_CTX)
    rotated = ring.with_new_key("k2")
    assert rotated.active == "k2" and set(rotated.keys) == {"k1", "k2"}
    c = FieldCipher(rotated)
    assert c.decrypt(old, [NAME_CTX]) == "Jane"
    new = c.encrypt("Jane", NAME_CTX)
    assert new.startswith("enc:v1:k2:")
    moved = c.reencrypt_text(f"{old} {old}", [NAME_CTX])
    assert moved.count("enc:v1:k2:") == 2 and c.decrypt_text(moved, [NAME_CTX]) == "Jane Jane"
    retired = FieldCipher(KeyRing({"k2": rotated.keys["k2"]}, "k2"))
    assert retired.decrypt_text(moved, [NAME_CTX]) == "Jane Jane"
    with pytest.raises(InvalidToken, match="'k1' is not in the field key ring"):
        retired.decrypt(old, [NAME_CTX])


def test_nonces_are_unique(ring):
    c = FieldCipher(ring)
    tokens = [c.encrypt("same value", NAME_CTX) for _ in range(20_000)]
    nonces = {fc._b64d(t.rsplit(":", 1)[1])[:fc.NONCE_BYTES] for t in tokens}
    assert len(nonces) == len(tokens) and len(set(tokens)) == len(tokens)


def test_key_ring_validation_never_prints_a_key(tmp_path):
    good = fc.new_ring("k1")
    secret = json.loads(good.to_json())["keys"]["k1"]
    short = json.dumps({"active": "k1", "keys": {"k1": "c2hvcnQ="}})
    for text, match in ((short, "must be 32 bytes"), ("nope", "not JSON"), ('{"keys": []}', "expected"),
                        (json.dumps({"active": "k9", "keys": {"k1": secret}}), "active key 'k9'"),
                        (json.dumps({"active": "k1", "keys": {"k1": "!!"}}), "not base64"),
                        (json.dumps({"active": "bad id", "keys": {"bad id": secret}}), "key id"),
                        (json.dumps({"keys": {}}), "no keys")):
        with pytest.raises(KeyRingError, match=match) as e:
            KeyRing.from_json(text)
        assert secret not in str(e.value)
    assert secret not in repr(good) and "k1" in repr(good)
    assert KeyRing.from_json(json.dumps({"keys": {"k1": secret}})).active is None  # decrypt-only ring
    with pytest.raises(KeyRingError, match="no active key"):
        FieldCipher(KeyRing.from_json(json.dumps({"keys": {"k1": secret}}))).encrypt("x", NAME_CTX)


def test_load_key_ring_from_a_file_or_the_environment(tmp_path, ring):
    path = tmp_path / "keys.json"
    fc.write_ring_file(ring, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert fc.load_key_ring({fc.KEYS_FILE_ENV: str(path)}).keys == ring.keys
    assert fc.load_key_ring({fc.KEYS_ENV: ring.to_json()}).keys == ring.keys
    assert fc.load_key_ring({fc.KEYS_FILE_ENV: str(path), fc.KEYS_ENV: "ignored"}).keys == ring.keys
    assert fc.load_key_ring({}) is None
    with pytest.raises(KeyRingError, match="cannot read"):
        fc.load_key_ring({fc.KEYS_FILE_ENV: str(tmp_path / "missing.json")})
    again = fc.ensure_ring_file(path)  # idempotent: the existing ring is kept
    assert again.keys == ring.keys
    fresh = fc.ensure_ring_file(tmp_path / "sub" / "new.json")
    assert fresh.active == "k1" and stat.S_IMODE(os.stat(tmp_path / "sub" / "new.json").st_mode) == 0o600


# --- the policy -------------------------------------------------------------------------------------------

def _policy(**lead_fields):
    doc = json.loads(DEFAULT_POLICY_FILE.read_text())
    doc["topics"][topics.LEADS].update(lead_fields)
    return doc


def test_the_project_policy_encrypts_the_lead_contact_fields():
    policy = PiiPolicy.load()
    assert policy.needs_field_keys()
    assert policy.encrypted_fields(topics.LEADS) == ("email", "first_name", "last_name", "phone")
    for topic in topics.CONTRACTS:
        if topic != topics.LEADS:
            assert policy.encrypted_fields(topic) == (), topic  # elsewhere pseudonyms and scans suffice
    table_topic, columns = ENCRYPTED_COLUMNS["marketo_leads"]
    assert table_topic == topics.LEADS and set(columns) <= set(LEAD_COLUMNS)
    assert {f for fs in columns.values() for f in fs} == set(policy.encrypted_fields(topics.LEADS))


def test_policy_validation_of_the_encrypt_actions():
    PiiPolicy.from_dict(_policy(company="encrypt", title="encrypt_email"))
    with pytest.raises(ValueError, match="needs a text field"):
        PiiPolicy.from_dict(_policy(lead_score="encrypt"))
    with pytest.raises(ValueError, match="needs a text field"):
        PiiPolicy.from_dict(_policy(attributes="encrypt"))
    doc = _policy()
    doc["extra_fields"] = "encrypt"
    with pytest.raises(ValueError, match="extra_fields cannot be 'encrypt'"):
        PiiPolicy.from_dict(doc)
    with pytest.raises(ValueError, match="unknown action"):
        PiiPolicy.from_dict(_policy(email="encrypted"))


def test_redaction_fails_closed_without_a_ring(no_ring):
    policy = PiiPolicy.load()
    with pytest.raises(ValueError, match="IHEARDAI_FIELD_KEYS_FILE"):
        Redactor(policy, HMAC.encode(), models=[MarketoLeadDelta])  # what each worker's setup() builds
    with pytest.raises(ValueError, match="encrypts MarketoLeadDelta.email: set IHEARDAI_FIELD_KEYS_FILE"):
        Redactor(policy, HMAC.encode()).event(_lead())  # a redactor for any model: when a lead comes
    with pytest.raises(ValueError, match="encrypts fields: set IHEARDAI_FIELD_KEYS_FILE"):
        RedactPii(None, topics.LEADS)  # what leads.build constructs: fails when the graph is built
    RedactPii(None, topics.TURNS)  # a step whose topics the policy does not encrypt needs no ring (kpi)
    Redactor(policy, HMAC.encode(), None, models=[CONTRACTS[topics.TURNS]])
    decrypt_only = KeyRing(fc.new_ring("k1").keys, None)
    with pytest.raises(ValueError, match="has no active key"):
        Redactor(policy, HMAC.encode(), decrypt_only, models=[MarketoLeadDelta])


def test_redactor_encrypts_lead_fields_bound_to_their_place(ring):
    red, counts = Redactor(PiiPolicy.load(), HMAC.encode(), ring).event(_lead())
    c = FieldCipher(ring)
    assert red.email.endswith("@acme-corp.com") and c.decrypt(red.email, [EMAIL_CTX]) == "Jane.Doe@Acme-Corp.com"
    assert c.decrypt(red.first_name, [NAME_CTX]) == "Jane"
    assert c.decrypt(red.last_name, [context(topics.LEADS, "last_name")]) == "Doe"
    assert c.decrypt(red.phone, [context(topics.LEADS, "phone")]) == "+1 415 555 0132"
    with pytest.raises(InvalidToken):
        c.decrypt(red.first_name, [context(topics.LEADS, "last_name")])
    assert red.company == "Acme" and red.lead_id == 7
    pii = red.transformation_metadata()["pii"]
    assert pii["encrypted"] == ["email", "first_name", "last_name", "phone"]
    assert "Jane" not in json.dumps(red.transformation_metadata())
    # empty and missing values stay what they are
    red2, _ = Redactor(PiiPolicy.load(), HMAC.encode(), ring).event(_lead(first_name="", phone=None))
    assert red2.first_name == "" and red2.phone is None


def test_scores_and_rows_of_an_encrypted_lead(ring):
    red, _ = Redactor(PiiPolicy.load(), HMAC.encode(), ring).event(_lead(first_name="J" * 150, last_name="D" * 150))
    s = score_lead(red)
    assert s["email_domain"] == "acme-corp.com" and s["email_type"] == "corporate"
    assert s == {**score_lead(_lead()), "full_name": s["full_name"]}  # tokens score like the clear values
    row = lead_to_row(Scored(red, s))
    assert len(row["full_name"]) > 200  # never cut: a cut token does not decrypt
    c = FieldCipher(ring)
    _, columns = ENCRYPTED_COLUMNS["marketo_leads"]
    ctxs = {col: [context(topics.LEADS, f) for f in fs] for col, fs in columns.items()}
    assert c.decrypt_text(row["full_name"], ctxs["full_name"]) == "J" * 150 + " " + "D" * 150
    assert c.decrypt_text(row["email"], ctxs["email"]) == "Jane.Doe@Acme-Corp.com"
    assert c.decrypt_text(row["phone"], ctxs["phone"]) == "+1 415 555 0132"


def test_the_leads_composites_on_the_direct_runner_write_tokens(ring_env, ring):
    leads_in = [_lead(lead_id=i, marketo_guid=f"g{i}", email=f"p{i}@example.org") for i in range(1, 6)]
    ring_json = ring.to_json()  # the cipher holds AESGCM objects, which do not pickle; the test's own copy

    def clear(row):
        c = FieldCipher(KeyRing.from_json(ring_json))
        return row["lead_id"], c.decrypt(row["email"], [EMAIL_CTX]), row["email"].endswith("@example.org")

    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        red, dead = split_dead_letters(p | beam.Create(leads_in) | "RedactLeads" >> RedactPii(None, topics.LEADS))
        scored, dead2 = split_dead_letters(red | ScoreLeads())
        rows = scored | beam.Map(lambda sc: lead_to_row(sc))
        assert_that(rows | "Clear" >> beam.Map(clear),
                    equal_to([(i, f"p{i}@example.org", True) for i in range(1, 6)]), label="decrypted")
        assert_that(rows | "NoClear" >> beam.Map(lambda r: "Jane" in json.dumps(r, default=str)),
                    equal_to([False] * 5), label="no_clear_names")
        assert_that((dead, dead2) | beam.Flatten(), equal_to([]), label="dead_letters")


def test_the_leads_pipeline_graph_builds_with_a_ring_and_refuses_without(monkeypatch, tmp_path, ring):
    from beam_pipelines import leads

    def fake_read(_p, _opts, names):
        return {t: _p | f"Empty[{t}]" >> beam.Create([]) for t in names}, _p | "NoDead" >> beam.Create([])

    written = []
    monkeypatch.setattr(leads, "read_and_validate", fake_read)
    monkeypatch.setattr(leads, "write_dead_letters", lambda _o, dls, names: written.append(len(dls)))
    opts = PipelineOptions(["--runner=DirectRunner"])
    monkeypatch.setenv("PII_HMAC_KEY", HMAC)
    monkeypatch.setenv(fc.KEYS_ENV, ring.to_json())
    monkeypatch.delenv(fc.KEYS_FILE_ENV, raising=False)
    p = beam.Pipeline(options=opts)
    leads.build(p, opts)
    assert written == [4] and "RedactLeads" in {t.full_label for t in p.transforms_stack[0].parts}
    monkeypatch.delenv(fc.KEYS_ENV)
    with pytest.raises(ValueError, match="IHEARDAI_FIELD_KEYS_FILE"):
        leads.build(beam.Pipeline(options=opts), opts)


def test_the_ring_is_not_pickled_into_the_graph(ring_env, ring):
    from apache_beam.internal import pickler

    fn = RedactPii(None, topics.LEADS)
    blob = pickler.dumps(fn)
    for key in ring.keys.values():
        assert key not in blob and json.loads(ring.to_json())["keys"]["k1"].encode() not in blob


# --- the command ------------------------------------------------------------------------------------------

def _run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    rc = fc.main(argv, io.StringIO(stdin), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_decrypt_command_plain_lines_and_rows(ring_env, ring):
    c = FieldCipher(ring)
    e1, e2 = c.encrypt_email("a@x.io", EMAIL_CTX), c.encrypt_email("b@y.io", EMAIL_CTX)
    assert _run(["decrypt", "--field", EMAIL_CTX], f"{e1}\n{e2}\n") == (0, "a@x.io\nb@y.io\n", "")
    name = f"{c.encrypt('Jane', NAME_CTX)} {c.encrypt('Doe', context(topics.LEADS, 'last_name'))}"
    row = {"lead_id": 3, "email": e1, "full_name": name, "company": "Acme", "lead_quality_score": 9}
    rc, out, err = _run(["decrypt", "--jsonl", "--table", "marketo_leads"], json.dumps(row) + "\n")
    assert rc == 0 and json.loads(out) == {**row, "email": "a@x.io", "full_name": "Jane Doe"}
    ev = {"lead_id": 3, "first_name": c.encrypt("Jane", NAME_CTX)}
    rc, out, _ = _run(["decrypt", "--jsonl", "--topic", topics.LEADS], json.dumps(ev))
    assert rc == 0 and json.loads(out)["first_name"] == "Jane"


def test_decrypt_command_refuses_moved_tokens_and_works_without_flags_for_keys(ring_env, ring):
    c = FieldCipher(ring)
    moved = {"lead_id": 1, "company": c.encrypt("Jane", NAME_CTX)}  # a name token copied into company
    rc, out, err = _run(["decrypt", "--jsonl", "--table", "marketo_leads"], json.dumps(moved) + "\n")
    assert rc == 1 and out == "{}\n" and "line 1" in err and "Jane" not in out + err
    rc, out, err = _run(["decrypt", "--field", EMAIL_CTX], c.encrypt("Jane", NAME_CTX) + "\n")
    assert rc == 1 and "belongs to another field" in err
    with pytest.raises(SystemExit):
        _run(["decrypt", "--field", EMAIL_CTX, "--key", "abc"])  # keys are never flags


def test_decrypt_command_without_a_ring(no_ring):
    rc, _, err = _run(["decrypt", "--field", EMAIL_CTX], "enc:v1:k1:" + "A" * 40 + "\n")
    assert rc == 2 and "IHEARDAI_FIELD_KEYS_FILE" in err


def test_key_commands_rotate_a_ring_file(tmp_path, monkeypatch):
    path = tmp_path / "ring.json"
    assert _run(["add-key", "--file", str(path), "--kid", "k1"])[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    monkeypatch.setenv(fc.KEYS_FILE_ENV, str(path))
    old = FieldCipher(fc.load_key_ring()).encrypt("Jane", NAME_CTX)
    assert _run(["add-key", "--file", str(path), "--kid", "k2", "--activate"])[0] == 0
    ring = fc.load_key_ring()
    assert ring.active == "k2" and set(ring.keys) == {"k1", "k2"}
    rc, moved, _ = _run(["reencrypt", "--field", NAME_CTX], old + "\n")
    assert rc == 0 and moved.startswith("enc:v1:k2:")
    assert _run(["remove-key", "--file", str(path), "--kid", "k2"])[0] == 2  # the active key stays
    assert _run(["remove-key", "--file", str(path), "--kid", "k1"])[0] == 0
    assert _run(["decrypt", "--field", NAME_CTX], moved) == (0, "Jane\n", "")
    assert _run(["decrypt", "--field", NAME_CTX], old + "\n")[0] == 1


def test_log_redaction_knows_each_key_of_a_ring(tmp_path, ring):
    import logging

    from events.logs import RedactSecrets, secret_values

    path = tmp_path / "ring.json"
    fc.write_ring_file(ring, path)
    b64 = json.loads(ring.to_json())["keys"]["k1"]
    assert b64 in secret_values({fc.KEYS_FILE_ENV: str(path)})
    assert b64 in secret_values({fc.KEYS_ENV: ring.to_json()})
    record = logging.LogRecord("x", logging.INFO, "f", 1, "loaded key %s", (b64,), None)
    RedactSecrets(secret_values({fc.KEYS_FILE_ENV: str(path)})).filter(record)
    assert b64 not in record.getMessage() and "<redacted>" in record.getMessage()
