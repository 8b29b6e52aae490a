"""Event contracts: one typed, versioned pydantic model per event type (the topic registry,
`events.topics`, maps each topic to its model: `CONTRACTS`).

Rules every model follows:
- `schema_version` names the contract version the producer wrote; a version newer than the model knows
  (`SCHEMA_VERSION`, the field's `le` bound) is an error, older ones are accepted (fields are only ever
  added, optional);
- timestamps are epoch milliseconds (`timestamp` and every `*_ms` field), validated for plausibility by
  `ValidateEvents`;
- unknown extra fields are kept (`extra="allow"`) and listed in `transformation_metadata`;
- a missing required field or a wrong type is an error (a dead letter, never a crash). Models are strict:
  "5" is not an int. `MarketoLeadDelta` alone stays lax, because Marketo's REST API types loosely;
- `account_id` is the tenant (the customer whose site runs the widget); billing aggregates on it.

JSON Schema for producers in other languages: `python -m transforms.export_schemas` writes `schemas/`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from events.dead_letters import Source  # (topic, partition, offset) of an event's Kafka record

# Upper bounds of integer fields (issue 15: a huge integer was valid, then overflowed a column or a sum downstream,
# or crashed a row builder). Counts fit a Postgres INTEGER even as a sum of two (total_tokens); sums of many fit
# BIGINT. Epoch-ms fields stay within what datetime and timestamptz represent (year 9999).
MAX_COUNT = 10 ** 9
# Tokens of one turn: no model reads or writes more than a few million; 10 M keeps the priciest model of the
# price table (config/model_prices.json, $0.09 per 1k tokens in + out) below agent_turns.estimated_cost_usd's
# DECIMAL(10, 6) maximum (9,999.999999).
MAX_TURN_TOKENS = 10 ** 7
MAX_INT32 = 2 ** 31 - 1
MAX_BIGINT = 2 ** 63 - 1
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


_FIELD_NAMES: Dict[type, frozenset] = {}  # per-class field names, for the hot path of with_metadata
# BaseModel's slots, set directly by with_metadata (what object.__setattr__ does, minus the name lookup)
_set_dict = object.__setattr__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _meta_of(event: BaseModel) -> Dict[str, Any]:
    private = event.__pydantic_private__
    return private.get("_meta", {}) if private else {}


def set_metadata(event: BaseModel, meta: Dict[str, Any], source: Optional[Source] = None) -> None:
    """Attach metadata (and the record's source position) to an event this code just created
    (validation); everyone else uses with_metadata / with_source, which copy."""
    _set_private(event, {"_meta": meta, "_src": source})


# For validation's hot path: set_private_state(event, {"_src": ...}) on an event it just created.
set_private_state = _set_private


class EventModel(BaseModel):
    """Base of every contract: extra fields allowed and kept, epoch-ms timestamp, versioned.

    `transformation_metadata()` is what the transform layer learnt about the event (extra fields, PII
    kinds and counts redacted, scorer version); it is never part of the payload, so it lives in pydantic's
    private-state slot (`__pydantic_private__ = {"_meta": {...}, "_src": (topic, partition, offset)}`, kept
    by pickling and copies). It is not a declared PrivateAttr because that costs a Python-level init on
    every validation (~8% of the transform layer).

    `source()` is the (topic, partition, offset) of the Kafka record the event was parsed from, set by
    validation and kept by `with_metadata`, so that every later step's dead letter names the true record
    (`DeadLetter.of_event`). It is not metadata: rows never carry it.
    """

    # allow_inf_nan=False: NaN and +-Infinity (and 1e999, which parses as inf) are not a latency or a cost
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False, allow_inf_nan=False)
    SCHEMA_VERSION: ClassVar[int] = 1

    # le: a version newer than this consumer knows is an error (a model that bumps SCHEMA_VERSION redeclares it)
    schema_version: int = Field(1, ge=1, le=1, description="contract version the producer wrote")
    timestamp: int = Field(..., description="event time, epoch milliseconds")


    @field_validator("timestamp", mode="before")
    @classmethod
    def _int_millis(cls, v: Any) -> Any:
        # bool is an int subclass; a float with a fraction is a unit mistake, not a timestamp in ms.
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError("timestamp must be an integer number of epoch milliseconds")
        return int(v) if isinstance(v, float) else v

    def extra_fields(self) -> Dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def transformation_metadata(self) -> Dict[str, Any]:
        """A copy of the metadata the transform layer attached (schema version always included)."""
        return {"schema_version": self.schema_version, **_meta_of(self)}

    def source(self) -> Optional[Source]:
        """(topic, partition, offset) of the record this event was parsed from; None if it was not."""
        private = self.__pydantic_private__
        return private.get("_src") if private else None

    def with_source(self, topic: Optional[str], partition: Optional[int] = None,
                    offset: Optional[int] = None) -> "EventModel":
        """A copy that carries this source position (events built in code, tests)."""
        copy = self.with_metadata()
        copy.__pydantic_private__["_src"] = (topic, partition, offset)
        return copy

    def with_metadata(self, update: Optional[Dict[str, Any]] = None, **fields: Any) -> "EventModel":
        """A copy with `fields` replaced and `update` merged into the metadata; the original is unchanged
        (Beam elements may be shared between branches, so transforms never mutate their input).

        Like `model_copy(update=...)` (no re-validation), written out because it runs on every event and
        pydantic's generic copy costs ~4x more."""
        cls = type(self)
        copy = cls.__new__(cls)
        extra = self.__pydantic_extra__
        values = self.__dict__.copy()
        if fields:
            names = _FIELD_NAMES.get(cls)
            if names is None:
                names = _FIELD_NAMES[cls] = frozenset(cls.model_fields)
            if names.issuperset(fields):
                values.update(fields)
            else:
                values.update({k: v for k, v in fields.items() if k in names})
                if extra is not None:
                    extra = {**extra, **{k: v for k, v in fields.items() if k not in names}}
            fields_set = self.__pydantic_fields_set__ | fields.keys()
        else:
            fields_set = set(self.__pydantic_fields_set__)
        private = self.__pydantic_private__
        if private:
            meta, src = private.get("_meta"), private.get("_src")
        else:
            meta = src = None
        _set_dict(copy, "__dict__", values)
        _set_fields_set(copy, fields_set)
        _set_extra(copy, extra)
        _set_private(copy, {"_meta": {**meta, **update} if meta and update else
                            dict(meta) if meta else dict(update) if update else {}, "_src": src})
        return copy


class StrictEventModel(EventModel):
    """Contracts we own end to end: no type coercion ("5" is not an int, 1.5 is not an int)."""

    model_config = ConfigDict(strict=True)


# --- text-agent-server ------------------------------------------------------------------------------------

class AgentTurnCompleted(StrictEventModel):
    """`text.agent.turn.completed`: one finished conversation turn of the text agent (seed integration
    guide payload, plus `account_id`)."""

    event_type: str = "text_agent.turn_completed"
    session_id: str = Field(..., min_length=1, max_length=100)
    turn_id: str = Field(..., min_length=1, max_length=100)
    user_id: Optional[str] = None
    account_id: Optional[str] = Field(None, description="tenant that billing aggregates on")
    channel: str = "web_chat"
    model_name: str = Field(..., min_length=1, max_length=100, alias="model_name")
    tokens_in: int = Field(..., ge=0, le=MAX_TURN_TOKENS)
    tokens_out: int = Field(..., ge=0, le=MAX_TURN_TOKENS)
    latency_ms: float = Field(..., ge=0)
    response_text: str = ""
    user_message: Optional[str] = None
    tools_used: List[str] = Field(default_factory=list)
    tool_results: Dict[str, Any] = Field(default_factory=dict, description="{tool name: {success: bool}}")
    conversation_context: Dict[str, Any] = Field(
        default_factory=dict, description="previous_turns, topic_history, user_intent")


class AgentToolInvoked(StrictEventModel):
    """`agent.tool.invoked`: one tool call made by the agent while answering a turn."""

    event_type: str = "agent.tool_invoked"
    invocation_id: str = Field(..., min_length=1, max_length=100, description="unique per call")
    session_id: str = Field(..., min_length=1, max_length=100)
    turn_id: Optional[str] = Field(None, max_length=100)
    user_id: Optional[str] = None
    account_id: Optional[str] = Field(None, description="tenant that billing aggregates on")
    tool_name: str = Field(..., min_length=1, max_length=100)
    success: bool
    latency_ms: float = Field(..., ge=0)
    error_message: Optional[str] = None
    arguments: Dict[str, Any] = Field(default_factory=dict, description="tool input; may hold PII")
    result_summary: Optional[str] = None
    input_bytes: Optional[int] = Field(None, ge=0, le=MAX_COUNT)
    output_bytes: Optional[int] = Field(None, ge=0, le=MAX_COUNT)


class AgentSessionUpdated(StrictEventModel):
    """`text.agent.session.updated`: a change of a conversation's state (the Redis hot-state fields)."""

    event_type: str = "text_agent.session_updated"
    session_id: str = Field(..., min_length=1, max_length=100)
    seq: int = Field(..., ge=0, le=MAX_BIGINT, description="monotonic per session: newer state has a larger seq")
    user_id: Optional[str] = None
    account_id: Optional[str] = Field(None, description="tenant that billing aggregates on")
    channel: str = "web_chat"
    status: str = Field("active", description="active | idle | escalated | ended")
    last_turn_id: Optional[str] = None
    last_message: Optional[str] = None
    total_turns: int = Field(0, ge=0, le=MAX_COUNT)
    avg_response_time_ms: Optional[float] = Field(None, ge=0)
    started_at_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    ended_at_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)


