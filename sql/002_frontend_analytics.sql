-- Frontend analytics: one row per event_id; enhanced columns from the seed README.
CREATE TABLE IF NOT EXISTS frontend_analytics (
    event_id          VARCHAR(100) PRIMARY KEY,
    session_id        VARCHAR(100),
    user_id           TEXT,
    event_type        VARCHAR(50) NOT NULL,
    page_url          TEXT,
    widget_id         TEXT,
    interaction_type  TEXT,
    page_category     VARCHAR(50),
    device_type       VARCHAR(20),
    browser           VARCHAR(50),
    user_segment      VARCHAR(50),
    engagement_score  INTEGER CHECK (engagement_score >= 0 AND engagement_score <= 100),
    conversion_stage  VARCHAR(50),
    quality_score     INTEGER CHECK (quality_score >= 0 AND quality_score <= 100),
    ts_ms             BIGINT NOT NULL,
    "timestamp"       TIMESTAMP WITH TIME ZONE NOT NULL,
    metadata          JSONB,
    scorer_version    TEXT,
    transformation_metadata JSONB,
    updated_at        TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS frontend_analytics_session_idx ON frontend_analytics (session_id);
CREATE INDEX IF NOT EXISTS frontend_analytics_ts_idx ON frontend_analytics ("timestamp");
