"""sql/008 on a throwaway Postgres (never the shared stack's): the lead columns that hold field_crypto tokens
are TEXT after the migration, rows written before it survive, and a lead with long names and address is
upserted by the sink's own upserter and decrypts back from the table."""

from __future__ import annotations

import pytest

from events import topics
from events.contracts import MarketoLeadDelta
from io_connectors.postgres import PostgresUpserter
from io_connectors.settings import PostgresSettings
from sql import migrate
from tests.throwaway import throwaway_postgres
from transforms.field_crypto import FieldCipher, context, new_ring
from transforms.pii import PiiPolicy, Redactor
from transforms.rows import ENCRYPTED_COLUMNS, LEAD_COLUMNS, LEAD_JSON, LEAD_KEYS, lead_to_row
from transforms.scoring import Scored, score_lead

pytestmark = pytest.mark.integration
TS = 1_795_000_000_000


@pytest.fixture(scope="module")
def pg():
    try:
        with throwaway_postgres() as kwargs:
            yield PostgresSettings(kwargs["host"], kwargs["port"], kwargs["dbname"], kwargs["user"],
                                   kwargs["password"], "disable")
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _types(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'marketo_leads'")
        return dict(cur.fetchall())


def test_migration_008_keeps_old_rows_and_stores_tokens_whole(pg, monkeypatch):
    import psycopg2

    all_files = migrate.migrations()
    monkeypatch.setattr(migrate, "migrations", lambda: [p for p in all_files if p.name < "008"])
    migrate.apply(pg, out=open("/dev/null", "w"))
    conn = psycopg2.connect(**pg.connect_kwargs())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("INSERT INTO marketo_leads (lead_id, email, full_name) VALUES (1, 'ps_x@old.io', '<PERSON>')")
    assert _types(conn)["email"] == "character varying" and "phone" not in _types(conn)
    monkeypatch.setattr(migrate, "migrations", lambda: all_files)
    assert migrate.apply(pg, out=open("/dev/null", "w")) == ["008_marketo_leads_encrypted.sql"]
    assert migrate.apply(pg, out=open("/dev/null", "w")) == []  # once
    types = _types(conn)
    assert (types["email"], types["full_name"], types["phone"]) == ("text", "text", "text")
    with conn.cursor() as cur:
        cur.execute("SELECT email, full_name FROM marketo_leads WHERE lead_id = 1")
        assert cur.fetchone() == ("ps_x@old.io", "<PERSON>")

    ring = new_ring("k1")
    lead = MarketoLeadDelta.model_validate({
        "lead_id": 2, "marketo_guid": "g2", "timestamp": TS, "email": "x" * 60 + "@" + "d" * 180 + ".example.com",
        "first_name": "Ä" * 120, "last_name": "Ø" * 120, "phone": "+44 20 7946 0958", "company": "Acme"})
    red, _ = Redactor(PiiPolicy.load(), b"k" * 32, ring).event(lead)
    row = lead_to_row(Scored(red, score_lead(red)))
    assert len(row["email"]) > 255 and len(row["full_name"]) > 200  # beyond the old VARCHAR limits
    upserter = PostgresUpserter("marketo_leads", LEAD_KEYS, LEAD_COLUMNS, version_column="source_ts_ms",
                                json_columns=LEAD_JSON, settings=pg)
    upserter.connect()
    try:
        assert upserter.write([row]) == []
    finally:
        upserter.close()
    with conn.cursor() as cur:
        cur.execute("SELECT email, full_name, phone, email_domain FROM marketo_leads WHERE lead_id = 2")
        email, full_name, phone, domain = cur.fetchone()
    conn.close()
    _, sources = ENCRYPTED_COLUMNS["marketo_leads"]
    ctx = {col: [context(topics.LEADS, f) for f in fs] for col, fs in sources.items()}
    c = FieldCipher(ring)
    assert c.decrypt_text(email, ctx["email"]) == lead.email and domain == ("d" * 180)[:100]
    assert c.decrypt_text(full_name, ctx["full_name"]) == "Ä" * 120 + " " + "Ø" * 120
    assert c.decrypt_text(phone, ctx["phone"]) == "+44 20 7946 0958"
    assert "Ä" not in full_name and "7946" not in phone
