"""A hostile corpus for every input topic of the registry, each record labelled with what must happen to it.

    python -m workloads.hostile [--run-id ID] [--per-topic N]   # prints the counts per topic and outcome

`hostile_corpus(run_id, start_ms)` returns `HostileRecord`s: for every topic of `events.topics` (its contract
in `events.contracts`) a base event that is valid, then

- by hand: broken and truncated JSON, 10,000 levels of nesting (at the root and inside a field), huge
  integers, NaN / Infinity / overflowing exponents, a 10 MB payload, invalid UTF-8 (stray bytes, overlong
  forms, CESU-8 surrogates, a cut multi-byte character), lone surrogates as JSON escapes (`"\\ud800"`), NUL
  inside strings (escaped: valid; raw in the JSON text: not JSON), SQL, COPY, Lua and Redis-protocol injection
  strings, emoji and right-to-left text, wrong types in every field and every required field missing
  (derived from the contract's fields), timestamps in seconds, empty and null keys and values, and records
  just under the 1 MiB payload limit whose dead letter would be larger than the broker's 1 MiB message
  limit without the envelope's bound (`events.dead_letters.DeadLetter.bounded`);
- with hypothesis: arbitrary Unicode text (every plane, controls, NUL) in the topic's free-text and id fields
  and arbitrary integers in its count fields, labelled by the contract's bounds;
- seeded at random: the hostile texts above in random string fields, JSON cut at random places, a 0xFF byte
  at a random place.

Labels (`expect`): "valid" with `doc`, the exact event the pipelines must see (the expected row and state
are then the pipelines' own pure functions of it: redaction, scoring, the row builders), or "dead_letter"
with `error_class`, the `ErrorKind` value the record's one dead letter must carry.

Determinism: the hand-made and seeded records are a function of (run_id, start_ms) (`random.Random(seed)`).
Hypothesis is driven through its public `@given` with `derandomize=True` and no example database
(`strategy.example()` is random and warns): its draws repeat within a process, which is all the tests need
(each builds the corpus once and computes its expectations from the same records), but across processes a
few of them (6 of 300 per topic, seen once) differed, likely hypothesis' per-process caches; a check that
regenerates the corpus in another process must match records by content, not by position.
"""

from __future__ import annotations

import json
import random
import typing
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from events import topics
from events.contracts import StrictEventModel
from events.dead_letters import ErrorKind

VALID, DEAD = "valid", "dead_letter"
FRONTEND_TOPICS = (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET)
MiB = 1024 * 1024
MAX_PAYLOAD_BYTES = MiB  # ValidateEvents' default --max_payload_bytes
BROKER_MAX_BYTES = MiB  # the producers' max.request.size / the broker's message.max.bytes (io_connectors.kafka)

# Texts that have broken sinks elsewhere; each is a valid value of any unconstrained string field.
TEXTS: Dict[str, str] = {
    "nul": "before\x00after",
    "nul_only": "\x00",
    "emoji": "\U0001F44D\U0001F3FD \U0001F1EB\U0001F1F7 \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F600",
    "rtl": "\u0645\u0631\u062d\u0628\u0627 \u202eevil\u202c \u05e9\u05dc\u05d5\u05dd",
    "sql": "'; DROP TABLE agent_turns; --",
    "sql_copy": "\\'; COPY agent_turns TO PROGRAM 'sh'; --",
    "copy_meta": "tab\there\nnewline\r\\N \\. end",
    "copy_null_marker": "\\N",
    "copy_end_marker": "\\.",
    "lua": "']) redis.call('FLUSHALL') --",
    "lua_quote": "\"; return redis.call('CONFIG','SET','dir','/') --",
    "redis_protocol": "*1\r\n$8\r\nFLUSHALL\r\n",
    "zero_width": "a\u200bb\ufeffc\u2060d",
    "combining": "Z\u0324\u0354\u0367\u0311a\u0308\u0356\u032dl\u036e\u0312g\u030c\u0317o\u0319\u0314",
    "plane_edges": "\uffff\U0010ffff\ufffe",
    "literal_backslash_u": "\\u0000 is not NUL",
    "controls": "\x01\x07\x1b[31mred\x7f",
    "format_strings": "%s %d {0} ${jndi:ldap://x} {{7*7}}",
    "whitespace_only": " \t ",
    "long": "Lorem ipsum \u00e9\U0001F600 " * 400,  # 6,000 characters: longer than any VARCHAR column
}


