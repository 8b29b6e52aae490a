"""The hostile corpus (workloads/hostile.py) through the pipelines' real composites on the DirectRunner.

Every record is either a valid output (its row built by the pipelines' row builders, acceptable to the
Postgres COPY path and the Redis guard script) or exactly one dead letter with its label's error class and a
reason; nothing raises, nothing is dropped, and every dead letter's envelope fits the broker's 1 MiB limit.
Also the bugs the corpus found, one test each (see the issue-15 commits).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from hypothesis import HealthCheck, given, settings, strategies as st

from events import topics
from events.dead_letters import SOURCE_KEY, DeadLetter, ErrorKind, KeepSource, source_of, split_dead_letters
from events.parsing import EventError, parse_event, parse_record
from events.records import KafkaRecord
from events.topics import CONTRACTS
from io_connectors.kafka import DLQ_MAX_REQUEST_BYTES, RECORD_OVERHEAD_BYTES, RouteDeadLetters
from io_connectors.postgres import PostgresUpserter, _copy_text, pg_json, pg_text
from io_connectors.redis_state import script_args
from transforms import field_crypto as fc
from transforms.pii import PiiPolicy, RedactPii, Redactor
from transforms.routing import ValidateByTopic
from transforms.rows import (FRONTEND_COLUMNS, FRONTEND_JSON, FRONTEND_KEYS, LEAD_COLUMNS, LEAD_JSON, LEAD_KEYS,
                             frontend_to_row, lead_to_row)
from transforms.scoring import (EnrichFrontendEvents, PriceTable, ScoreAgentTurns, ScoreLeads, Scored,
                                enrich_frontend, score_lead, score_turn)
from transforms.turns import AGENT_TURN_JSON, AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS, session_state_event, turn_to_row
from transforms.windows import tool_activity
from workloads.hostile import DEAD, TEXTS, VALID, hostile_corpus

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
HMAC = "unit-test-key-0123456789abcdef"
SINK = ErrorKind.SINK_PERMANENT.value
START_MS = int(time.time() * 1000) - 3_600_000  # validation judges timestamps by the wall clock

TABLES = {  # topic -> (table, row builder of a Scored, columns, keys, json columns)
    topics.TURNS: ("agent_turns", turn_to_row, AGENT_TURN_SCORED_COLUMNS, AGENT_TURN_KEYS, AGENT_TURN_JSON),
    topics.FRONTEND_INTERACTION: ("frontend_analytics", frontend_to_row, FRONTEND_COLUMNS, FRONTEND_KEYS, FRONTEND_JSON),
    topics.FRONTEND_SESSION: ("frontend_analytics", frontend_to_row, FRONTEND_COLUMNS, FRONTEND_KEYS, FRONTEND_JSON),
    topics.FRONTEND_WIDGET: ("frontend_analytics", frontend_to_row, FRONTEND_COLUMNS, FRONTEND_KEYS, FRONTEND_JSON),
    topics.LEADS: ("marketo_leads", lead_to_row, LEAD_COLUMNS, LEAD_KEYS, LEAD_JSON),
}


def _column_limits():
    """{table: {column: ("varchar", n) | ("integer", None)}} from sql/*.sql, in migration order."""
    limits = {}
    for path in sorted((REPO / "sql").glob("*.sql")):
        table = None
        for line in path.read_text().splitlines():
            m = re.match(r"\s*CREATE TABLE (?:IF NOT EXISTS )?(\w+)", line, re.I)
            if m:
                table = m.group(1)
                continue
            m = re.match(r"\s*ALTER TABLE (\w+) ALTER COLUMN (\w+) TYPE TEXT", line, re.I)
            if m:
                limits.get(m.group(1), {}).pop(m.group(2), None)
                continue
            m = re.match(r"\s+(\w+)\s+(VARCHAR\((\d+)\)|INTEGER)", line, re.I)
            if m and table:
                limits.setdefault(table, {})[m.group(1)] = (("varchar", int(m.group(3))) if m.group(3)
                                                            else ("integer", None))
    return limits


LIMITS = _column_limits()


def copy_problems(table, columns, json_columns, row):
    """Why Postgres' COPY would refuse this row ([] when it accepts it): the sink's own encoding, then the
    text format's rules (UTF-8, no NUL), the JSON columns (valid JSON, no NaN) and the column types."""
    up = PostgresUpserter(table, columns[:1], columns, json_columns=json_columns, settings=object())
    try:
        values = up._values(row)
    except ValueError as e:
        return [f"encode: {e}"]
    line = "\t".join(map(_copy_text, values))
    problems = []
    if "\x00" in line:
        problems.append("NUL in the COPY line")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as e:
        problems.append(f"not UTF-8: {e}")
    for c, v in zip(columns, values):
        if c in json_columns and v is not None:
            json.loads(v, parse_constant=lambda x: problems.append(f"{c}: {x}"))
        kind, n = LIMITS.get(table, {}).get(c, (None, None))
        if kind == "varchar" and isinstance(v, str) and len(v) > n:
            problems.append(f"{c}: {len(v)} characters > VARCHAR({n})")
        if kind == "integer" and isinstance(v, int) and not -2 ** 31 <= v < 2 ** 31:
            problems.append(f"{c}: {v} out of INTEGER")
    return problems


@pytest.fixture(scope="module")
def keys():
    return fc.new_ring("k1")


@pytest.fixture(scope="module")
def corpus():
    return hostile_corpus("hu", START_MS)


def _records(corpus):
    return [KafkaRecord(r.topic, i % 3, i, r.key, r.value, r.timestamp_ms) for i, r in enumerate(corpus)]


def test_the_corpus_is_large_labelled_and_covers_every_topic_and_kind(corpus):
    assert len(corpus) >= 10_000
    assert {r.topic for r in corpus} == {t.name for t in topics.TOPICS}
    for r in corpus:
        if r.expect == VALID:
            assert r.error_class is None and r.doc is not None, r.case
        else:
            assert r.expect == DEAD and r.error_class and (r.doc is not None) == (r.error_class == SINK), r.case
    cases = {r.case.split(":")[0] for r in corpus}
    assert {"json", "utf8", "number", "timestamp", "type", "missing", "null", "text", "size", "random",
            "hypothesis", "key"} <= cases
    kinds = Counter(r.error_class for r in corpus if r.expect == DEAD)
    assert {k.value for k in (ErrorKind.NOT_UTF8, ErrorKind.TOO_LARGE, ErrorKind.NOT_JSON, ErrorKind.NOT_OBJECT,
                              ErrorKind.SCHEMA, ErrorKind.TIMESTAMP)} <= set(kinds)
    for t in topics.TOPICS:
        mine = [r for r in corpus if r.topic == t.name]
        assert any(r.case == "json:deep_root_10000" for r in mine) and any(r.case == "size:10MB" for r in mine)
        assert sum(r.case.startswith("hypothesis:") for r in mine) >= 100, t.name
    # deterministic: the same arguments, the same corpus
    again = hostile_corpus("hu", START_MS)
    assert [(r.case, r.value) for r in again] == [(r.case, r.value) for r in corpus]


def test_validation_gives_every_record_its_labelled_outcome(corpus):
    wrong = []
    for rec, r in zip(_records(corpus), corpus):
        try:
            parse_record(rec)
            got = None
        except EventError as e:
            got = e.kind.value
        want = None if r.expect == VALID or r.error_class == SINK else r.error_class
        if got != want:
            wrong.append((r.topic, r.case, want, got))
    assert not wrong, f"{len(wrong)} records mislabelled or misvalidated, e.g. {wrong[:5]}"


def _expected_rows(corpus, keys_ring):
    """{(topic, offset): the row its pure functions give} for every valid record of a written topic."""
    redactor = Redactor(PiiPolicy.load(), HMAC.encode(), keys_ring)
    prices = PriceTable.load()
    out = {}
    for i, r in enumerate(corpus):
        if r.expect == VALID or r.error_class == SINK:
            if r.topic not in TABLES:
                continue
            event, _ = redactor.event(CONTRACTS[r.topic].model_validate(r.doc))
            scores = (score_turn(event, prices) if r.topic == topics.TURNS
                      else score_lead(event) if r.topic == topics.LEADS else enrich_frontend(event))
            out[i] = TABLES[r.topic][1](Scored(event, scores))
    return out


def _strip(row):
    row = {k: v for k, v in row.items() if k != SOURCE_KEY}
    tm = dict(row.get("transformation_metadata") or {})
    tm.pop("extra_fields", None)  # set by parse_event, not by model_validate
    row["transformation_metadata"] = tm
    if "metadata" in row:
        row["metadata"] = json.dumps(row["metadata"], sort_keys=True, default=str)
    for k in ("email", "full_name", "phone"):  # encrypted: fresh nonces; decrypted equality is checked below
        if isinstance(row.get(k), str) and fc.is_encrypted(row[k]):
            row[k] = "<encrypted>"
    return row


# The checks below find the corpus here, not in a closure: Beam pickles (and bz2-compresses) a step's function
# several times per run, and closures over 12,025 records, some of them 10 MB, made that 300 of the test's 385 s.
# The DirectRunner runs the checks in this process.
_CHECK_DATA: dict = {}


def _check_outputs(got):
    corpus, expected_rows = _CHECK_DATA["corpus"], _CHECK_DATA["expected_rows"]
    wrong = []
    by_kind = Counter((kind, off) for kind, _t, off, _ in got)
    for i, r in enumerate(corpus):
        reaches_sink = r.expect == VALID or r.error_class == SINK
        kind = "row" if r.topic in TABLES else "event"
        n = by_kind[(kind, i)]
        if n != (1 if reaches_sink else 0):
            wrong.append((r.topic, r.case, kind, n))
        if r.topic == topics.TURNS and by_kind[("redis", i)] != (1 if reaches_sink else 0):
            wrong.append((r.topic, r.case, "redis", by_kind[("redis", i)]))
    for kind, topic, off, value in got:
        r = corpus[off]
        if kind == "row":
            table, _f, columns, _k, json_cols = TABLES[topic]
            problems = copy_problems(table, columns, json_cols, value)
            if bool(problems) != (r.error_class == SINK):
                wrong.append((topic, r.case, "copy", problems[:2]))
            if _strip(value) != _strip(expected_rows[off]):
                diff = {k: (v, _strip(expected_rows[off]).get(k)) for k, v in _strip(value).items()
                        if v != _strip(expected_rows[off]).get(k)}
                wrong.append((topic, r.case, "row", str(diff)[:300]))
        elif kind == "redis":
            try:
                _keys, argv = script_args(value, 3600)
                b"".join(str(a).encode("utf-8") for a in argv)
            except Exception as e:  # noqa: BLE001 - reported
                wrong.append((topic, r.case, "redis", repr(e)))
            if value["message"] != expected_rows[off]["response_text"]:
                wrong.append((topic, r.case, "redis message", value["message"][:80]))
    if wrong:
        raise BeamAssertException(f"{len(wrong)} wrong outputs, e.g. {wrong[:8]}")

def _check_dead_letters(got):
    corpus = _CHECK_DATA["corpus"]
    wrong = []
    by_offset = Counter(d.source_offset for d in got)
    for i, r in enumerate(corpus):
        want = 1 if r.expect == DEAD and r.error_class != SINK else 0
        if by_offset[i] != want:
            wrong.append((r.topic, r.case, "dead letters", by_offset[i]))
    for d in got:
        r = corpus[d.source_offset]
        if (d.source_topic, d.error_class) != (r.topic, r.error_class) or not d.error_message or not d.step:
            wrong.append((r.topic, r.case, d.source_topic, d.error_class, d.error_message[:80]))
    if wrong:
        raise BeamAssertException(f"{len(wrong)} wrong dead letters, e.g. {wrong[:8]}")

def _check_envelopes(got):
    corpus = _CHECK_DATA["corpus"]
    wrong = []
    for key, value in got:
        dl = DeadLetter.from_json(value)
        r = corpus[dl.source_offset]
        if len(value) + len(key) + RECORD_OVERHEAD_BYTES > DLQ_MAX_REQUEST_BYTES:
            wrong.append((r.case, len(value)))
        if dl.payload_sha256 != hashlib.sha256(r.value or b"").hexdigest() or dl.payload_bytes != len(r.value or b""):
            wrong.append((r.case, "digest"))
        if not dl.payload_truncated and dl.raw_payload() != (r.value or b""):
            wrong.append((r.case, "payload"))
        if r.case.startswith("size:near_limit") and not dl.payload_truncated:
            wrong.append((r.case, "not stored by reference"))
    if wrong:
        raise BeamAssertException(f"{len(wrong)} wrong envelopes, e.g. {wrong[:8]}")


def test_the_corpus_through_the_pipelines_composites(corpus, keys, monkeypatch, tmp_path):
    """ValidateByTopic -> RedactPii -> ScoreAgentTurns / EnrichFrontendEvents / ScoreLeads -> the row builders
    and the Redis input; dead letters -> RouteDeadLetters (the DLQ writer's envelopes)."""
    monkeypatch.setenv("PII_HMAC_KEY", HMAC)
    fc.write_ring_file(keys, tmp_path / "ring.json")  # the leads' encrypt actions, as a pod gets its ring
    monkeypatch.setenv(fc.KEYS_FILE_ENV, str(tmp_path / "ring.json"))
    monkeypatch.delenv(fc.KEYS_ENV, raising=False)
    records = _records(corpus)
    expected_rows = _expected_rows(corpus, keys)
    policy = PiiPolicy.load()

    p = TestPipeline(options=PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=1"]))
    events, dead = (p | beam.Create(records, reshuffle=False)
                    | "Validate" >> ValidateByTopic({t.name: t.contract for t in topics.TOPICS}))
    dead_letters = [dead]
    outputs = []
    for t in topics.TOPICS:
        name = t.name.replace(".", "_")
        redacted, d = split_dead_letters(events[t.name] | f"Redact_{name}" >> RedactPii(policy, t.name))
        dead_letters.append(d)
        scorer = {"turn": ScoreAgentTurns(), "frontend": EnrichFrontendEvents(), "lead": ScoreLeads()}.get(t.scorer)
        if scorer is None:
            tail = redacted
            if t.name == topics.TOOLS:
                tail = redacted | f"Activity_{name}" >> beam.Map(tool_activity)
            outputs.append(tail | f"Src_{name}" >> beam.Map(lambda e, tn=t.name: ("event", tn, _offset(e), None)))
            continue
        scored, d = split_dead_letters(redacted | f"Score_{name}" >> scorer)
        dead_letters.append(d)
        table, to_row, *_ = TABLES[t.name]
        outputs.append(scored | f"Row_{name}" >> beam.Map(KeepSource(to_row))
                       | f"RowOut_{name}" >> beam.Map(lambda row, tn=t.name: ("row", tn, row[SOURCE_KEY][2], row)))
        if t.name == topics.TURNS:
            outputs.append(scored | "ToSessionState" >> beam.Map(KeepSource(session_state_event))
                           | "StateOut" >> beam.Map(lambda ev: ("redis", topics.TURNS, ev[SOURCE_KEY][2], ev)))
    merged_dead = tuple(dead_letters) | "MergeDead" >> beam.Flatten()
    routed = merged_dead | "Route" >> RouteDeadLetters([t.name for t in topics.TOPICS])
    envelopes = tuple(routed[t.name] for t in topics.TOPICS) | "MergeEnvelopes" >> beam.Flatten()

    _CHECK_DATA.update(corpus=corpus, expected_rows=expected_rows)
    assert_that(tuple(outputs) | "MergeOutputs" >> beam.Flatten(), _check_outputs, label="outputs")
    assert_that(merged_dead, _check_dead_letters, label="dead_letters")
    assert_that(envelopes, _check_envelopes, label="envelopes")
    try:
        p.run().wait_until_finish()
    finally:
        _CHECK_DATA.clear()


def _offset(event):
    return source_of(event)[2] if source_of(event) else event.source[2]  # an event, or a tool's Activity


# --- hypothesis: any text anywhere a string goes ----------------------------------------------------------

_TS = int(time.time() * 1000) - 60_000
_any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80)
_json = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63) | _any_text
                     | st.floats(allow_nan=False, allow_infinity=False),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_any_text, kids, max_size=4),
                     max_leaves=12)


@settings(derandomize=True, database=None, max_examples=150, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(response=_any_text, message=_any_text, extra=_json, ascii_only=st.booleans())
def test_any_text_in_a_turn_is_a_row_copy_accepts_and_a_redis_state(response, message, extra, ascii_only):
    doc = {"session_id": "hyp-s", "turn_id": "hyp-t", "model_name": "gpt-4o", "tokens_in": 1, "tokens_out": 2,
           "latency_ms": 3.0, "response_text": response, "user_message": message, "x_extra": extra,
           "conversation_context": {"ctx": extra}, "timestamp": _TS}
    turn = parse_event(json.dumps(doc, ensure_ascii=ascii_only).encode(), CONTRACTS[topics.TURNS])
    red, _ = Redactor(PiiPolicy.load(), HMAC.encode()).event(turn)
    row = turn_to_row(Scored(red, score_turn(red, PriceTable.load())))
    assert copy_problems("agent_turns", AGENT_TURN_SCORED_COLUMNS, AGENT_TURN_JSON, row) == []
    script_args(session_state_event(Scored(red, {})), 60)


@settings(derandomize=True, database=None, max_examples=100, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_validate_or_dead_letter_never_raise(raw):
    for model in CONTRACTS.values():
        try:
            parse_event(raw, model)
        except EventError as e:
            assert e.kind in ErrorKind and str(e)


# --- the bugs the corpus found ----------------------------------------------------------------------------

def test_postgres_sink_writes_nul_as_the_replacement_character_in_text_and_json():
    assert pg_text("a\x00b") == "a\ufffdb" and pg_text("plain") == "plain"
    text = pg_json({"k\x00": ["\x00", "\\u0000", "\\\x00"]})
    assert "\\u0000" not in text.replace("\\\\u0000", "")
    assert json.loads(text) == {"k\ufffd": ["\ufffd", "\\u0000", "\\\ufffd"]}  # a literal "\u0000" stays text
    row = turn_to_row(parse_event(json.dumps({"session_id": "s\x00", "turn_id": "t", "model_name": "m", "tokens_in": 1,
                                              "tokens_out": 1, "latency_ms": 1.0, "response_text": "\x00",
                                              "note\x00": 1, "timestamp": _TS}).encode(), CONTRACTS[topics.TURNS]))
    assert copy_problems("agent_turns", AGENT_TURN_SCORED_COLUMNS, AGENT_TURN_JSON, row) == []


def test_postgres_json_columns_refuse_nan_before_the_round_trip():
    with pytest.raises(ValueError, match="JSON compliant"):
        pg_json({"x": float("nan")})


@pytest.mark.parametrize("field,value", [("tokens_in", 2 ** 31), ("tokens_out", 10 ** 30), ("latency_ms", "inf"),
                                         ("latency_ms", "nan")])
def test_contracts_refuse_integers_beyond_the_columns_and_non_finite_floats(field, value):
    doc = {"session_id": "s", "turn_id": "t", "model_name": "m", "tokens_in": 1, "tokens_out": 1,
           "latency_ms": 1.0, "timestamp": _TS}
    raw = json.dumps(doc).replace('"latency_ms": 1.0', f'"latency_ms": 1.0, "{field}": __V__')
    literal = {"inf": "Infinity", "nan": "NaN"}.get(value, str(value))
    with pytest.raises(EventError) as e:
        parse_event(raw.replace("__V__", literal).encode(), CONTRACTS[topics.TURNS])
    assert e.value.kind is ErrorKind.SCHEMA


def test_lead_row_clips_company_and_lead_source_to_their_columns():
    lead = CONTRACTS[topics.LEADS].model_validate({"lead_id": 1, "marketo_guid": "g", "timestamp": _TS,
                                                   "company": "c" * 300, "lead_source": "s" * 300,
                                                   "email": "a@" + "d" * 120 + ".com"})
    row = lead_to_row(Scored(lead, score_lead(lead)))
    assert copy_problems("marketo_leads", LEAD_COLUMNS, LEAD_JSON, row) == []


def test_hostile_texts_are_all_used():
    assert {"nul", "emoji", "rtl", "sql", "lua", "long"} <= set(TEXTS)


def test_the_archive_keeps_every_hostile_record_and_never_raises(corpus):
    """The archive pipeline's row builder and Arrow table (io_connectors.parquet_archive) over the whole corpus:
    every record with a value is archived with its exact bytes; only a null value (a tombstone) is refused."""
    from io_connectors.parquet_archive import archive_schema, kafka_record_to_row, rows_to_table

    refused = []
    for rec, r in zip(_records(corpus), corpus):
        schema = archive_schema(r.topic)
        table, bad = rows_to_table([kafka_record_to_row(rec, schema)], schema)
        if bad:
            refused.append(r.case)
        else:
            assert table.column("payload").to_pylist() == [r.value], r.case
    assert set(refused) == {"json:null_value"}


@pytest.mark.parametrize("payload", [b'{"tokens_in": 100000000000000000000000000000}', b'{"turn_id": "\\ud800"}',
                                     b'{"latency_ms": 1' + b"0" * 400 + b"}", b'{"a":' * 10_000 + b"1" + b"}" * 10_000])
def test_archive_columns_that_do_not_fit_are_null_not_an_error(payload):
    from io_connectors.parquet_archive import archive_schema, kafka_record_to_row, rows_to_table

    schema = archive_schema(topics.TURNS)
    table, bad = rows_to_table([kafka_record_to_row(KafkaRecord(topics.TURNS, 0, 1, None, payload, _TS), schema)],
                               schema)
    assert bad == [] and table.column("payload").to_pylist() == [payload]
    assert table.column("turn_id").to_pylist() == [None]


def test_a_billing_row_beyond_the_usage_contract_becomes_a_dead_letter_not_a_failed_job():
    from beam_pipelines.billing import _UsageMessageFn

    row = {"account_id": "a" * 500, "hour_start_ms": 1_796_000_400_000, "turns": 1, "tokens_in": 1, "tokens_out": 1,
           "tool_invocations": 0, "estimated_cost_usd": 0.1, "revision": 1, "is_final": False}
    out, = list(_UsageMessageFn().process(row))
    assert out.tag == "dead_letter" and out.value.step == "ToUsageMessage" and "account_id" in out.value.error_message
    ok, = list(_UsageMessageFn().process({**row, "account_id": "acct-1"}))
    assert ok[0] == b"acct-1|1796000400000"