# --- iheardAI_Frontend ------------------------------------------------------------------------------------

class _FrontendBase(StrictEventModel):
    session_id: str = Field(..., min_length=1, max_length=100)
    user_id: Optional[str] = None
    account_id: Optional[str] = Field(None, description="tenant whose site runs the widget")
    page_url: Optional[str] = None
    user_agent: Optional[str] = None
    country: Optional[str] = None
    timezone: Optional[str] = None


class FrontendUserInteraction(_FrontendBase):
    """`frontend.user.interaction`: one UI event of the seed's `trackEvent` payload.

    `event_type` follows the funnel: page_view, widget_open, user_message (or message_sent),
    product_interest, conversion; plus click, scroll, form_submit... `event_id` is optional for producers
    that predate it; the row builder then derives a deterministic one.
    """

    event_type: str = Field(..., min_length=1, max_length=50)
    event_id: Optional[str] = Field(None, min_length=1, max_length=100)
    page_title: Optional[str] = None
    referrer: Optional[str] = None
    screen_resolution: Optional[str] = None
    viewport_size: Optional[str] = None
    widget_id: Optional[str] = None
    interaction_type: Optional[str] = None
    time_on_page: Optional[int] = Field(None, ge=0, le=MAX_COUNT, description="seconds since the page loaded")
    element_id: Optional[str] = None
    element_class: Optional[str] = None
    element_text: Optional[str] = None
    click_coordinates: Optional[Dict[str, float]] = None
    message_length: Optional[int] = Field(None, ge=0, le=MAX_COUNT)


