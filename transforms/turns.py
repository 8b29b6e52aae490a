"""Agent turns -> `agent_turns` rows (pure functions).

`turn_to_row(turn)` gives the base columns (AGENT_TURN_COLUMNS); given a `Scored` turn from ScoreAgentTurns
it also fills the enhanced columns of the seed README (AGENT_TURN_SCORED_COLUMNS). Enhanced keys are present
(None) on unscored rows too, so one row shape serves both.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Union

from events.contracts import AgentTurnCompleted
from transforms.scoring import Scored

AGENT_TURN_COLUMNS = (
    "session_id", "turn_id", "user_id", "account_id", "channel", "model", "tokens_in", "tokens_out",
    "total_tokens", "latency_ms", "response_text", "tools_used", "ts_ms", "timestamp",
    "transformation_metadata",
)
AGENT_TURN_SCORE_COLUMNS = (
    "model_family", "tokens_per_second", "efficiency_score", "quality_score", "business_value_score",
    "sentiment", "topics", "language", "estimated_cost_usd", "scorer_version",
)
AGENT_TURN_SCORED_COLUMNS = AGENT_TURN_COLUMNS + AGENT_TURN_SCORE_COLUMNS
AGENT_TURN_KEYS = ("session_id", "turn_id")
AGENT_TURN_JSON = ("tools_used", "transformation_metadata", "topics")


def turn_to_row(turn: Union[AgentTurnCompleted, Scored]) -> Dict[str, Any]:
    scores: Dict[str, Any] = {}
    if isinstance(turn, Scored):
        turn, scores = turn.event, turn.scores
    meta = turn.transformation_metadata()
    if scores:
        meta["scorer_version"] = scores["scorer_version"]
        meta["price_table_version"] = scores.get("price_table_version")
    row = {
        "session_id": turn.session_id,
        "turn_id": turn.turn_id,
        "user_id": turn.user_id,
        "account_id": turn.account_id,
        "channel": turn.channel,
        "model": turn.model_name,
        "tokens_in": turn.tokens_in,
        "tokens_out": turn.tokens_out,
        "total_tokens": turn.tokens_in + turn.tokens_out,
        "latency_ms": turn.latency_ms,
        "response_text": turn.response_text,
        "tools_used": list(turn.tools_used),
        "ts_ms": turn.timestamp,
        "timestamp": datetime.fromtimestamp(turn.timestamp / 1000, tz=timezone.utc),
        "transformation_metadata": meta,
    }
    for col in AGENT_TURN_SCORE_COLUMNS:
        row[col] = scores.get(col)
    return row


def session_state_event(scored: Scored) -> Dict[str, Any]:
    """A scored (redacted) turn -> the Redis session-state writer's input; event time orders the state (seq)."""
    t = scored.event
    return {"session_id": t.session_id, "turn_id": t.turn_id, "seq": t.timestamp, "event_time_ms": t.timestamp,
            "message": t.response_text, "channel": t.channel, "status": "active",
            "response_time_ms": t.latency_ms}
