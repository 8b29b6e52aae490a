-- Session KPIs: one row per session, rewritten by each pane of its session window.
CREATE TABLE IF NOT EXISTS session_kpis (
    session_id      TEXT PRIMARY KEY,
    user_id         TEXT,
    account_id      TEXT,
    channel         TEXT,
    turns           INT NOT NULL DEFAULT 0,
    tokens_in       BIGINT NOT NULL DEFAULT 0,
    tokens_out      BIGINT NOT NULL DEFAULT 0,
    avg_latency_ms  DOUBLE PRECISION,
    tool_calls      INT NOT NULL DEFAULT 0,
    started_at      TIMESTAMPTZ,
    ended_at        TIMESTAMPTZ,
    is_final        BOOLEAN NOT NULL DEFAULT FALSE,
    pane_version    BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
