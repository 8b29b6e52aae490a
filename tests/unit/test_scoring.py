"""Scoring and enrichment: hand-computed cases, bounds, row builders and the Beam composites."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from events.contracts import (AgentTurnCompleted, FrontendSessionAnalytics, FrontendUserInteraction,
                                  FrontendWidgetPerformance, MarketoLeadDelta)
from workloads.generator import FrontendWorkload, LeadWorkload, TurnWorkload
from transforms.rows import FRONTEND_COLUMNS, LEAD_COLUMNS, frontend_to_row, lead_to_row
from transforms.scoring import (SCORER_VERSION, EnrichFrontendEvents, PriceTable, ScoreAgentTurns, Scored,
                                ScoreLeads, enrich_frontend, page_category, parse_user_agent, score_lead, score_turn)
from transforms.turns import AGENT_TURN_COLUMNS, AGENT_TURN_SCORED_COLUMNS, turn_to_row
from events.dead_letters import split_dead_letters

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
PRICES = PriceTable.load()
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.4 Mobile/15E148 Safari/604.1")
OPTS = PipelineOptions(["--runner=DirectRunner"])


def turn(**over):
    t = {"session_id": "s", "turn_id": "t", "model_name": "claude-3-haiku", "tokens_in": 1000, "tokens_out": 200,
         "latency_ms": 2000.0, "timestamp": TS,
         "response_text": "Thanks! Our Pro plan costs $49 per month and includes the Salesforce integration.",
         "user_message": "What is the price of the pro plan?", "tools_used": ["pricing_quote"],
         "tool_results": {"pricing_quote": {"success": True}}, "conversation_context": {"previous_turns": 2}}
    t.update(over)
    return AgentTurnCompleted.model_validate(t)


def test_turn_scores_hand_computed():
    s = score_turn(turn(), PRICES)
    # tps = 200 / 2 s = 100; efficiency = pct(0.5*min(100/50,1) + 0.5*(10000-2000)/9000) = pct(0.9444) = 94
    # cost = 1000/1000*0.00025 + 200/1000*0.00125 = 0.0005
    # quality = pct(0.4*1 + 0.3*1 + 0.3*1) = 100; business value = pct(0.5*1 + 0.3*1 + 0.2*2/5) = 88
    assert s == {"model_family": "claude", "total_tokens": 1200, "tokens_per_second": 100.0,
                 "estimated_cost_usd": 0.0005, "efficiency_score": 94, "quality_score": 100,
                 "business_value_score": 88, "sentiment": "neutral", "topics": ["integration", "pricing"],
                 "language": "en", "price_table_version": "2026-11", "scorer_version": SCORER_VERSION}


def test_turn_scores_hand_computed_failure_case():
    s = score_turn(turn(model_name="foo-1", latency_ms=0.0, response_text="Sorry, I cannot help.",
                        user_message="hi", tools_used=[], conversation_context={},
                        tool_results={"a": {"success": True}, "b": {"success": False}}), PRICES)
    # efficiency = pct(0.5*0 + 0.5*1) = 50; quality = pct(0.4*0.5 + 0.3*0.5 + 0.3*0) = 35; value = 0
    # cost (default row) = 1*0.001 + 0.2*0.002 = 0.0014
    assert (s["model_family"], s["tokens_per_second"], s["estimated_cost_usd"], s["efficiency_score"],
            s["quality_score"], s["business_value_score"]) == ("other", 0.0, 0.0014, 50, 35, 0)
    assert score_turn(turn(user_message="this is broken and slow, terrible"), PRICES)["sentiment"] == "negative"
    spanish = turn(user_message="Quiero una demo del producto para el equipo",
                   response_text="Claro, la demo es el martes y es para todo el equipo.")
    assert score_turn(spanish, PRICES)["language"] == "es"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10 ** 7), st.integers(0, 10 ** 7), st.floats(0, 10 ** 7), st.text(max_size=200))
def test_turn_scores_are_bounded(tokens_in, tokens_out, latency, text):
    s = score_turn(turn(tokens_in=tokens_in, tokens_out=tokens_out, latency_ms=latency, response_text=text), PRICES)
    for k in ("efficiency_score", "quality_score", "business_value_score"):
        assert 0 <= s[k] <= 100 and isinstance(s[k], int)
    assert s["estimated_cost_usd"] >= 0 and s["tokens_per_second"] >= 0


def test_price_table_longest_prefix_wins():
    assert PRICES.lookup("gpt-4o-mini-2024")[1:] == (0.00015, 0.0006)
    assert PRICES.lookup("GPT-4o")[0] == "gpt"


def test_frontend_enrichment_hand_computed():
    ev = FrontendUserInteraction.model_validate({
        "event_type": "page_view", "session_id": "s", "page_url": "https://x.com/en/pricing?a=1",
        "user_agent": IPHONE, "time_on_page": 60, "interaction_type": "click", "timestamp": TS})
    # stage: page_view of a pricing page -> product_interest (index 3)
    # engagement = pct(0.4*60/120 + 0.4*3/4 + 0.2*0.6) = 62; quality: 4 of 10 fields present = 40
    assert enrich_frontend(ev) == {"device_type": "mobile", "browser": "Mobile Safari", "page_category": "pricing",
                                   "conversion_stage": "product_interest", "engagement_score": 62,
                                   "user_segment": "high_intent", "quality_score": 40,
                                   "scorer_version": SCORER_VERSION}
    session = FrontendSessionAnalytics.model_validate({
        "session_id": "s", "user_id": "u", "started_at_ms": TS - 150_000, "duration_ms": 150_000,
        "page_views": 5, "interactions": 3, "messages_sent": 2, "timestamp": TS})
    # engagement = pct(0.4*0.5 + 0.3*1 + 0.3*5/10) = 65 -> engaged
    s = enrich_frontend(session)
    assert (s["conversion_stage"], s["engagement_score"], s["user_segment"]) == ("user_message", 65, "engaged")
    widget = FrontendWidgetPerformance.model_validate({"session_id": "s", "widget_id": "w", "load_time_ms": 3.0,
                                                       "timestamp": TS})
    assert enrich_frontend(widget)["engagement_score"] is None


@pytest.mark.parametrize("url,cat", [("https://a.io/", "home"), ("https://a.io/de-de/products/x", "product"),
                                     ("https://a.io/blog/post?x=1", "blog"), ("https://a.io/zzz", "other"),
                                     (None, None)])
def test_page_category(url, cat):
    assert page_category(url) == cat


def test_user_agents():
    assert parse_user_agent(IPHONE) == ("mobile", "Mobile Safari")
    assert parse_user_agent("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")[0] == "bot"
    assert parse_user_agent(None) == ("unknown", None)


def lead(**over):
    d = {"lead_id": 1, "marketo_guid": "g", "timestamp": TS, "email": "jane@acme-corp.com", "company": "Acme",
         "title": "VP Sales", "phone": "+1 415", "lead_source": "Referral", "lead_score": 90}
    d.update(over)
    return MarketoLeadDelta.model_validate(d)


def test_lead_scores_hand_computed_for_each_recommended_action():
    # 25 corporate + 15 company + 20 senior + 10 phone + 15 referral + 15*0.9 = 98.5 -> 99; p = 1/(1+e^-3.92)
    s = score_lead(lead())
    assert (s["lead_quality_score"], s["engagement_level"], s["conversion_probability"],
            s["recommended_action"], s["email_type"]) == (99, "high", 0.981, "immediate_sales_follow_up", "corporate")
    # 25 + 15 + 12 manager + 10 + 10 website + 7.5 = 79.5 -> 80 (not > 80); medium; p = 1/(1+e^-1.6) = 0.832
    s = score_lead(lead(title="Marketing Manager", lead_source="Website", lead_score=50))
    assert (s["lead_quality_score"], s["engagement_level"], s["conversion_probability"],
            s["recommended_action"]) == (80, "medium", 0.832, "targeted_nurture_campaign")
    # 10 free mail + 0 + 5 other title + 0 + 5 other source + 6 = 26; medium; p = 1/(1+e^2.72) = 0.062
    s = score_lead(lead(email="j@gmail.com", company=None, title="Engineer", phone=None,
                        lead_source="Paid Search", lead_score=40))
    assert (s["lead_quality_score"], s["email_type"], s["conversion_probability"],
            s["recommended_action"]) == (26, "free_mail", 0.062, "automated_email_sequence")


def test_rows_match_the_sql_columns():
    t = turn()
    row = turn_to_row(Scored(t, score_turn(t, PRICES)))
    assert set(AGENT_TURN_SCORED_COLUMNS) <= set(row) and row["quality_score"] == 100
    assert turn_to_row(t)["quality_score"] is None and set(AGENT_TURN_COLUMNS) <= set(turn_to_row(t))
    assert row["transformation_metadata"]["scorer_version"] == SCORER_VERSION
    fe = FrontendWorkload(seed=1).generate(5).events[0]
    ev = FrontendUserInteraction.model_validate(fe)
    frow = frontend_to_row(Scored(ev, enrich_frontend(ev)))
    assert tuple(frow) == FRONTEND_COLUMNS and frow["event_id"] == fe["event_id"]
    lrow = lead_to_row(Scored(lead(), score_lead(lead())))
    assert tuple(lrow) == LEAD_COLUMNS and lrow["scorer_version"] == SCORER_VERSION


def test_derived_event_ids_are_deterministic():
    d = {"event_type": "click", "session_id": "s", "timestamp": TS, "page_url": "https://a.io/"}
    a, b = (FrontendUserInteraction.model_validate(d) for _ in range(2))
    ra, rb = (frontend_to_row(Scored(e, enrich_frontend(e)))["event_id"] for e in (a, b))
    assert ra == rb and ra.startswith("fe_")


def test_score_agent_turns_composite():
    turns = [AgentTurnCompleted.model_validate_json(r.value) for r in TurnWorkload(seed=2).generate(30).records
             if r.kind == "valid"]
    expected = [(t.turn_id, t.session_id, score_turn(t, PRICES)["quality_score"]) for t in turns]
    with TestPipeline(options=OPTS) as p:
        scored, dead = split_dead_letters(p | beam.Create(turns) | "Score" >> ScoreAgentTurns())
        assert_that(scored | beam.Map(lambda s: (s.event.turn_id, s.event.session_id, s.scores["quality_score"])),
                    equal_to(expected), label="scored")
        assert_that(scored | beam.Map(lambda s: s.scores["scorer_version"]) | beam.Distinct(),
                    equal_to([SCORER_VERSION]), label="versioned")
        assert_that(dead, equal_to([]), label="dead_letters")


def test_enrich_frontend_and_score_leads_composites_dead_letter_what_they_cannot_score():
    fe = [FrontendUserInteraction.model_validate(e) for e in FrontendWorkload(seed=4).generate(20).events]
    leads = [MarketoLeadDelta.model_validate(e) for e in LeadWorkload(seed=4).generate(10).events]
    broken = MarketoLeadDelta.model_construct(lead_id=9, marketo_guid="x", timestamp=TS, email="a@b.c",
                                              lead_score="high")  # bypasses validation: scoring fails
    with TestPipeline(options=OPTS) as p:
        enriched, fe_dead = split_dead_letters(p | "Fe" >> beam.Create(fe) | "Enrich" >> EnrichFrontendEvents())
        assert_that(enriched | beam.Map(lambda s: (s.event.event_id, s.scores["conversion_stage"])),
                    equal_to([(e.event_id, enrich_frontend(e)["conversion_stage"]) for e in fe]), label="fe")
        assert_that(fe_dead, equal_to([]), label="fe_dead")
        scored, dead = split_dead_letters(p | "Leads" >> beam.Create(leads + [broken]) | "ScoreLeads" >> ScoreLeads())
        assert_that(scored | beam.Map(lambda s: (s.event.marketo_guid, s.scores["recommended_action"])),
                    equal_to([(x.marketo_guid, score_lead(x)["recommended_action"]) for x in leads]), label="leads")
        assert_that(dead | beam.Map(lambda d: (d.step, d.error_class)), equal_to([("ScoreLeads", "transform_error")]),
                    label="lead_dead")
