"""Event contracts: one typed, versioned pydantic model per event type.

Rules every model follows:
- `schema_version` names the contract version the producer wrote (default: the current one);
- timestamps are epoch milliseconds (`timestamp`), validated for plausibility by `ValidateEvents`;
- unknown extra fields are kept (`extra="allow"`), and reported in `transformation_metadata`;
- a missing required field or a wrong type is an error (a dead letter, never a crash).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EventModel(BaseModel):
    """Base of every contract: extra fields allowed and kept, strict-ish types, epoch-ms timestamp."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    schema_version: int = 1
    timestamp: int = Field(..., description="event time, epoch milliseconds")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _int_millis(cls, v: Any) -> Any:
        # bool is an int subclass; a float with a fraction is a unit mistake, not a timestamp in ms.
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("timestamp must be an integer number of epoch milliseconds")
        return v

    def extra_fields(self) -> Dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


class AgentTurnCompleted(EventModel):
    """`text.agent.turn.completed`: one finished conversation turn of the text agent."""

    event_type: str = "text_agent.turn_completed"
    session_id: str = Field(..., min_length=1, max_length=100)
    turn_id: str = Field(..., min_length=1, max_length=100)
    user_id: Optional[str] = None
    account_id: Optional[str] = Field(None, description="tenant that billing aggregates on")
    channel: str = "web_chat"
    model_name: str = Field(..., min_length=1, max_length=100, alias="model_name")
    tokens_in: int = Field(..., ge=0)
    tokens_out: int = Field(..., ge=0)
    latency_ms: float = Field(..., ge=0)
    response_text: str = ""
    user_message: Optional[str] = None
    tools_used: List[str] = Field(default_factory=list)
    tool_results: Dict[str, Any] = Field(default_factory=dict)
    conversation_context: Dict[str, Any] = Field(default_factory=dict)


class LeadFieldChange(BaseModel):
    model_config = ConfigDict(extra="allow")

    field: str
    old_value: Optional[Any] = None
    new_value: Optional[Any] = None


class MarketoLeadDelta(EventModel):
    """`marketo.leads.delta`: one change of one Marketo lead, keyed by lead_id in Kafka.

    `marketo_guid` is the activity's marketoGUID (unique per change; consumers dedupe on it); rows of a bulk
    lead export carry `bulk:<leadId>:<updatedAt ms>`. `timestamp` is when the change happened (ms).
    """

    lead_id: int = Field(..., ge=1)
    marketo_guid: str = Field(..., min_length=1)
    change_type: str = "lead_change"  # lead_change | new_lead | bulk_export
    activity_type_id: Optional[int] = None
    email: Optional[str] = None
    first_name: Optional[str] = None
    last_name: Optional[str] = None
    company: Optional[str] = None
    title: Optional[str] = None
    phone: Optional[str] = None
    lead_source: Optional[str] = None
    lead_status: Optional[str] = None
    lead_score: Optional[int] = None
    country: Optional[str] = None
    state: Optional[str] = None
    city: Optional[str] = None
    created_at_ms: Optional[int] = None
    updated_at_ms: Optional[int] = None
    changes: List[LeadFieldChange] = Field(default_factory=list)
    attributes: Dict[str, Any] = Field(default_factory=dict)


CONTRACTS = {
    "marketo.leads.delta": MarketoLeadDelta,
    "text.agent.turn.completed": AgentTurnCompleted,
}
