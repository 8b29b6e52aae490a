"""The dead-letter envelope: bounded size (payloads by reference), digests, prefixes, old and new envelopes."""

from __future__ import annotations

import base64
import hashlib
import json
import random

import pytest

from io_connectors.kafka import DLQ_MAX_REQUEST_BYTES, MAX_DLQ_PAYLOAD_BYTES, RECORD_OVERHEAD_BYTES
from events.contracts import AgentToolInvoked
from events.dead_letters import (DEFAULT_MAX_PAYLOAD_BYTES, MAX_ENVELOPE_OVERHEAD_BYTES, SOURCE_KEY, DeadLetter,
                                     ErrorKind, KeepSource, PayloadTruncated, source_of, without_source)

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
LIMIT = DEFAULT_MAX_PAYLOAD_BYTES
BOUND = LIMIT + MAX_ENVELOPE_OVERHEAD_BYTES


def _dl(raw: bytes, **kw) -> DeadLetter:
    args = dict(step="Validate[text.agent.turn.completed]", error_class=ErrorKind.TOO_LARGE.value,
                error_message="payload is too large", topic="text.agent.turn.completed", partition=4,
                offset=123456, event_time_ms=TS)
    args.update(kw)
    return DeadLetter.of(raw, **args)


def test_defaults_fit_the_broker():
    # the producer's max.request.size is Kafka's default and <= the broker's message.max.bytes (1048588)
    assert DLQ_MAX_REQUEST_BYTES <= 1048588
    assert BOUND + RECORD_OVERHEAD_BYTES <= DLQ_MAX_REQUEST_BYTES
    assert LIMIT <= MAX_DLQ_PAYLOAD_BYTES and LIMIT * 3 < DLQ_MAX_REQUEST_BYTES  # well below


def test_a_2mb_utf8_payload_is_stored_by_reference():
    rng = random.Random(1)
    text = json.dumps({"session_id": "s-big", "turn_id": "t1", "response_text": "".join(
        rng.choice("abc déf ✓ 日本 😀\"\\\n") for _ in range(700_000))})
    raw = text.encode()
    assert len(raw) > 2_000_000
    envelope = _dl(raw).to_json()
    assert len(envelope) <= BOUND
    back = DeadLetter.from_json(envelope)
    assert back.payload_truncated is True and back.payload_encoding == "utf-8"
    assert back.payload_bytes == len(raw) and back.payload_sha256 == hashlib.sha256(raw).hexdigest()
    assert (back.source_topic, back.source_partition, back.source_offset) == ("text.agent.turn.completed", 4, 123456)
    assert text.startswith(back.payload) and len(back.payload) > 1000
    assert raw.startswith(back.prefix_bytes())
    assert len(json.dumps(back.payload, ensure_ascii=False).encode()) <= LIMIT
    with pytest.raises(PayloadTruncated, match="offset 123456"):
        back.raw_payload()
    assert back.to_json() == envelope  # stable: a bounded envelope is bounded again to the same bytes


def test_a_non_utf8_payload_is_base64_and_stored_by_reference():
    raw = random.Random(2).randbytes(1_500_000)
    with pytest.raises(UnicodeDecodeError):
        raw.decode()
    envelope = _dl(raw, error_class=ErrorKind.NOT_UTF8.value).to_json()
    assert len(envelope) <= BOUND
    back = DeadLetter.from_json(envelope)
    assert back.payload_encoding == "base64" and back.payload_truncated
    assert back.payload_bytes == 1_500_000 and back.payload_sha256 == hashlib.sha256(raw).hexdigest()
    prefix = base64.b64decode(back.payload, validate=True)
    assert raw.startswith(prefix) and len(prefix) > LIMIT // 2


def test_small_payloads_stay_inline_and_round_trip():
    for raw in (b'{"a": 1}', b"\xff\xfe\x00", "naïve ✓".encode(), b""):
        d = _dl(raw)
        back = DeadLetter.from_json(d.to_json())
        assert back.raw_payload() == raw and not back.payload_truncated
        assert back.payload_bytes == len(raw) and back.payload_sha256 == hashlib.sha256(raw).hexdigest()
        assert back == d


def test_payloads_near_the_limit_and_escapes_are_measured_as_json():
    fits = b"x" * (LIMIT - 2)
    assert not DeadLetter.from_json(_dl(fits).to_json()).payload_truncated
    assert DeadLetter.from_json(_dl(fits + b"x").to_json()).payload_truncated
    # control characters cost 6 bytes of JSON each: 60 KB of them do not fit 256 KB
    ctl = b"\x01" * 60_000
    d = DeadLetter.from_json(_dl(ctl).to_json())
    assert d.payload_truncated and ctl.startswith(d.prefix_bytes()) and len(d.to_json()) <= BOUND