@dataclass(frozen=True)
class HostileRecord:
    topic: str
    key: Optional[bytes]
    value: Optional[bytes]
    timestamp_ms: int  # the Kafka record timestamp
    case: str  # what the record is, e.g. "text:nul:response_text"
    expect: str  # VALID or DEAD
    error_class: Optional[str] = None  # for DEAD: the ErrorKind value of its one dead letter
    doc: Optional[Dict[str, Any]] = None  # for VALID (and a sink's dead letter): the event the pipelines see

    @property
    def producible(self) -> bool:
        """Whether the broker takes it at all (a 10 MB record is refused by the producer, never read)."""
        return self.value is None or len(self.value) + len(self.key or b"") + 512 <= BROKER_MAX_BYTES


# --- the contracts' fields ------------------------------------------------------------------------------

def _kind(annotation: Any) -> Tuple[str, bool]:
    """(kind, nullable) of a field annotation: kind in str/int/float/bool/list/dict/any."""
    args = typing.get_args(annotation)
    nullable = typing.get_origin(annotation) is typing.Union and type(None) in args
    if nullable:
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation) or annotation
    kind = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "dict"}.get(origin, "any")
    return kind, nullable


def _bounds(field) -> Dict[str, int]:
    out = {}
    for m in field.metadata:
        for name in ("min_length", "max_length", "ge", "le"):
            if getattr(m, name, None) is not None:
                out[name] = getattr(m, name)
    return out


def fields_of(model: type) -> Dict[str, Tuple[str, bool, bool, Dict[str, int]]]:
    """{name: (kind, nullable, required, bounds)} of a contract."""
    return {name: (*_kind(f.annotation), f.is_required(), _bounds(f)) for name, f in model.model_fields.items()}


def _wrong_values(kind: str, strict: bool) -> List[Any]:
    """Values of another JSON type than `kind` accepts (lax models coerce "5" to 5 and 1 to True: not those)."""
    if kind == "str":
        return [1, 1.5, True, [], {}]
    if kind == "int":
        return ["1", 1.5, True, [], {}, "abc"] if strict else [1.5, [], {}, "abc"]
    if kind == "float":
        return ["1.5", True, [], {}] if strict else [[], {}, "abc"]
    if kind == "bool":
        return ["true", 1, 2, [], {}] if strict else [2, "maybe", [], {}]
    if kind == "list":
        return ["x", 1, True, {}]
    if kind == "dict":
        return ["x", 1, True, []]
    return []


# --- base events ------------------------------------------------------------------------------------------

