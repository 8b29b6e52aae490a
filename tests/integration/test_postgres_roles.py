"""The Postgres roles of devstack/principals.py on a throwaway Postgres (never the shared one): each pipeline
role writes its own tables only (through the sink's own upserter), the analytics role only reads, a wrong
password is refused."""

from __future__ import annotations

import pytest

from devstack import principals as pr
from io_connectors.postgres import PostgresUpserter
from io_connectors.settings import PostgresSettings
from sql import migrate
from tests.throwaway import throwaway_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    import psycopg2

    try:
        cm = throwaway_postgres()
        kwargs = cm.__enter__()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    try:
        su = PostgresSettings(kwargs["host"], kwargs["port"], kwargs["dbname"], kwargs["user"], kwargs["password"],
                              "disable")
        migrate.apply(su, out=open("/dev/null", "w"))
        ps = pr.principals()
        passwords = pr.read_passwords(pr.ensure_passwords(tmp_path_factory.mktemp("pw"), ps)["postgres"])
        conn = psycopg2.connect(**su.connect_kwargs())
        conn.autocommit = True
        with conn.cursor() as cur:
            for stmt, params in pr.postgres_statements(ps, passwords, kwargs["dbname"]):
                cur.execute(stmt, params or None)
        conn.close()
        yield su, passwords
    finally:
        cm.__exit__(None, None, None)


def _as(pg, name, password=None):
    import psycopg2

    su, passwords = pg
    role = pr.by_name()[name].pg_role
    conn = psycopg2.connect(**{**su.connect_kwargs(), "user": role, "password": password or passwords[name]})
    conn.autocommit = True
    return conn


def _denied(conn, sql):
    import psycopg2

    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        with conn.cursor() as cur:
            cur.execute(sql)


def test_a_wrong_password_is_refused(pg):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        _as(pg, "pipeline-billing", "not-the-password")


def test_the_billing_role_cannot_write_agent_turns(pg):
    conn = _as(pg, "pipeline-billing")
    _denied(conn, "INSERT INTO agent_turns (session_id, turn_id) VALUES ('s', 't')")
    _denied(conn, "SELECT * FROM marketo_leads")
    _denied(conn, "DELETE FROM billing_usage")
    _denied(conn, "CREATE TABLE mine (x int)")
    with conn.cursor() as cur:
        cur.execute("SELECT has_table_privilege('billing_usage', 'INSERT'), has_table_privilege('billing_usage', "
                    "'UPDATE'), has_table_privilege('agent_turns', 'INSERT')")
        assert cur.fetchone() == (True, True, False)
    conn.close()


def test_the_leads_role_upserts_through_the_sink_and_analytics_only_reads(pg):
    from transforms.rows import LEAD_COLUMNS, LEAD_JSON, LEAD_KEYS

    su, passwords = pg
    role = pr.by_name()["pipeline-leads"].pg_role
    settings = PostgresSettings(su.host, su.port, su.dbname, role, passwords["pipeline-leads"], "disable")
    up = PostgresUpserter("marketo_leads", LEAD_KEYS, LEAD_COLUMNS, version_column="source_ts_ms",
                          json_columns=LEAD_JSON, settings=settings)
    up.connect()
    try:
        row = dict.fromkeys(LEAD_COLUMNS)
        row.update(lead_id=5, email="enc:v1:k1:x@acme.io", source_ts_ms=1, lead_quality_score=50)
        assert up.write([row]) == []
    finally:
        up.close()
    bi = _as(pg, "analytics")
    with bi.cursor() as cur:
        cur.execute("SELECT lead_id, email FROM marketo_leads")
        assert cur.fetchall() == [(5, "enc:v1:k1:x@acme.io")]  # BI users see tokens, never the address
    _denied(bi, "UPDATE marketo_leads SET lead_quality_score = 1")
    _denied(bi, "INSERT INTO agent_turns (session_id, turn_id) VALUES ('s', 't')")
    bi.close()
    kpi = _as(pg, "pipeline-kpi")
    _denied(kpi, "SELECT * FROM marketo_leads")
    kpi.close()