def test_every_field_is_bounded():
    evil = "\x00😀\ud800" * 50_000  # control characters, astral characters, a lone surrogate
    d = DeadLetter(evil, "utf-8", evil, 1, 2, evil, evil, evil, TS, TS)
    envelope = d.to_json(4096)
    assert len(envelope) <= 4096 + MAX_ENVELOPE_OVERHEAD_BYTES
    envelope.decode("utf-8")  # valid UTF-8 on the wire
    back = DeadLetter.from_json(envelope)
    assert back.payload_truncated and len(back.error_message) <= 2000 and len(back.step) <= 200
    assert back.error_message.startswith("\x00😀\ud800")
    with pytest.raises(ValueError):
        d.to_json(10)


def test_old_envelopes_and_unknown_fields_are_read():
    old = {"payload": "eyJhIjogMX0=", "payload_encoding": "base64", "source_topic": "agent.tool.invoked",
           "source_partition": 1, "source_offset": 7, "step": "Validate", "error_class": "not_utf8",
           "error_message": "m", "event_time_ms": TS, "processing_time_ms": TS}
    d = DeadLetter.from_json(json.dumps(old).encode())
    assert d.raw_payload() == b'{"a": 1}' and d.payload_bytes is None and not d.payload_truncated
    # writing it again fills size and digest
    again = DeadLetter.from_json(d.to_json())
    assert again.payload_bytes == 8 and again.payload_sha256 == hashlib.sha256(b'{"a": 1}').hexdigest()
    newer = DeadLetter.from_json(json.dumps({**old, "a_field_of_the_future": 1}).encode())
    assert newer.source_offset == 7


def test_of_event_takes_the_source_from_the_event():
    ev = AgentToolInvoked.model_validate({"invocation_id": "i1", "session_id": "s1", "tool_name": "crm_lookup",
                                          "success": True, "latency_ms": 3.0, "timestamp": TS})
    no_source = DeadLetter.of_event(ev, step="RedactTools", error=RuntimeError("x"), topic="fallback")
    assert (no_source.source_topic, no_source.source_partition, no_source.source_offset) == ("fallback", None, None)
    ev = ev.with_source("agent.tool.invoked", 2, 99)
    d = DeadLetter.of_event(ev, step="RedactTools", error=RuntimeError("boom"), topic="fallback")
    assert (d.source_topic, d.source_partition, d.source_offset, d.step) == ("agent.tool.invoked", 2, 99, "RedactTools")
    assert d.error_message == "RuntimeError: boom" and d.event_time_ms == TS
    assert json.loads(d.raw_payload())["invocation_id"] == "i1"


def test_keep_source_puts_the_position_on_sink_rows():
    ev = AgentToolInvoked.model_validate({"invocation_id": "i1", "session_id": "s1", "tool_name": "t",
                                          "success": True, "latency_ms": 3.0, "timestamp": TS})
    row = KeepSource(lambda e: {"id": e.invocation_id})(ev.with_source("agent.tool.invoked", 0, 5))
    assert row == {"id": "i1", SOURCE_KEY: ("agent.tool.invoked", 0, 5)}
    assert source_of(row) == ("agent.tool.invoked", 0, 5) and without_source(row) == {"id": "i1"}
    assert KeepSource(lambda e: {"id": 1})(ev) == {"id": 1}  # no source: no key
    d = DeadLetter.of(b"{}", step="s", error_class="e", error_message="m", topic="agent_turns fallback",
                      source=source_of(row))
    assert (d.source_topic, d.source_partition, d.source_offset) == ("agent.tool.invoked", 0, 5)


def test_source_of_an_event_a_scored_event_and_neither():
    from transforms.scoring import Scored

    ev = AgentToolInvoked.model_validate({"invocation_id": "i1", "session_id": "s1", "tool_name": "t",
                                          "success": True, "latency_ms": 3.0, "timestamp": TS})
    placed = ev.with_source("agent.tool.invoked", 3, 42)
    assert source_of(placed) == ("agent.tool.invoked", 3, 42)
    assert source_of(Scored(placed, {"scorer_version": "v"})) == ("agent.tool.invoked", 3, 42)
    assert source_of(ev) is None and source_of(Scored(ev, {})) is None
    assert source_of(object()) is None and source_of(("a", "tuple")) is None and source_of({}) is None
