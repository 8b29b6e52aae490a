"""Seeded, reusable generator of realistic events for the demo, the tests and the benchmarks.

`TurnWorkload(seed=...).generate(n_valid)` returns the exact set of distinct valid turns plus the stream to
produce (with duplicates, out-of-order timestamps and malformed records mixed in), so a test can assert
exactly what must land where.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from events import topics

MODELS = ("claude-3-sonnet", "claude-3-haiku", "gpt-4o", "gpt-4o-mini", "llama-3-70b")
CHANNELS = ("web_chat", "widget", "email", "sms")
TOOLS = ("crm_lookup", "product_search", "calendar_booking", "pricing_quote", "kb_search")
PHRASES = (
    "Thanks for reaching out! Our Pro plan includes unlimited seats.",
    "I can book a demo for Tuesday at 10am, does that work?",
    "The integration with Salesforce syncs every five minutes.",
    "Order #48213 shipped yesterday and should arrive Friday.",
    "Pricing starts at $49 per month, billed annually.",
    "Sure, I have sent the onboarding guide to your inbox.",
)


@dataclass
class ProducedRecord:
    key: bytes
    value: bytes
    timestamp_ms: int
    kind: str  # "valid", "duplicate", "malformed"


@dataclass
class TurnWorkload:
    topic = topics.TURNS
    seed: int = 7
    start_ms: int = 1_795_000_000_000
    sessions: int = 50
    accounts: int = 5
    duplicate_rate: float = 0.1
    malformed_rate: float = 0.05
    max_disorder_ms: int = 120_000
    run_id: str = "run"
    turn_prefix: str = "t"  # a second workload over the same sessions (their later activity) uses another
    records: List[ProducedRecord] = field(default_factory=list)
    expected: Dict[Tuple[str, str], dict] = field(default_factory=dict)

    def turn(self, rng: random.Random, session: int, seq: int, ts: int) -> dict:
        tokens_in = rng.randint(20, 2000)
        return {
            "schema_version": 1,
            "event_type": "text_agent.turn_completed",
            "session_id": f"{self.run_id}-s{session:04d}",
            "turn_id": f"{self.turn_prefix}{seq:04d}",
            "user_id": f"user-{session % 37:03d}",
            "account_id": f"acct-{session % self.accounts:02d}",
            "channel": rng.choice(CHANNELS),
            "model_name": rng.choice(MODELS),
            "tokens_in": tokens_in,
            "tokens_out": rng.randint(10, 800),
            "latency_ms": round(rng.uniform(150, 6000), 1),
            "response_text": rng.choice(PHRASES),
            "user_message": "Can you tell me more about pricing?",
            "tools_used": rng.sample(TOOLS, rng.randint(0, 2)),
            "timestamp": ts,
        }

    def malformed(self, rng: random.Random, i: int) -> bytes:
        kind = i % 5
        if kind == 0:
            return b"{not json at all"
        if kind == 1:
            return b"\xff\xfe\x00garbage"
        if kind == 2:
            return json.dumps({"session_id": f"{self.run_id}-bad", "turn_id": f"b{i}"}).encode()  # missing fields
        if kind == 3:
            return json.dumps({"session_id": f"{self.run_id}-bad", "turn_id": f"b{i}", "model_name": "x",
                               "tokens_in": "many", "tokens_out": 1, "latency_ms": 1,
                               "timestamp": self.start_ms}).encode()  # wrong type
        return json.dumps([1, 2, 3]).encode()  # not an object

    def generate(self, n_valid: int) -> "TurnWorkload":
        rng = random.Random(self.seed)
        seq: Dict[int, int] = {}
        clock = self.start_ms
        out: List[ProducedRecord] = []
        for _ in range(n_valid):
            s = rng.randrange(self.sessions)
            seq[s] = seq.get(s, 0) + 1
            clock += rng.randint(50, 2000)
            # out-of-order: some events carry an older event time than ones produced before them
            ts = clock - rng.randint(0, self.max_disorder_ms) if rng.random() < 0.2 else clock
            t = self.turn(rng, s, seq[s], ts)
            self.expected[(t["session_id"], t["turn_id"])] = t
            rec = ProducedRecord(t["session_id"].encode(), json.dumps(t).encode(), ts, "valid")
            out.append(rec)
            if rng.random() < self.duplicate_rate:
                out.append(ProducedRecord(rec.key, rec.value, rec.timestamp_ms, "duplicate"))
            if rng.random() < self.malformed_rate:
                out.append(ProducedRecord(b"bad", self.malformed(rng, len(out)), clock, "malformed"))
        self.records = out
        return self

    @property
    def malformed_count(self) -> int:
        return sum(1 for r in self.records if r.kind == "malformed")


# --- every other topic ------------------------------------------------------------------------------------
# Workloads below share one shape: `generate(n)` fills `records` (ProducedRecord, valid ones only unless a
# malformed rate is set) and `events` (the payload dicts), deterministically for a seed. Some free text
# carries planted PII (`pii_rate`), so redaction has something realistic to find.

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
)
PAGES = ("/", "/pricing", "/product/widget", "/features", "/blog/ai-sales-assistants", "/docs/getting-started",
         "/contact", "/signup", "/en/pricing", "/checkout")
FRONTEND_EVENTS = ("page_view", "page_view", "page_view", "widget_open", "user_message", "click", "scroll",
                   "product_interest", "conversion", "form_submit")
INTERACTIONS = {"page_view": "view", "widget_open": "click", "user_message": "text_input", "click": "click",
                "scroll": "scroll", "product_interest": "click", "conversion": "form_submit",
                "form_submit": "form_submit"}
FIRST_NAMES = ("Jane", "Carlos", "Priya", "Wei", "Fatima", "Liam", "Sofia", "Noah", "Aiko", "Olu")
LAST_NAMES = ("Doe", "Garcia", "Patel", "Zhang", "Khan", "Murphy", "Rossi", "Smith", "Tanaka", "Adeyemi")
COMPANIES = ("Acme Corp", "Globex", "Initech", "Umbrella Health", "Stark Industries", "Wayne Logistics")
CORP_DOMAINS = ("acme-corp.com", "globex.io", "initech.com", "umbrella-health.org", "stark.dev")
FREE_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com")
TITLES = ("VP Sales", "Marketing Manager", "CTO", "Engineer", "Head of Growth", "Analyst", None)
SOURCES = ("Referral", "Website", "Webinar", "Paid Search", "Demo Request", "Organic Search", None)
STATUSES = ("New", "Engaged", "MQL", "SQL", "Working", "Nurture")


def pii_snippet(rng: random.Random) -> str:
    """A sentence with one planted PII value (email, phone, card, SSN, IP or IBAN), all synthetic."""
    kind = rng.randrange(6)
    if kind == 0:
        return f"You can reach me at {rng.choice(FIRST_NAMES).lower()}.{rng.randint(1, 99)}@{rng.choice(CORP_DOMAINS)}"
    if kind == 1:
        return f"Call me at (415) 555-{rng.randint(1000, 9999)} after 5pm"
    if kind == 2:
        return "My card is 4111 1111 1111 1111, please update billing"
    if kind == 3:
        return f"My SSN is 219-09-{rng.randint(1000, 9999)} for the tax form"
    if kind == 4:
        return f"I'm connecting from 203.0.113.{rng.randint(1, 254)}"
    return "Please refund to DE89 3704 0044 0532 0130 00"


@dataclass
class _Workload:
    seed: int = 7
    start_ms: int = 1_795_000_000_000
    accounts: int = 5
    sessions: int = 50
    pii_rate: float = 0.1
    malformed_rate: float = 0.0
    run_id: str = "run"
    records: List[ProducedRecord] = field(default_factory=list)
    events: List[dict] = field(default_factory=list)

    topic = ""

    def event(self, rng: random.Random, i: int, ts: int) -> Tuple[bytes, dict]:
        raise NotImplementedError

    def generate(self, n_valid: int):
        rng = random.Random(self.seed)
        clock = self.start_ms
        self.records, self.events = [], []
        for i in range(n_valid):
            clock += rng.randint(20, 1500)
            key, ev = self.event(rng, i, clock)
            self.events.append(ev)
            self.records.append(ProducedRecord(key, json.dumps(ev).encode(), clock, "valid"))
            if self.malformed_rate and rng.random() < self.malformed_rate:
                self.records.append(ProducedRecord(b"bad", TurnWorkload.malformed(self, rng, i), clock, "malformed"))
        return self

    def _text(self, rng: random.Random, base: str) -> str:
        return f"{base} {pii_snippet(rng)}" if rng.random() < self.pii_rate else base


@dataclass
class FrontendWorkload(_Workload):
    """`frontend.user.interaction` events along the funnel, with real-world user agents and URLs."""

    topic = topics.FRONTEND_INTERACTION

    def event(self, rng, i, ts):
        s = rng.randrange(self.sessions)
        etype = rng.choice(FRONTEND_EVENTS)
        page = rng.choice(PAGES)
        query = rng.choice(("", "?utm_source=google&utm_medium=cpc", "?ref=newsletter",
                            f"?email={rng.choice(FIRST_NAMES).lower()}%40{rng.choice(FREE_DOMAINS)}"))
        ev = {
            "schema_version": 1, "event_type": etype, "event_id": f"{self.run_id}-fe{i:07d}",
            "session_id": f"{self.run_id}-fs{s:04d}", "user_id": f"user-{s % 37:03d}" if s % 4 else None,
            "account_id": f"acct-{s % self.accounts:02d}",
            "page_url": f"https://www.iheard.ai{page}{query if rng.random() < 0.3 else ''}",
            "page_title": "iheardAI - AI sales assistant", "referrer": rng.choice(
                ("https://www.google.com/", "https://www.linkedin.com/", "", "https://news.ycombinator.com/")),
            "user_agent": USER_AGENTS[s % len(USER_AGENTS)], "screen_resolution": "1920x1080",
            "viewport_size": "1280x720", "widget_id": "sales-assistant", "interaction_type": INTERACTIONS[etype],
            "timestamp": ts, "time_on_page": rng.randint(0, 600), "element_id": rng.choice(
                ("chat-button", "pricing-cta", "nav-docs", None)),
            "element_class": "widget-trigger",
            "element_text": self._text(rng, rng.choice(("Start chat", "See pricing", "Book a demo", "Send"))),
            "click_coordinates": {"x": rng.randint(0, 1920), "y": rng.randint(0, 1080)},
            "country": rng.choice(("US", "GB", "DE", "IN", "BR")), "timezone": "America/New_York",
        }
        if etype == "user_message":
            ev["message_length"] = rng.randint(5, 300)
        return ev["session_id"].encode(), ev


@dataclass
class FrontendSessionWorkload(_Workload):
    """`frontend.session.analytics` summaries."""

    topic = topics.FRONTEND_SESSION

    def event(self, rng, i, ts):
        s = rng.randrange(self.sessions)
        duration = rng.randint(1_000, 900_000)
        ev = {"schema_version": 1, "session_id": f"{self.run_id}-fs{s:04d}", "user_id": f"user-{s % 37:03d}",
              "account_id": f"acct-{s % self.accounts:02d}", "page_url": f"https://www.iheard.ai{rng.choice(PAGES)}",
              "user_agent": USER_AGENTS[s % len(USER_AGENTS)], "started_at_ms": ts - duration,
              "ended_at_ms": ts, "duration_ms": duration, "page_views": rng.randint(1, 12),
              "interactions": rng.randint(0, 30), "widget_opens": rng.randint(0, 3),
              "messages_sent": rng.randint(0, 8), "landing_page": "https://www.iheard.ai/",
              "exit_page": f"https://www.iheard.ai{rng.choice(PAGES)}", "referrer": "https://www.google.com/",
              "utm_source": rng.choice(("google", "linkedin", None)), "is_bounce": duration < 10_000,
              "timestamp": ts}
        return ev["session_id"].encode(), ev


@dataclass
class WidgetPerformanceWorkload(_Workload):
    """`frontend.widget.performance` measurements."""

    topic = topics.FRONTEND_WIDGET

    def event(self, rng, i, ts):
        s = rng.randrange(self.sessions)
        load = round(rng.lognormvariate(6, 0.5), 1)
        ev = {"schema_version": 1, "session_id": f"{self.run_id}-fs{s:04d}", "widget_id": "sales-assistant",
              "account_id": f"acct-{s % self.accounts:02d}", "widget_version": rng.choice(("2.61.0", "2.62.0")),
              "page_url": f"https://www.iheard.ai{rng.choice(PAGES)}", "user_agent": USER_AGENTS[s % len(USER_AGENTS)],
              "load_time_ms": load, "time_to_interactive_ms": round(load * 1.4, 1),
              "first_response_ms": round(rng.uniform(300, 4000), 1), "js_errors": int(rng.random() < 0.05),
              "render_errors": 0, "connection_type": rng.choice(("4g", "wifi", "3g")), "timestamp": ts}
        return ev["session_id"].encode(), ev


@dataclass
class ToolWorkload(_Workload):
    """`agent.tool.invoked` calls, some failing, some with PII in their arguments."""

    topic = topics.TOOLS

    def event(self, rng, i, ts):
        s = rng.randrange(self.sessions)
        tool = rng.choice(TOOLS)
        ok = rng.random() > 0.08
        ev = {"schema_version": 1, "invocation_id": f"{self.run_id}-inv{i:07d}",
              "session_id": f"{self.run_id}-s{s:04d}", "turn_id": f"t{rng.randint(1, 20):04d}",
              "user_id": f"user-{s % 37:03d}", "account_id": f"acct-{s % self.accounts:02d}", "tool_name": tool,
              "success": ok, "latency_ms": round(rng.uniform(20, 3000), 1),
              "error_message": None if ok else "upstream timeout after 3000 ms",
              "arguments": {"query": self._text(rng, rng.choice(("pro plan", "order 48213", "tuesday 10am")))},
              "result_summary": "ok" if ok else None, "input_bytes": rng.randint(50, 2000),
              "output_bytes": rng.randint(50, 20000), "timestamp": ts}
        return ev["session_id"].encode(), ev


@dataclass
class SessionWorkload(_Workload):
    """`text.agent.session.updated` state changes (seq grows per session)."""

    topic = topics.SESSIONS

    def event(self, rng, i, ts):
        s = rng.randrange(self.sessions)
        seq = i + 1
        ev = {"schema_version": 1, "session_id": f"{self.run_id}-s{s:04d}", "seq": seq,
              "user_id": f"user-{s % 37:03d}", "account_id": f"acct-{s % self.accounts:02d}",
              "channel": rng.choice(CHANNELS), "status": rng.choice(("active", "active", "idle", "ended")),
              "last_turn_id": f"t{rng.randint(1, 20):04d}", "last_message": self._text(rng, rng.choice(PHRASES)),
              "total_turns": rng.randint(1, 20), "avg_response_time_ms": round(rng.uniform(300, 5000), 1),
              "started_at_ms": ts - rng.randint(0, 600_000), "timestamp": ts}
        return ev["session_id"].encode(), ev


@dataclass
class LeadWorkload(_Workload):
    """`marketo.leads.delta` changes of synthetic leads (corporate and free-mail, all seniorities)."""

    topic = topics.LEADS

    def event(self, rng, i, ts):
        lead = rng.randint(1, 5000)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        domain = rng.choice(CORP_DOMAINS + FREE_DOMAINS)
        ev = {"schema_version": 1, "lead_id": lead, "marketo_guid": f"{self.run_id}-g{i:07d}",
              "change_type": rng.choice(("lead_change", "new_lead")), "activity_type_id": rng.choice((2, 13, 12)),
              "email": f"{first.lower()}.{last.lower()}@{domain}", "first_name": first, "last_name": last,
              "company": rng.choice(COMPANIES) if domain in CORP_DOMAINS else None, "title": rng.choice(TITLES),
              "phone": f"+1 415 555 {rng.randint(1000, 9999)}" if rng.random() < 0.6 else None,
              "lead_source": rng.choice(SOURCES), "lead_status": rng.choice(STATUSES),
              "lead_score": rng.randint(0, 100), "country": rng.choice(("US", "GB", "DE")), "city": "Springfield",
              "created_at_ms": ts - 86_400_000, "updated_at_ms": ts,
              "changes": [{"field": "leadScore", "old_value": rng.randint(0, 50), "new_value": rng.randint(50, 100)}],
              "timestamp": ts}
        return str(lead).encode(), ev


@dataclass
class BillingWorkload(_Workload):
    """`billing.usage.metered` hourly usage revisions per account."""

    topic = topics.BILLING

    def event(self, rng, i, ts):
        acct = f"acct-{i % self.accounts:02d}"
        turns = rng.randint(0, 500)
        ev = {"schema_version": 1, "account_id": acct, "hour_start_ms": ts - ts % 3_600_000, "turns": turns,
              "tokens_in": turns * rng.randint(20, 2000), "tokens_out": turns * rng.randint(10, 800),
              "tool_invocations": rng.randint(0, turns), "estimated_cost_usd": round(turns * 0.002, 6),
              "revision": i // self.accounts, "is_final": False, "timestamp": ts}
        return acct.encode(), ev


WORKLOADS = {w.topic: w for w in (FrontendWorkload, FrontendSessionWorkload, WidgetPerformanceWorkload,
                                  ToolWorkload, SessionWorkload, LeadWorkload, BillingWorkload)}


# Each registry topic's share of a product-like mix (tests/unit/test_topic_registry.py checks every topic has one).
SHARES = {topics.TURNS: 0.3, topics.FRONTEND_INTERACTION: 0.35, topics.TOOLS: 0.1, topics.SESSIONS: 0.08,
          topics.FRONTEND_SESSION: 0.05, topics.FRONTEND_WIDGET: 0.05, topics.LEADS: 0.05, topics.BILLING: 0.02}


@dataclass
class MixedWorkload:
    """Events for every topic, in product-like proportions: `generate(n)` -> `records` as (topic, record).

    Turns come from TurnWorkload (unchanged), the rest from the workloads above."""

    seed: int = 7
    start_ms: int = 1_795_000_000_000
    run_id: str = "run"
    pii_rate: float = 0.1
    shares: Dict[str, float] = field(default_factory=lambda: dict(SHARES))
    records: List[Tuple[str, ProducedRecord]] = field(default_factory=list)

    def generate(self, n: int) -> "MixedWorkload":
        out: List[Tuple[str, ProducedRecord]] = []
        for k, (topic, share) in enumerate(sorted(self.shares.items())):
            count = max(1, int(round(n * share)))
            if topic == topics.TURNS:
                w = TurnWorkload(seed=self.seed + k, start_ms=self.start_ms, run_id=self.run_id,
                                 duplicate_rate=0.0, malformed_rate=0.0).generate(count)
            else:
                w = WORKLOADS[topic](seed=self.seed + k, start_ms=self.start_ms, run_id=self.run_id,
                                     pii_rate=self.pii_rate).generate(count)
            out.extend((topic, r) for r in w.records)
        random.Random(self.seed).shuffle(out)
        self.records = out
        return self