def base_event(topic: str, run_id: str, i: int, ts: int) -> Dict[str, Any]:
    """A valid event of `topic` with every field set; ids unique per (run_id, i)."""
    sid = f"{run_id}-h{i % 40:02d}"
    if topic == topics.TURNS:
        return {"schema_version": 1, "event_type": "text_agent.turn_completed", "session_id": sid,
                "turn_id": f"ht{i:06d}", "user_id": f"user-{i % 7}", "account_id": f"acct-{i % 3}",
                "channel": "web_chat", "model_name": "gpt-4o", "tokens_in": 120 + i % 50, "tokens_out": 40 + i % 30,
                "latency_ms": 250.5 + i % 100, "response_text": "Our Pro plan includes unlimited seats.",
                "user_message": "what does pro cost?", "tools_used": ["kb_search"],
                "tool_results": {"kb_search": {"success": True}}, "conversation_context": {"previous_turns": 1},
                "timestamp": ts}
    if topic == topics.TOOLS:
        return {"schema_version": 1, "event_type": "agent.tool_invoked", "invocation_id": f"{run_id}-hi{i:06d}",
                "session_id": sid, "turn_id": f"ht{i:06d}", "user_id": f"user-{i % 7}", "account_id": f"acct-{i % 3}",
                "tool_name": "kb_search", "success": True, "latency_ms": 80.0 + i % 40, "error_message": None,
                "arguments": {"query": "pro plan"}, "result_summary": "ok", "input_bytes": 64, "output_bytes": 512,
                "timestamp": ts}
    if topic == topics.SESSIONS:
        return {"schema_version": 1, "event_type": "text_agent.session_updated", "session_id": sid, "seq": i + 1,
                "user_id": f"user-{i % 7}", "account_id": f"acct-{i % 3}", "channel": "web_chat", "status": "active",
                "last_turn_id": f"ht{i:06d}", "last_message": "thanks", "total_turns": 3,
                "avg_response_time_ms": 812.5, "started_at_ms": ts - 60_000, "ended_at_ms": None, "timestamp": ts}
    front = {"schema_version": 1, "session_id": f"{run_id}-fh{i % 40:02d}", "user_id": f"visitor-{i % 9}",
             "account_id": f"acct-{i % 3}", "page_url": "https://shop.example.com/pricing?plan=pro",
             "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15",
             "country": "US", "timezone": "America/New_York", "timestamp": ts}
    if topic == topics.FRONTEND_INTERACTION:
        return {**front, "event_type": "click", "event_id": f"{run_id}-he{i:06d}", "page_title": "Pricing",
                "referrer": "https://www.google.com/", "screen_resolution": "1920x1080", "viewport_size": "1280x720",
                "widget_id": "w-1", "interaction_type": "button", "time_on_page": 12, "element_id": "buy",
                "element_class": "btn", "element_text": "Buy now", "click_coordinates": {"x": 10.5, "y": 20.0},
                "message_length": None}
    if topic == topics.FRONTEND_SESSION:
        return {**front, "event_type": "frontend.session_analytics", "started_at_ms": ts - 120_000,
                "ended_at_ms": ts, "duration_ms": 120_000, "page_views": 3, "interactions": 5, "widget_opens": 1,
                "messages_sent": 2, "landing_page": "https://shop.example.com/", "exit_page": None,
                "referrer": None, "utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "q3",
                "is_bounce": False}
    if topic == topics.FRONTEND_WIDGET:
        return {**front, "event_type": "frontend.widget_performance", "widget_id": f"w-{i % 4}",
                "widget_version": "2.3.1", "load_time_ms": 320.0, "time_to_interactive_ms": 450.0,
                "first_response_ms": 900.0, "js_errors": 0, "render_errors": 0, "connection_type": "4g"}
    if topic == topics.BILLING:
        hour = ts - ts % 3_600_000
        return {"schema_version": 1, "event_type": "billing.usage_metered", "account_id": f"{run_id}-acct-{i % 5}",
                "hour_start_ms": hour, "turns": 10, "tokens_in": 5000, "tokens_out": 2000, "tool_invocations": 3,
                "estimated_cost_usd": 0.042, "revision": i, "is_final": False, "timestamp": ts}
    if topic == topics.LEADS:
        return {"schema_version": 1, "lead_id": lead_id_base(run_id) + i % 2000, "marketo_guid": f"{run_id}-hg{i:06d}",
                "change_type": "lead_change", "activity_type_id": 13, "email": "ada.lovelace@example.com",
                "first_name": "Ada", "last_name": "Lovelace", "company": "Analytical Engines", "title": "CTO",
                "phone": "+1 415 555 0100", "lead_source": "Website", "lead_status": "MQL", "lead_score": 70,
                "country": "US", "state": "CA", "city": "Springfield", "created_at_ms": ts - 86_400_000,
                "updated_at_ms": ts, "changes": [{"field": "leadScore", "old_value": 40, "new_value": 70}],
                "attributes": {"industry": "software"}, "timestamp": ts}
    raise KeyError(f"no base event for topic {topic!r}: add one to workloads/hostile.py")


