-- Agent turns: one row per (session_id, turn_id); enhanced columns from the seed README.
CREATE TABLE IF NOT EXISTS agent_turns (
    session_id            VARCHAR(100) NOT NULL,
    turn_id               VARCHAR(100) NOT NULL,
    user_id               TEXT,
    account_id            TEXT,
    channel               TEXT DEFAULT 'text',
    model                 VARCHAR(100),
    model_family          VARCHAR(50),
    tokens_in             INTEGER DEFAULT 0,
    tokens_out            INTEGER DEFAULT 0,
    total_tokens          INTEGER DEFAULT 0,
    latency_ms            DOUBLE PRECISION,
    tokens_per_second     REAL DEFAULT 0,
    efficiency_score      INTEGER CHECK (efficiency_score >= 0 AND efficiency_score <= 100),
    quality_score         INTEGER CHECK (quality_score >= 0 AND quality_score <= 100),
    business_value_score  INTEGER CHECK (business_value_score >= 0 AND business_value_score <= 100),
    sentiment             VARCHAR(20),
    topics                JSONB,
    language              VARCHAR(10),
    estimated_cost_usd    DECIMAL(10, 6),
    response_text         TEXT,
    tools_used            JSONB,
    ts_ms                 BIGINT NOT NULL,
    "timestamp"           TIMESTAMP WITH TIME ZONE NOT NULL,
    scorer_version        TEXT,
    transformation_metadata JSONB,
    updated_at            TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (session_id, turn_id)
);
CREATE INDEX IF NOT EXISTS agent_turns_ts_idx ON agent_turns ("timestamp");
CREATE INDEX IF NOT EXISTS agent_turns_account_idx ON agent_turns (account_id, "timestamp");
