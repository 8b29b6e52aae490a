"""Agent turns -> `agent_turns` rows (pure functions; the scorer adds the enhanced columns)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict

from transforms.contracts import AgentTurnCompleted

AGENT_TURN_COLUMNS = (
    "session_id", "turn_id", "user_id", "account_id", "channel", "model", "tokens_in", "tokens_out",
    "total_tokens", "latency_ms", "response_text", "tools_used", "ts_ms", "timestamp",
    "transformation_metadata",
)
AGENT_TURN_KEYS = ("session_id", "turn_id")
AGENT_TURN_JSON = ("tools_used", "transformation_metadata", "topics")


def turn_to_row(turn: AgentTurnCompleted) -> Dict[str, Any]:
    extra = turn.extra_fields()
    return {
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
        "transformation_metadata": {"schema_version": turn.schema_version,
                                    "extra_fields": sorted(extra)} if extra else
                                   {"schema_version": turn.schema_version},
    }
