-- Billing usage per account per event-time hour; `revision` grows with every correction (late data).
CREATE TABLE IF NOT EXISTS billing_usage (
    account_id          TEXT NOT NULL,
    hour_start          TIMESTAMPTZ NOT NULL,
    turns               BIGINT NOT NULL DEFAULT 0,
    tokens_in           BIGINT NOT NULL DEFAULT 0,
    tokens_out          BIGINT NOT NULL DEFAULT 0,
    tool_invocations    BIGINT NOT NULL DEFAULT 0,
    estimated_cost_usd  DECIMAL(14, 6) NOT NULL DEFAULT 0,
    revision            BIGINT NOT NULL DEFAULT 0,
    is_final            BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (account_id, hour_start)
);