def lead_id_base(run_id: str) -> int:
    """First lead_id of a run (2,000 ids each, below the INTEGER column's maximum), so runs never share a lead."""
    return 1_000_000_000 + zlib.crc32(run_id.encode()) % 500_000 * 2000


def _dumps(doc: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# --- hypothesis draws -------------------------------------------------------------------------------------

def hypothesis_draws(strategy, n: int) -> List[Any]:
    """Up to `n` values of `strategy`, the same ones on every call (derandomized, no database)."""
    from hypothesis import HealthCheck, Phase, given, settings

    out: List[Any] = []

    @settings(derandomize=True, database=None, max_examples=n, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        out.append(value)

    collect()
    return out[:n]


def _text_strategy():
    from hypothesis import strategies as st

    # every code point but surrogates (they cannot reach a str from valid JSON: see the hand-made cases)
    return st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60)


# --- the corpus -------------------------------------------------------------------------------------------

def _topic_records(topic: str, run_id: str, start_ms: int, n_random: int, n_hypothesis: int,
                   seed: int) -> Iterator[HostileRecord]:
    contract = topics.topic(topic).contract
    strict = issubclass(contract, StrictEventModel)
    fields = fields_of(contract)
    rng = random.Random(seed)
    counter = iter(range(10 ** 9))

    def rec(case, value, expect, error_class=None, doc=None, key=b"k"):
        i = next(counter)
        return HostileRecord(topic, key, value, start_ms + i * 7, case, expect,
                             None if error_class is None else ErrorKind(error_class).value, doc)

    def base():
        i = next(counter)
        return base_event(topic, run_id, 100_000 + i, start_ms + i * 7)

    def valid(case, doc, ascii_only=True, key=b"k"):
        return rec(case, _dumps(doc, ascii_only), VALID, doc=doc, key=key)

    def dead(case, value, kind: ErrorKind, key=b"k"):
        return rec(case, value, DEAD, kind.value, key=key)

    free_text = [n for n, (k, nullable, _, b) in fields.items()
                 if k == "str" and "max_length" not in b and "min_length" not in b and n != "event_type"]
    ids = [n for n, (k, _, _, b) in fields.items() if k == "str" and "max_length" in b]
    ints = [n for n, (k, _, _, b) in fields.items() if k == "int" and n not in ("timestamp", "schema_version")]

    # the unchanged base event, valid with every key shape
    yield valid("base", base())
    yield valid("key:empty", base(), key=b"")
    yield valid("key:null", base(), key=None)
    yield valid("key:binary", base(), key=b"\xff\x00\xfe")

    # broken, truncated, empty
    raw = _dumps(base())
    for case, value in (("json:empty_value", b""), ("json:whitespace", b"  \n"), ("json:garbage", b"{nope"),
                        ("json:trailing_comma", raw[:-1] + b",}"), ("json:single_quotes", raw.replace(b'"', b"'")),
                        ("json:two_objects", raw + raw), ("json:unclosed_string", b'{"session_id": "abc'),
                        ("json:bare_word", b"null_"), ("json:comment", b"// hi\n" + raw),
                        ("json:raw_nul_in_string", raw.replace(b'"k', b'"\x00k', 1) if b'"k' in raw
                         else raw[:2] + b"\x00" + raw[2:]),
                        ("json:raw_control_in_string", raw.replace(b'": "', b'": "\x01', 1)),
                        ("json:lone_surrogate_escape", raw[:-1] + b', "note": "\\ud800"}'),
                        ("json:lone_low_surrogate_escape", raw[:-1] + b', "note": "x\\udc00y"}'),
                        ("json:reversed_surrogate_pair", raw[:-1] + b', "note": "\\ude00\\ud83d"}'),
                        ("json:bad_escape", raw[:-1] + b', "note": "\\x41"}'),
                        ("json:huge_int_5000_digits", raw[:-1] + b', "note": ' + b"9" * 5000 + b"}"),
                        ("json:deep_root_10000", b"[" * 10_000 + b"]" * 10_000),
                        ("json:deep_object_root_10000", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
                        ("json:deep_field_10000", raw[:-1] + b', "note": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")):
        yield dead(case, value, ErrorKind.NOT_JSON)
    for cut in (1, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        yield dead(f"json:truncated_at_{cut}", raw[:cut], ErrorKind.NOT_JSON)
    yield rec("json:null_value", None, DEAD, ErrorKind.NOT_JSON.value)
    for case, value in (("json:array", b"[1, 2]"), ("json:string", b'"hello"'), ("json:number", b"42"),
                        ("json:null", b"null"), ("json:true", b"true")):
        yield dead(case, value, ErrorKind.NOT_OBJECT)
    yield dead("json:empty_object", b"{}", ErrorKind.SCHEMA)

    # invalid UTF-8
    for case, bad in (("utf8:ff", b"\xff"), ("utf8:overlong_slash", b"\xc0\xaf"), ("utf8:cesu_surrogate", b"\xed\xa0\x80"),
                      ("utf8:cut_multibyte", b"\xe2\x82"), ("utf8:above_max", b"\xf4\x90\x80\x80"),
                      ("utf8:latin1", "caf\u00e9".encode("latin-1"))):
        yield dead(case, raw[:-1] + b', "note": "' + bad + b'"}', ErrorKind.NOT_UTF8)
    yield dead("utf8:raw_lone_surrogate", _dumps({**base(), "note": "\ud800"}, ascii_only=False), ErrorKind.NOT_UTF8)

    # non-finite and huge numbers
    for name, (kind, *_rest) in fields.items():
        if kind == "float":
            for lit in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
                doc_raw = _dumps({**base(), name: 0.5})
                yield dead(f"number:{lit.decode()}:{name}", doc_raw.replace(b'"%s": 0.5' % name.encode(),
                                                                            b'"%s": %s' % (name.encode(), lit)),
                           ErrorKind.SCHEMA)  # the contracts' allow_inf_nan=False
    for name in ints:
        b = fields[name][3]
        yield dead(f"number:huge_int:{name}", _dumps({**base(), name: 10 ** 30}), ErrorKind.SCHEMA)
        yield dead(f"number:above_le:{name}", _dumps({**base(), name: b["le"] + 1}), ErrorKind.SCHEMA)
        yield valid(f"number:at_le:{name}", {**base(), name: b["le"]})
        yield valid(f"number:at_ge:{name}", {**base(), name: b["ge"]})
        yield dead(f"number:below_ge:{name}", _dumps({**base(), name: b["ge"] - 1}), ErrorKind.SCHEMA)
    yield valid("number:huge_int_extra", {**base(), "note": 10 ** 100})
    # NaN, Infinity and 1e999 (inf) in a free-form field: Python's and pydantic's JSON parsers take them, and no
    # contract field holds them; only a JSON column refuses them (jsonb has no NaN): the frontend rows' metadata,
    # where the Postgres sink dead-letters the row. Other topics never write free-form values to a JSON column.
    for lit in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        value = _dumps(base())[:-1] + b', "note": ' + lit + b"}"
        if topic in FRONTEND_TOPICS:
            yield rec(f"number:{lit.decode()}_extra", value, DEAD, ErrorKind.SINK_PERMANENT.value, doc=json.loads(value))
        else:
            yield rec(f"number:{lit.decode()}_extra", value, VALID, doc=json.loads(value))

    # timestamps
    ts_doc = base()
    yield dead("timestamp:seconds", _dumps({**ts_doc, "timestamp": ts_doc["timestamp"] // 1000}), ErrorKind.TIMESTAMP)
    yield dead("timestamp:microseconds", _dumps({**ts_doc, "timestamp": ts_doc["timestamp"] * 1000}),
               ErrorKind.TIMESTAMP)
    yield dead("timestamp:zero", _dumps({**ts_doc, "timestamp": 0}), ErrorKind.TIMESTAMP)
    yield dead("timestamp:negative", _dumps({**ts_doc, "timestamp": -1}), ErrorKind.TIMESTAMP)
    yield dead("timestamp:fractional", _dumps({**ts_doc, "timestamp": ts_doc["timestamp"] + 0.5}), ErrorKind.SCHEMA)
    yield dead("timestamp:iso_string", _dumps({**ts_doc, "timestamp": "2026-12-02T10:00:00Z"}), ErrorKind.SCHEMA)
    yield dead("timestamp:huge", _dumps({**ts_doc, "timestamp": 10 ** 30}), ErrorKind.TIMESTAMP)

    # wrong types in every field, every required field missing, null where it is not allowed
    for name, (kind, nullable, required, _b) in fields.items():
        for wrong in _wrong_values(kind, strict):
            yield dead(f"type:{name}:{type(wrong).__name__}", _dumps({**base(), name: wrong}), ErrorKind.SCHEMA)
        if required:
            doc = base()
            del doc[name]
            yield dead(f"missing:{name}", _dumps(doc), ErrorKind.SCHEMA)
        if not nullable:
            yield dead(f"null:{name}", _dumps({**base(), name: None}), ErrorKind.SCHEMA)
        elif not required:
            yield valid(f"null_ok:{name}", {**base(), name: None})
    for name in ids:
        b = fields[name][3]
        if b.get("min_length"):
            yield dead(f"empty:{name}", _dumps({**base(), name: ""}), ErrorKind.SCHEMA)
        yield dead(f"too_long:{name}", _dumps({**base(), name: "x" * (b["max_length"] + 1)}), ErrorKind.SCHEMA)
        yield valid(f"longest:{name}", {**base(), name: _id(run_id, "\U0001F600" * b["max_length"], "", b["max_length"])},
                    ascii_only=False)
    yield dead("schema_version:newer", _dumps({**base(), "schema_version": 2}), ErrorKind.SCHEMA)

    # hostile texts in every string field: valid, written as they are (escaped and raw UTF-8 JSON)
    for tname, text in TEXTS.items():
        for name in free_text + ids:
            bounds = fields[name][3]
            if len(text) < bounds.get("min_length", 0) or len(text) > bounds.get("max_length", 10 ** 9):
                continue
            value = text if name not in ids else _id(run_id, text, next(counter), bounds["max_length"])
            doc = base()
            if "session_id" in doc and name != "session_id":  # its own session: the session's state is this text
                doc["session_id"] = _id(run_id, f"x{tname}", next(counter), 100)
            yield valid(f"text:{tname}:{name}", {**doc, name: value}, ascii_only=tname in ("nul", "emoji"))
        yield valid(f"text:{tname}:extra_field", {**base(), f"x_{tname}": text})
        yield valid(f"text:{tname}:extra_key", {**base(), f"k{tname}{text}": 1})
    yield valid("text:empty_extra_key", {**base(), "": "empty key"})
    yield valid("text:nested_nul_extra", {**base(), "x_nested": {"a\x00": ["\x00", {"b": "\x00"}]}})
    yield valid("nesting:deep_199", {**base(), "x_deep": json.loads("[" * 190 + "]" * 190)})

    # a 10 MB payload (the producer refuses it: the broker never has it) and records just under the limit
    yield dead("size:10MB", _dumps({**base(), "note": "x" * (10 * MiB)}), ErrorKind.TOO_LARGE)
    yield dead("size:one_byte_over", _pad(base(), MAX_PAYLOAD_BYTES + 1), ErrorKind.TOO_LARGE)
    # not UTF-8 (one 0xFF): the dead letter's base64 is 1.33x the payload, over the broker's 1 MiB
    near = _pad(base(), MAX_PAYLOAD_BYTES - 600)
    yield dead("size:near_limit_not_utf8", near[:-3] + b"\xff" + near[-2:], ErrorKind.NOT_UTF8)
    # valid UTF-8 of control characters, which JSON-escape to 6 bytes each: the envelope would be ~6 MB
    ctrl = b'{"note": "' + b"\x01" * (MAX_PAYLOAD_BYTES - 600) + b'"}'
    yield dead("size:near_limit_controls", ctrl, ErrorKind.NOT_JSON)
    yield dead("size:near_limit_schema", _pad({**base(), "timestamp": "late"}, MAX_PAYLOAD_BYTES - 600),
               ErrorKind.SCHEMA)
    yield valid("size:near_limit_valid", json.loads(_pad(base(), MAX_PAYLOAD_BYTES - 600)))

    # seeded: hostile texts in random string fields, JSON cut anywhere, a stray 0xFF anywhere
    names = list(TEXTS)
    for _ in range(n_random):
        roll = rng.random()
        doc = base()
        if roll < 0.4 and free_text:
            name = rng.choice(free_text)
            doc[name] = "".join(TEXTS[rng.choice(names)] for _ in range(rng.randint(1, 3)))
            yield valid(f"random:text:{name}", doc, ascii_only=rng.random() < 0.5)
        elif roll < 0.7:
            raw = _dumps(doc)
            yield dead("random:truncated", raw[:rng.randrange(1, len(raw))], ErrorKind.NOT_JSON)
        else:
            raw = _dumps(doc)
            at = rng.randrange(0, len(raw))
            yield dead("random:stray_ff", raw[:at] + b"\xff" + raw[at:], ErrorKind.NOT_UTF8)

    # hypothesis: arbitrary text in string fields, arbitrary integers in count fields
    if n_hypothesis:
        from hypothesis import strategies as st

        targets = free_text + ids
        for j, text in enumerate(hypothesis_draws(_text_strategy(), n_hypothesis)):
            if not targets:
                break
            name = targets[j % len(targets)]
            b = fields[name][3]
            if name in ids:
                text = _id(run_id, text, j, b["max_length"])
            yield valid(f"hypothesis:text:{name}", {**base(), name: text}, ascii_only=j % 2 == 0)
        for j, n in enumerate(hypothesis_draws(st.integers(min_value=-2 ** 70, max_value=2 ** 70), n_hypothesis // 4)):
            if not ints:
                break
            name = ints[j % len(ints)]
            b = fields[name][3]
            doc = {**base(), name: n}
            yield valid(f"hypothesis:int:{name}", doc) if b["ge"] <= n <= b["le"] else \
                dead(f"hypothesis:int:{name}", _dumps(doc), ErrorKind.SCHEMA)


def _id(run_id: str, text: str, n, max_length: int) -> str:
    """An id holding `text` that stays unique (suffix `-n`) and starts with the run's prefix (tests clean up by it)."""
    head, tail = f"{run_id}-", f"-{n}" if n != "" else ""
    return head + text[:max_length - len(head) - len(tail)] + tail


def _pad(doc: Dict[str, Any], size: int) -> bytes:
    """`doc` with an extra ASCII field that makes its JSON exactly `size` bytes."""
    raw = _dumps({**doc, "padding": ""})
    return _dumps({**doc, "padding": "p" * (size - len(raw))})


def hostile_corpus(run_id: str = "hostile", start_ms: int = 1_795_000_000_000, per_topic_random: int = 700,
                   per_topic_hypothesis: int = 300, topic_names=None) -> List[HostileRecord]:
    """The labelled corpus of every input topic (or of `topic_names`), deterministic in its arguments."""
    out: List[HostileRecord] = []
    for k, t in enumerate(topics.TOPICS):
        if topic_names is not None and t.name not in topic_names:
            continue
        out.extend(_topic_records(t.name, run_id, start_ms, per_topic_random, per_topic_hypothesis, seed=1000 + k))
    return out


def main(argv=None) -> None:
    import argparse
    from collections import Counter

    ap = argparse.ArgumentParser(description="Print the hostile corpus' counts per topic and outcome.")
    ap.add_argument("--run-id", default="hostile")
    args = ap.parse_args(argv)
    corpus = hostile_corpus(args.run_id)
    for (t, e, c), n in sorted(Counter((r.topic, r.expect, r.error_class) for r in corpus).items(),
                               key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        print(f"{t:32} {e:12} {c or '':24} {n}")
    print(f"total {len(corpus)}")


if __name__ == "__main__":
    main()
