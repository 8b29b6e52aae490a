"""Event contracts: one versioned model per topic, extra fields kept, strict types, epoch-ms timestamps."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from events import topics
from events.contracts import AgentTurnCompleted, BillingUsageMetered, EventModel, FrontendUserInteraction, MarketoLeadDelta
from events.topics import CONTRACTS
from workloads.generator import WORKLOADS, TurnWorkload

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000


def test_every_topic_has_a_versioned_contract_with_an_epoch_ms_timestamp():
    assert set(CONTRACTS) == {t.name for t in topics.TOPICS}
    for model in CONTRACTS.values():
        assert issubclass(model, EventModel)
        assert {"schema_version", "timestamp"} <= set(model.model_fields)
        assert model.model_fields["timestamp"].is_required()


@pytest.mark.parametrize("model", [m for m in CONTRACTS.values() if m is not MarketoLeadDelta])
def test_product_events_carry_the_tenant_for_billing(model):
    assert "account_id" in model.model_fields


def test_generated_events_of_every_topic_validate():
    for topic, workload in WORKLOADS.items():
        for ev in workload(seed=3).generate(20).events:
            assert CONTRACTS[topic].model_validate(ev).timestamp == ev["timestamp"]
    for rec in TurnWorkload(seed=3, malformed_rate=0).generate(20).records:
        AgentTurnCompleted.model_validate_json(rec.value)


def test_extra_fields_are_kept():
    ev = FrontendUserInteraction.model_validate_json(
        b'{"event_type":"click","session_id":"s","timestamp":%d,"ab_variant":"B"}' % TS)
    assert ev.extra_fields() == {"ab_variant": "B"}
    assert '"ab_variant":"B"' in ev.model_dump_json()


@pytest.mark.parametrize("payload", [
    {"account_id": "a", "hour_start_ms": "0", "timestamp": TS},  # string for an int
    {"account_id": "a", "hour_start_ms": 0, "turns": 1.5, "timestamp": TS},  # fraction for an int
    {"account_id": "a", "hour_start_ms": 0, "timestamp": TS + 0.5},  # fractional millis
    {"hour_start_ms": 0, "timestamp": TS},  # missing account_id
    {"account_id": "a", "hour_start_ms": 0, "timestamp": TS, "schema_version": 2},  # newer than we know
])
def test_wrong_types_missing_fields_and_unknown_versions_are_errors(payload):
    with pytest.raises(ValidationError):
        BillingUsageMetered.model_validate(payload)


def test_marketo_lead_delta_stays_lax_because_marketo_types_loosely():
    lead = MarketoLeadDelta.model_validate({"lead_id": "42", "marketo_guid": "g", "timestamp": TS})
    assert lead.lead_id == 42


def test_with_metadata_copies_and_never_mutates():
    ev = FrontendUserInteraction.model_validate({"event_type": "click", "session_id": "s", "timestamp": TS,
                                                 "x": "1"})
    copy = ev.with_metadata({"pii": {"redacted": {}}}, element_text="<EMAIL>", x="2")
    assert (ev.element_text, ev.x, ev.transformation_metadata()) == (None, "1", {"schema_version": 1})
    assert (copy.element_text, copy.x) == ("<EMAIL>", "2")
    assert copy.transformation_metadata() == {"schema_version": 1, "pii": {"redacted": {}}}
