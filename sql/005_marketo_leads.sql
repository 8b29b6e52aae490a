-- Marketo leads with scores (seed README), plus the extractor's durable cursor.
CREATE TABLE IF NOT EXISTS marketo_leads (
    lead_id                 INTEGER PRIMARY KEY,
    email                   VARCHAR(255) NOT NULL,
    full_name               VARCHAR(200),
    company                 VARCHAR(255),
    lead_source             VARCHAR(100),
    email_domain            VARCHAR(100),
    lead_quality_score      INTEGER CHECK (lead_quality_score >= 0 AND lead_quality_score <= 100),
    engagement_level        VARCHAR(20),
    conversion_probability  DOUBLE PRECISION,
    recommended_action      VARCHAR(50),
    geographic_info         JSONB,
    transformation_metadata JSONB,
    scorer_version          TEXT,
    source_ts_ms            BIGINT,
    created_at              TIMESTAMP WITH TIME ZONE,
    updated_at              TIMESTAMP WITH TIME ZONE
);
CREATE TABLE IF NOT EXISTS marketo_sync_state (
    name        TEXT PRIMARY KEY,
    state       JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
