-- Session rows are the totals of the whole session_id (keyed state, transforms.keyed_totals). A session
-- that pauses longer than gap + lateness has several generations of state; each row written is one
-- generation, and the upsert (SESSION_KPI_MERGE / ENGAGEMENT_MERGE) keeps the generations before the current
-- one in base_* so that the row always holds their sum.
ALTER TABLE session_kpis
    ADD COLUMN IF NOT EXISTS latency_sum_ms       DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_turns           INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_tool_calls      INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_tokens_in       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_tokens_out      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_latency_sum_ms  DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_started_at      TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS generations          INT NOT NULL DEFAULT 1;
COMMENT ON TABLE session_kpis IS 'Totals per session_id over its whole life; is_final once inactive for gap + lateness';

ALTER TABLE frontend_session_engagement
    ADD COLUMN IF NOT EXISTS base_events          INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS base_furthest_stage  VARCHAR(50),
    ADD COLUMN IF NOT EXISTS base_started_at      TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS generations          INT NOT NULL DEFAULT 1;