class FrontendSessionAnalytics(_FrontendBase):
    """`frontend.session.analytics`: a browser session's summary, sent on page hide and at session end."""

    event_type: str = "frontend.session_analytics"
    started_at_ms: int = Field(..., ge=0, le=MAX_EPOCH_MS)
    ended_at_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    duration_ms: int = Field(0, ge=0, le=MAX_COUNT)
    page_views: int = Field(0, ge=0, le=MAX_COUNT)
    interactions: int = Field(0, ge=0, le=MAX_COUNT)
    widget_opens: int = Field(0, ge=0, le=MAX_COUNT)
    messages_sent: int = Field(0, ge=0, le=MAX_COUNT)
    landing_page: Optional[str] = None
    exit_page: Optional[str] = None
    referrer: Optional[str] = None
    utm_source: Optional[str] = None
    utm_medium: Optional[str] = None
    utm_campaign: Optional[str] = None
    is_bounce: bool = False


class FrontendWidgetPerformance(_FrontendBase):
    """`frontend.widget.performance`: load and responsiveness of the chat widget on one page view."""

    event_type: str = "frontend.widget_performance"
    widget_id: str = Field(..., min_length=1, max_length=100)
    widget_version: Optional[str] = None
    load_time_ms: float = Field(..., ge=0)
    time_to_interactive_ms: Optional[float] = Field(None, ge=0)
    first_response_ms: Optional[float] = Field(None, ge=0, description="first agent reply after a message")
    js_errors: int = Field(0, ge=0, le=MAX_COUNT)
    render_errors: int = Field(0, ge=0, le=MAX_COUNT)
    connection_type: Optional[str] = None


# --- Marketo ----------------------------------------------------------------------------------------------

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

    lead_id: int = Field(..., ge=1, le=MAX_INT32)  # marketo_leads.lead_id is INTEGER
    marketo_guid: str = Field(..., min_length=1)
    change_type: str = "lead_change"  # lead_change | new_lead | bulk_export
    activity_type_id: Optional[int] = Field(None, ge=-MAX_INT32, le=MAX_INT32)
    email: Optional[str] = None
    first_name: Optional[str] = None
    last_name: Optional[str] = None
    company: Optional[str] = None
    title: Optional[str] = None
    phone: Optional[str] = None
    lead_source: Optional[str] = None
    lead_status: Optional[str] = None
    lead_score: Optional[int] = Field(None, ge=-MAX_COUNT, le=MAX_COUNT)
    country: Optional[str] = None
    state: Optional[str] = None
    city: Optional[str] = None
    created_at_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    updated_at_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    changes: List[LeadFieldChange] = Field(default_factory=list)
    attributes: Dict[str, Any] = Field(default_factory=dict)


# --- billing ----------------------------------------------------------------------------------------------

class BillingUsageMetered(StrictEventModel):
    """`billing.usage.metered`: usage of one account in one event-time hour (the `billing_usage` row).

    A later correction of the same (account_id, hour_start_ms) carries a larger `revision`; consumers keep
    the largest. `timestamp` is when this revision was emitted.
    """

    event_type: str = "billing.usage_metered"
    account_id: str = Field(..., min_length=1, max_length=100)
    hour_start_ms: int = Field(..., ge=0, le=MAX_EPOCH_MS, description="start of the event-time hour, epoch ms")
    turns: int = Field(0, ge=0, le=MAX_BIGINT)
    tokens_in: int = Field(0, ge=0, le=MAX_BIGINT)
    tokens_out: int = Field(0, ge=0, le=MAX_BIGINT)
    tool_invocations: int = Field(0, ge=0, le=MAX_BIGINT)
    estimated_cost_usd: float = Field(0.0, ge=0)
    revision: int = Field(0, ge=0, le=MAX_BIGINT)
    is_final: bool = False

