"""Scoring and enrichment: deterministic, bounded, versioned business signals for turns, frontend events and
leads (the seed README's "enhance & score" and "enrich" steps).

Pure functions `score_turn`, `enrich_frontend` and `score_lead` return a dict of scores that always holds
`scorer_version`; the composites `ScoreAgentTurns`, `EnrichFrontendEvents` and `ScoreLeads` wrap them and emit
`Scored(event, scores)` (main output) and dead letters (use `events.dead_letters.split_dead_letters`). Every formula
is in its function's docstring; scores are integers clamped to 0-100, probabilities to 0-1. Rounding is
half-up (`_pct`), never banker's rounding, so hand-computed cases match. Changing any rule, word list or
default price means bumping SCORER_VERSION.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import text_signals
from events.contracts import (AgentTurnCompleted, EventModel, FrontendSessionAnalytics,
                                  FrontendUserInteraction, FrontendWidgetPerformance, MarketoLeadDelta)
from events.metrics import step_namespace
from events.dead_letters import DeadLetter, ErrorKind, Tags

SCORER_VERSION = "1.0.0"
DEFAULT_PRICE_TABLE = Path(__file__).resolve().parent.parent / "config" / "model_prices.json"
PRICE_TABLE_ENV = "MODEL_PRICE_TABLE_FILE"


class Scored(NamedTuple):
    """An event and the scores computed for it (`scores["scorer_version"]` always set)."""

    event: EventModel
    scores: Dict[str, Any]


def _clamp01(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


def _pct(x: float) -> int:
    """0-1 -> integer 0-100, clamped, rounded half up."""
    return int(math.floor(_clamp01(x) * 100 + 0.5))


# --- agent turns ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PriceTable:
    """USD per 1k tokens and model family by model-name prefix (longest prefix wins), from a JSON file."""

    version: str
    entries: Tuple[Tuple[str, str, float, float], ...]  # (prefix, family, input_per_1k, output_per_1k)
    default: Tuple[str, float, float]

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> "PriceTable":
        entries = []
        for m in doc["models"]:
            if m["input_per_1k"] < 0 or m["output_per_1k"] < 0:
                raise ValueError(f"price table: negative price for {m['prefix']!r}")
            entries.append((m["prefix"].lower(), m["family"], float(m["input_per_1k"]), float(m["output_per_1k"])))
        d = doc["default"]
        return cls(str(doc.get("version", "")), tuple(sorted(entries, key=lambda e: -len(e[0]))),
                   (d["family"], float(d["input_per_1k"]), float(d["output_per_1k"])))

    @classmethod
    def load(cls, path: Union[str, Path, None] = None) -> "PriceTable":
        """From `path`, else `MODEL_PRICE_TABLE_FILE`, else config/model_prices.json (read at build time)."""
        with open(path or os.environ.get(PRICE_TABLE_ENV) or DEFAULT_PRICE_TABLE, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def lookup(self, model_name: str) -> Tuple[str, float, float]:
        name = model_name.lower()
        for prefix, family, p_in, p_out in self.entries:
            if name.startswith(prefix):
                return family, p_in, p_out
        return self.default


COMMERCIAL_WORDS = frozenset("price pricing cost quote plan plans buy purchase demo trial subscription contract "
                             "upgrade enterprise license seats discount".split())
BUSINESS_TOOLS = frozenset(("crm_lookup", "pricing_quote", "calendar_booking", "product_search"))
FAILURE_WORDS = frozenset(("sorry", "unable", "cannot", "can't", "error", "unfortunately"))


def score_turn(turn: AgentTurnCompleted, prices: PriceTable) -> Dict[str, Any]:
    """Scores of one agent turn.

    - model_family, prices: `prices.lookup(model_name)` (longest matching prefix, else the default row)
    - total_tokens = tokens_in + tokens_out
    - tokens_per_second = tokens_out / (latency_ms / 1000), 0 when latency_ms is 0; rounded to 2 places
    - estimated_cost_usd = tokens_in/1000 * input_per_1k + tokens_out/1000 * output_per_1k, 6 places
    - efficiency_score = pct(0.5 * min(tokens_per_second / 50, 1) + 0.5 * clamp((10000 - latency_ms) / 9000))
      (50 tok/s is full speed; <= 1 s latency full marks, >= 10 s none)
    - quality_score = pct(0.4 * length + 0.3 * tools_ok + 0.3 * no_failure) where, over the response words:
      length = 0 for none, 0.5 for 1-4, 1.0 for 5-300, 0.7 above; tools_ok = share of `tool_results` entries
      with success true (1.0 when none); no_failure = 0 if a failure word (sorry, unable, cannot, can't,
      error, unfortunately) appears, else 1
    - business_value_score = pct(0.5 * intent + 0.3 * business_tool + 0.2 * depth): intent = 1 if the user
      message has a commercial word (price, demo, buy, ...), 0.5 if only the response has one, else 0;
      business_tool = 1 if a tool in BUSINESS_TOOLS was used; depth = min(previous_turns, 5) / 5
    - sentiment: of the user message (else the response), text_signals.sentiment
    - topics, language: of user message + response, text_signals.topics / language
    """
    family, p_in, p_out = prices.lookup(turn.model_name)
    seconds = turn.latency_ms / 1000.0
    tps = round(turn.tokens_out / seconds, 2) if seconds > 0 else 0.0
    cost = round(turn.tokens_in / 1000.0 * p_in + turn.tokens_out / 1000.0 * p_out, 6)
    efficiency = _pct(0.5 * min(tps / 50.0, 1.0) + 0.5 * _clamp01((10000.0 - turn.latency_ms) / 9000.0))

    resp_words = text_signals.words(turn.response_text)
    user_words = text_signals.words(turn.user_message or "")
    n = len(resp_words)
    length = 0.0 if n == 0 else 0.5 if n < 5 else 1.0 if n <= 300 else 0.7
    results = [r for r in turn.tool_results.values() if isinstance(r, dict)]
    tools_ok = sum(1 for r in results if r.get("success") is True) / len(results) if results else 1.0
    no_failure = 0.0 if FAILURE_WORDS.intersection(resp_words) else 1.0
    quality = _pct(0.4 * length + 0.3 * tools_ok + 0.3 * no_failure)

    intent = 1.0 if COMMERCIAL_WORDS.intersection(user_words) else 0.5 if COMMERCIAL_WORDS.intersection(
        resp_words) else 0.0
    business_tool = 1.0 if BUSINESS_TOOLS.intersection(turn.tools_used) else 0.0
    prev = turn.conversation_context.get("previous_turns")
    depth = min(prev, 5) / 5.0 if isinstance(prev, int) and not isinstance(prev, bool) and prev > 0 else 0.0
    business_value = _pct(0.5 * intent + 0.3 * business_tool + 0.2 * depth)

    label, _ = text_signals.sentiment(user_words or resp_words)
    both = user_words + resp_words
    return {
        "model_family": family,
        "total_tokens": turn.tokens_in + turn.tokens_out,
        "tokens_per_second": tps,
        "estimated_cost_usd": cost,
        "efficiency_score": efficiency,
        "quality_score": quality,
        "business_value_score": business_value,
        "sentiment": label,
        "topics": text_signals.topics(both, f"{turn.user_message or ''} {turn.response_text}"),
        "language": text_signals.language(both),
        "price_table_version": prices.version,
        "scorer_version": SCORER_VERSION,
    }


# --- frontend events --------------------------------------------------------------------------------------

FUNNEL = ("page_view", "widget_open", "user_message", "product_interest", "conversion")
EVENT_STAGE = {
    "page_view": "page_view", "widget_open": "widget_open", "widget_close": "widget_open",
    "user_message": "user_message", "message_sent": "user_message",
    "product_interest": "product_interest", "product_view": "product_interest", "add_to_cart": "product_interest",
    "form_submit": "product_interest", "pricing_view": "product_interest",
    "conversion": "conversion", "purchase": "conversion", "signup": "conversion", "demo_booked": "conversion",
}
INTEREST_PAGES = frozenset(("pricing", "product"))
INTERACTION_WEIGHT = {"text_input": 1.0, "form_submit": 1.0, "submit": 1.0, "click": 0.6, "tap": 0.6,
                      "scroll": 0.3, "hover": 0.3, "view": 0.1}
_PAGE_RULES = tuple((cat, re.compile(rx)) for cat, rx in (
    ("pricing", r"^/(pricing|plans?)(/|$)"),
    ("product", r"^/(products?|features?|solutions?|platform)(/|$)"),
    ("checkout", r"^/(checkout|cart|billing|order)(/|$)"),
    ("signup", r"^/(signup|sign-up|register|trial|get-started|start)(/|$)"),
    ("contact", r"^/(contact|demo|book-a-demo|talk-to-sales|sales)(/|$)"),
    ("docs", r"^/(docs|documentation|help|support|kb|faq)(/|$)"),
    ("blog", r"^/(blog|news|articles?|resources)(/|$)"),
    ("about", r"^/(about|company|careers|team|press)(/|$)"),
    ("account", r"^/(account|login|signin|sign-in|settings|dashboard|app)(/|$)"),
    ("home", r"^/?$"),
))
_LOCALE = re.compile(r"^/[a-z]{2}(?:-[a-z]{2})?(?=/|$)")


@lru_cache(maxsize=16384)
def page_category(url: Optional[str]) -> Optional[str]:
    """First matching rule on the URL's lower-cased path with a locale prefix (/en, /de-de) removed;
    'other' when none matches, None without a URL. Cached: page URLs repeat far more than they vary."""
    if not url:
        return None
    try:
        path = urlsplit(url).path.lower() or "/"
    except ValueError:
        return "other"
    path = _LOCALE.sub("", path) or "/"
    for cat, rx in _PAGE_RULES:
        if rx.search(path):
            return cat
    return "other"


@lru_cache(maxsize=16384)
def parse_user_agent(ua: Optional[str]) -> Tuple[str, Optional[str]]:
    """(device_type, browser family) from the `user-agents` parser (ua-parser's maintained regexes).
    device_type: bot, tablet, mobile, desktop, other; ('unknown', None) without a UA. Cached: real traffic
    repeats a few thousand distinct UAs, and a parse costs ~1 ms."""
    if not ua:
        return "unknown", None
    from user_agents import parse

    agent = parse(ua)
    device = ("bot" if agent.is_bot else "tablet" if agent.is_tablet else "mobile" if agent.is_mobile
              else "desktop" if agent.is_pc else "other")
    return device, agent.browser.family[:50] if agent.browser.family else None


_EMPTY = (None, "", {}, [])
_MISSING = object()


def _completeness(event: EventModel, names: Tuple[str, ...]) -> int:
    values = event.__dict__  # declared fields; anything else (extra fields) through getattr
    present = 0
    for n in names:
        v = values.get(n, _MISSING)
        if v is _MISSING:
            v = getattr(event, n, None)
        if v is not None and v not in _EMPTY:
            present += 1
    return _pct(present / len(names))


_INTERACTION_FIELDS = ("user_id", "page_url", "user_agent", "referrer", "widget_id", "interaction_type",
                       "time_on_page", "element_id", "country", "timezone")
_SESSION_FIELDS = ("user_id", "page_url", "user_agent", "referrer", "landing_page", "exit_page", "ended_at_ms",
                   "country", "timezone", "utm_source")
_WIDGET_FIELDS = ("user_id", "page_url", "user_agent", "widget_version", "time_to_interactive_ms",
                  "first_response_ms", "connection_type", "country", "timezone", "session_id")


def enrich_frontend(event: Union[FrontendUserInteraction, FrontendSessionAnalytics, FrontendWidgetPerformance]
                    ) -> Dict[str, Any]:
    """Enrichment of one frontend event.

    - device_type, browser: parse_user_agent(user_agent); page_category: page_category(page_url)
    - conversion_stage (seed funnel page_view -> widget_open -> user_message -> product_interest ->
      conversion): interactions map `event_type` by EVENT_STAGE, a page_view of a pricing/product page is
      product_interest, another event on a page is page_view; sessions take the furthest stage their
      counters show (messages_sent > 0 -> user_message, widget_opens > 0 -> widget_open, else page_view);
      widget performance events have none
    - engagement_score (0-100):
        interaction: pct(0.4 * min(time_on_page / 120 s, 1) + 0.4 * (stage_index / 4)
                         + 0.2 * INTERACTION_WEIGHT[interaction_type])      (stage_index 0..4)
        session:     pct(0.4 * min(duration_ms / 300000, 1) + 0.3 * min(page_views / 5, 1)
                         + 0.3 * min((interactions + messages_sent) / 10, 1))
        widget:      None
    - user_segment: bot (device), else high_intent (stage product_interest/conversion or engagement >= 70),
      else engaged (engagement >= 40), else anonymous_visitor (no user_id), else casual_visitor
    - quality_score: data completeness, pct(share of the type's ten descriptive optional fields present)
    """
    device, browser = parse_user_agent(event.user_agent)
    category = page_category(event.page_url)
    stage: Optional[str]
    engagement: Optional[int]
    if isinstance(event, FrontendUserInteraction):
        stage = EVENT_STAGE.get(event.event_type, "page_view" if event.page_url else None)
        if stage == "page_view" and category in INTEREST_PAGES:
            stage = "product_interest"
        stage_term = FUNNEL.index(stage) / 4.0 if stage else 0.0
        engagement = _pct(0.4 * min((event.time_on_page or 0) / 120.0, 1.0) + 0.4 * stage_term
                          + 0.2 * INTERACTION_WEIGHT.get(event.interaction_type or "", 0.0))
        quality = _completeness(event, _INTERACTION_FIELDS)
    elif isinstance(event, FrontendSessionAnalytics):
        stage = ("user_message" if event.messages_sent > 0 else "widget_open" if event.widget_opens > 0
                 else "page_view")
        engagement = _pct(0.4 * min(event.duration_ms / 300000.0, 1.0) + 0.3 * min(event.page_views / 5.0, 1.0)
                          + 0.3 * min((event.interactions + event.messages_sent) / 10.0, 1.0))
        quality = _completeness(event, _SESSION_FIELDS)
    elif isinstance(event, FrontendWidgetPerformance):
        stage, engagement = None, None
        quality = _completeness(event, _WIDGET_FIELDS)
    else:  # a new frontend contract needs its own branch here, not the widget's
        raise TypeError(f"enrich_frontend has no rules for {type(event).__name__}")
    if device == "bot":
        segment = "bot"
    elif stage in ("product_interest", "conversion") or (engagement or 0) >= 70:
        segment = "high_intent"
    elif (engagement or 0) >= 40:
        segment = "engaged"
    elif not event.user_id:
        segment = "anonymous_visitor"
    else:
        segment = "casual_visitor"
    return {"device_type": device, "browser": browser, "page_category": category, "conversion_stage": stage,
            "engagement_score": engagement, "user_segment": segment, "quality_score": quality,
            "scorer_version": SCORER_VERSION}


# --- leads ------------------------------------------------------------------------------------------------

FREE_MAIL_DOMAINS = frozenset("""
gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.fr ymail.com hotmail.com hotmail.co.uk hotmail.fr
outlook.com live.com msn.com aol.com icloud.com me.com mac.com protonmail.com proton.me gmx.com gmx.de gmx.net
web.de mail.com mail.ru yandex.ru yandex.com qq.com 163.com 126.com zoho.com fastmail.com tutanota.com
hey.com pm.me rediffmail.com libero.it orange.fr free.fr laposte.net t-online.de
""".split())
SENIOR_TITLE = re.compile(r"(?i)\b(ceo|cto|cfo|coo|cmo|cio|chief|founder|owner|president|vp|vice president|"
                          r"head|director|partner)\b")
MID_TITLE = re.compile(r"(?i)\b(manager|lead|principal|senior|architect)\b")
STRONG_SOURCES = frozenset(("referral", "demo request", "contact sales", "webinar", "partner", "event"))
MEDIUM_SOURCES = frozenset(("website", "organic", "organic search", "content", "inbound", "chat", "widget"))
HOT_STATUSES = frozenset(("mql", "sql", "sales accepted", "sales qualified", "opportunity"))
WARM_STATUSES = frozenset(("engaged", "working", "nurture", "contacted"))
LEVEL_BIAS = {"high": 0.8, "medium": 0.0, "low": -0.8}


def email_domain(email: Optional[str]) -> Tuple[Optional[str], str]:
    """(lower-cased domain, 'free_mail' | 'corporate' | 'none')."""
    if not email or "@" not in email:
        return None, "none"
    domain = email.rsplit("@", 1)[1].strip().lower()[:100]
    return domain, "free_mail" if domain in FREE_MAIL_DOMAINS else "corporate"


def score_lead(lead: MarketoLeadDelta) -> Dict[str, Any]:
    """Scores of one Marketo lead.

    - email_domain, email_type: email_domain(email)
    - lead_quality_score = email (corporate 25, free mail 10, none 0) + company present 15
      + title (senior: C-level/VP/head/director/founder 20, mid: manager/lead/senior 12, other 5, none 0)
      + phone present 10 + source (referral/demo request/contact sales/webinar/partner/event 15,
      website/organic/content/inbound/chat 10, other 5, none 0) + 15 * min(max(lead_score, 0), 100) / 100,
      rounded half up; at most 25+15+20+10+15+15 = 100
    - engagement_level: high if Marketo lead_score >= 70 or status MQL/SQL/sales accepted/opportunity;
      medium if lead_score >= 30 or status engaged/working/nurture/contacted; else low
    - conversion_probability = 1 / (1 + exp(-(0.08 * (quality - 60) + bias))), bias high 0.8, medium 0,
      low -0.8; 3 places
    - recommended_action (seed rules): immediate_sales_follow_up if quality > 80 and engagement high; else
      targeted_nurture_campaign if conversion_probability > 0.6; else automated_email_sequence
    - full_name = "first last" (as redacted upstream), geographic_info = {country, state, city} present
    """
    domain, email_type = email_domain(lead.email)
    title = (lead.title or "").strip()
    source = (lead.lead_source or "").strip().lower()
    marketo_score = min(max(lead.lead_score or 0, 0), 100)
    points = ({"corporate": 25, "free_mail": 10}.get(email_type, 0)
              + (15 if (lead.company or "").strip() else 0)
              + (20 if SENIOR_TITLE.search(title) else 12 if MID_TITLE.search(title) else 5 if title else 0)
              + (10 if (lead.phone or "").strip() else 0)
              + (15 if source in STRONG_SOURCES else 10 if source in MEDIUM_SOURCES else 5 if source else 0)
              + 15 * marketo_score / 100.0)
    quality = min(100, int(math.floor(points + 0.5)))
    status = (lead.lead_status or "").strip().lower()
    level = ("high" if marketo_score >= 70 or status in HOT_STATUSES else
             "medium" if marketo_score >= 30 or status in WARM_STATUSES else "low")
    probability = round(1.0 / (1.0 + math.exp(-(0.08 * (quality - 60) + LEVEL_BIAS[level]))), 3)
    if quality > 80 and level == "high":
        action = "immediate_sales_follow_up"
    elif probability > 0.6:
        action = "targeted_nurture_campaign"
    else:
        action = "automated_email_sequence"
    name = " ".join(p for p in (lead.first_name, lead.last_name) if p) or None
    geo = {k: v for k, v in (("country", lead.country), ("state", lead.state), ("city", lead.city)) if v}
    return {"email_domain": domain, "email_type": email_type, "lead_quality_score": quality,
            "engagement_level": level, "conversion_probability": probability, "recommended_action": action,
            "full_name": name, "geographic_info": geo, "scorer_version": SCORER_VERSION}


# --- Beam -------------------------------------------------------------------------------------------------

class _ScoreFn(beam.DoFn):
    """Applies a pure scorer; counts scored events, records score distributions, dead-letters failures."""

    def __init__(self, scorer: Callable[[Any], Dict[str, Any]], step: str, distributions: Tuple[str, ...]):
        self._scorer = scorer
        self._step = step
        self._scored = Metrics.counter(step_namespace(step), "events_scored")
        self._failed = Metrics.counter(step_namespace(step), f"dead_letters_{ErrorKind.TRANSFORM.value}")
        self._dists = {n: Metrics.distribution(step_namespace(step), n) for n in distributions}

    def process(self, event: EventModel):
        try:
            scores = self._scorer(event)
        except Exception as e:  # a scorer bug must not fail the job: the event leaves as a dead letter
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(Tags.DEAD_LETTER.value, DeadLetter.of_event(event, step=self._step,
                                                                                      error=e))
            return
        self._scored.inc()
        for name, dist in self._dists.items():
            if scores.get(name) is not None:
                dist.update(int(scores[name]))
        yield Scored(event, scores)


class _TurnScorer:
    """Picklable callable holding the price table (read once, when the pipeline is built)."""

    def __init__(self, prices: PriceTable):
        self.prices = prices

    def __call__(self, turn: AgentTurnCompleted) -> Dict[str, Any]:
        return score_turn(turn, self.prices)


@beam.typehints.with_input_types(AgentTurnCompleted)
class ScoreAgentTurns(beam.PTransform):
    """PCollection[AgentTurnCompleted] -> {valid: Scored, dead_letter: DeadLetter}; see `score_turn`."""

    def __init__(self, price_table: Union[PriceTable, str, Path, None] = None, label: Optional[str] = None):
        super().__init__(label)
        self._prices = price_table if isinstance(price_table, PriceTable) else PriceTable.load(price_table)

    def expand(self, turns):
        return turns | "Score" >> beam.ParDo(_ScoreFn(
            _TurnScorer(self._prices), self.label,
            ("efficiency_score", "quality_score", "business_value_score"))).with_outputs(
                Tags.DEAD_LETTER.value, main=Tags.VALID.value)


@beam.typehints.with_input_types(
    Union[FrontendUserInteraction, FrontendSessionAnalytics, FrontendWidgetPerformance])
class EnrichFrontendEvents(beam.PTransform):
    """PCollection[Frontend*] -> {valid: Scored, dead_letter: DeadLetter}; see `enrich_frontend`."""

    def expand(self, events):
        return events | "Enrich" >> beam.ParDo(_ScoreFn(
            enrich_frontend, self.label, ("engagement_score", "quality_score"))).with_outputs(
                Tags.DEAD_LETTER.value, main=Tags.VALID.value)


@beam.typehints.with_input_types(MarketoLeadDelta)
class ScoreLeads(beam.PTransform):
    """PCollection[MarketoLeadDelta] -> {valid: Scored, dead_letter: DeadLetter}; see `score_lead`."""

    def expand(self, leads):
        return leads | "Score" >> beam.ParDo(_ScoreFn(
            score_lead, self.label, ("lead_quality_score",))).with_outputs(
                Tags.DEAD_LETTER.value, main=Tags.VALID.value)


# --- the scorers the topic registry names (events.topics.Topic.scorer) ---------------------------------

def _static(scorer: Callable[[Any], Dict[str, Any]]) -> Callable[[PriceTable], Callable[[Any], Dict[str, Any]]]:
    return lambda _prices: scorer


# name -> a factory of the pure scorer, given the price table
SCORERS: Dict[str, Callable[[PriceTable], Callable[[Any], Dict[str, Any]]]] = {
    "turn": _TurnScorer, "frontend": _static(enrich_frontend), "lead": _static(score_lead),
}
