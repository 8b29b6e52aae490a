-- Frontend session engagement: one row per session_id, rewritten by each pane of its session window
-- (beam_pipelines.frontend); pane_version only grows with data, so an older pane never overwrites a newer one.
CREATE TABLE IF NOT EXISTS frontend_session_engagement (
    session_id      VARCHAR(100) PRIMARY KEY,
    user_id         TEXT,
    events          INT NOT NULL DEFAULT 0,
    duration_ms     BIGINT NOT NULL DEFAULT 0,
    furthest_stage  VARCHAR(50) CHECK (furthest_stage IN
                        ('page_view', 'widget_open', 'user_message', 'product_interest', 'conversion')),
    started_at      TIMESTAMPTZ,
    ended_at        TIMESTAMPTZ,
    is_final        BOOLEAN NOT NULL DEFAULT FALSE,
    pane_version    BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS frontend_session_engagement_ended_idx ON frontend_session_engagement (ended_at);
