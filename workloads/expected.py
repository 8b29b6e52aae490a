"""What must land where for a generated workload: the hand-computed rows and state the e2e tests and the
fault matrix (reliability/fault_matrix.py) compare the sinks with. Pure functions of the workloads' events."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Dict, Iterable, Tuple


def kpi_session_totals(turns: Iterable[dict], tools: Iterable[dict]) -> Dict[str, tuple]:
    """Hand-computed session_kpis of distinct valid turns and tool calls: the whole session_id, as
    (turns, tokens_in, tokens_out, tool_calls, avg_latency_ms rounded to 3, started_at, ended_at)."""
    want: Dict[str, dict] = {}
    for t in turns:
        w = want.setdefault(t["session_id"], {"turns": 0, "tokens_in": 0, "tokens_out": 0, "latency": 0.0,
                                              "tools": 0, "first": t["timestamp"], "last": t["timestamp"]})
        w["turns"] += 1
        w["tokens_in"] += t["tokens_in"]
        w["tokens_out"] += t["tokens_out"]
        w["latency"] += t["latency_ms"]
        w["first"], w["last"] = min(w["first"], t["timestamp"]), max(w["last"], t["timestamp"])
    for c in tools:
        w = want.setdefault(c["session_id"], {"turns": 0, "tokens_in": 0, "tokens_out": 0, "latency": 0.0,
                                              "tools": 0, "first": c["timestamp"], "last": c["timestamp"]})
        w["tools"] += 1
        w["first"], w["last"] = min(w["first"], c["timestamp"]), max(w["last"], c["timestamp"])
    utc = lambda ms: datetime.fromtimestamp(ms / 1000, tz=timezone.utc)  # noqa: E731
    return {sid: (w["turns"], w["tokens_in"], w["tokens_out"], w["tools"],
                  round(w["latency"] / w["turns"], 3) if w["turns"] else None, utc(w["first"]), utc(w["last"]))
            for sid, w in want.items()}


def kpi_redis_state(expected_turns: Dict[Tuple[str, str], dict]) -> Tuple[Dict[str, dict], Dict[str, int]]:
    """Redis hot state of distinct valid turns: the newest turn (event time) of each session, and each
    session's distinct turn count (`session:{id}:metrics` total_turns)."""
    latest: Dict[str, dict] = {}
    counts: Dict[str, int] = {}
    for (sid, _tid), t in expected_turns.items():
        counts[sid] = counts.get(sid, 0) + 1
        if sid not in latest or t["timestamp"] > latest[sid]["timestamp"]:
            latest[sid] = t
    return latest, counts


HOUR_MS = 3_600_000


def own_accounts(records, run_id: str):
    """The records with `<run_id>-` before every valid event's account_id, so the run's billing keys are its
    own (other runs' usage in the same hours never mixes in)."""
    import json

    from workloads.generator import ProducedRecord

    out = []
    for rec in records:
        if rec.kind != "malformed":
            ev = json.loads(rec.value)
            ev["account_id"] = f"{run_id}-{ev['account_id']}"
            rec = ProducedRecord(rec.key, json.dumps(ev).encode(), rec.timestamp_ms, rec.kind)
        out.append(rec)
    return out


def billing_usage(records, prices=None) -> Dict[Tuple[str, int], list]:
    """Hand-computed billing_usage of produced turn and tool records: per (account_id, hour_start_ms),
    [turns, tokens_in, tokens_out, tool_invocations, estimated_cost_usd] of the distinct valid items."""
    import json
    from collections import defaultdict

    from events.contracts import AgentTurnCompleted
    from transforms.scoring import PriceTable, score_turn

    prices = prices or PriceTable.load()
    want: Dict[Tuple[str, int], list] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    seen = set()
    for rec in records:
        if rec.kind == "malformed":
            continue
        ev = json.loads(rec.value)
        key = ev.get("invocation_id") or (ev["session_id"], ev["turn_id"])
        if key in seen:
            continue
        seen.add(key)
        w = want[(ev["account_id"], ev["timestamp"] // HOUR_MS * HOUR_MS)]
        if "invocation_id" in ev:
            w[3] += 1
        else:
            w[0] += 1
            w[1] += ev["tokens_in"]
            w[2] += ev["tokens_out"]
            w[4] += score_turn(AgentTurnCompleted.model_validate(ev), prices)["estimated_cost_usd"]
    return dict(want)


def frontend_expected(produced) -> Tuple[Dict[str, dict], Dict[str, dict]]:
    """What the frontend pipeline writes for produced records ({topic: [ProducedRecord]}): the frontend_analytics
    row of each distinct valid event (validated, redacted with the local policy and key, enriched) by event_id, and
    `transforms.engagement.summarize` of each session's distinct events by session_id."""
    from collections import defaultdict

    from events.topics import CONTRACTS
    from transforms.engagement import engagement_event, summarize
    from transforms.pii import PiiPolicy, Redactor, load_hmac_key
    from transforms.rows import frontend_to_row
    from transforms.scoring import Scored, enrich_frontend
    from transforms.validation import parse_event

    redactor = Redactor(PiiPolicy.load(), load_hmac_key())
    rows: Dict[str, dict] = {}
    by_session: Dict[str, dict] = defaultdict(dict)
    for topic, recs in produced.items():
        for r in recs:
            if r.kind != "valid":
                continue
            event, _ = redactor.event(parse_event(r.value, CONTRACTS[topic]))
            scored = Scored(event, enrich_frontend(event))
            row = frontend_to_row(scored)
            rows[row["event_id"]] = row
            e = engagement_event(scored)
            by_session[e.session_id][e.event_id] = e
    return rows, {sid: summarize(evs.values()) for sid, evs in by_session.items()}
