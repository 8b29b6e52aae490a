"""Seeded, reusable generator of realistic events for the demo, the tests and the benchmarks.

`TurnWorkload(seed=...).generate(n_valid)` returns the exact set of distinct valid turns plus the stream to
produce (with duplicates, out-of-order timestamps and malformed records mixed in), so a test can assert
exactly what must land where.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

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
    seed: int = 7
    start_ms: int = 1_795_000_000_000
    sessions: int = 50
    accounts: int = 5
    duplicate_rate: float = 0.1
    malformed_rate: float = 0.05
    max_disorder_ms: int = 120_000
    run_id: str = "run"
    records: List[ProducedRecord] = field(default_factory=list)
    expected: Dict[Tuple[str, str], dict] = field(default_factory=dict)

    def turn(self, rng: random.Random, session: int, seq: int, ts: int) -> dict:
        tokens_in = rng.randint(20, 2000)
        return {
            "schema_version": 1,
            "event_type": "text_agent.turn_completed",
            "session_id": f"{self.run_id}-s{session:04d}",
            "turn_id": f"t{seq:04d}",
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


def produce(records: List[ProducedRecord], topic: str, bootstrap_servers: str,
            extra_config: Optional[dict] = None) -> int:
    """Produce records with their event time as the Kafka timestamp (idempotent producer, acks=all)."""
    from confluent_kafka import Producer

    errors: List[str] = []
    p = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 20, **(extra_config or {})})

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(str(err))

    for r in records:
        while True:
            try:
                p.produce(topic, key=r.key, value=r.value, timestamp=r.timestamp_ms, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} records not delivered: {errors[:3]}")
    return len(records)
