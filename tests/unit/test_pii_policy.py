"""The PII policy fails closed: a topic a pipeline redacts without a policy entry is a build-time error, and an
unpoliced event that reaches a worker anyway is a dead letter, never written unredacted."""

from __future__ import annotations

import json
import typing

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import frontend, kpi, leads
from events import topics
from events.contracts import AgentToolInvoked, AgentTurnCompleted
from events.topics import CONTRACTS
from transforms.field_crypto import new_ring
from transforms.pii import DEFAULT_POLICY_FILE, MissingPiiPolicy, PiiPolicy, RedactPii, Redactor
from events.dead_letters import split_dead_letters

pytestmark = pytest.mark.unit
TS = 1_795_000_000_000
KEY = "unit-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PII_HMAC_KEY", KEY)
    monkeypatch.setenv("IHEARDAI_FIELD_KEYS", new_ring("k1").to_json())  # the leads policy encrypts fields


@pytest.fixture
def policy_without_tools(tmp_path):
    doc = json.loads(DEFAULT_POLICY_FILE.read_text())
    del doc["topics"][topics.TOOLS]
    path = tmp_path / "pii_policy.json"
    path.write_text(json.dumps(doc))
    return path


def _tool(**over):
    t = {"invocation_id": "i1", "session_id": "s1", "tool_name": "crm_lookup", "success": True,
         "latency_ms": 3.0, "timestamp": TS, "arguments": {"email": "bob@x.io"}}
    t.update(over)
    return AgentToolInvoked.model_validate(t).with_source(topics.TOOLS, 2, 41)


def test_the_project_policy_covers_every_topic_and_every_redacting_pipeline():
    policy = PiiPolicy.load()
    for topic in CONTRACTS:
        policy.require(topic)
    for module in (kpi, frontend, leads):
        for topic in module.TOPICS:
            RedactPii(None, topic)  # what the pipeline builds


def test_a_topic_without_an_entry_fails_when_the_pipeline_is_built(policy_without_tools):
    with pytest.raises(ValueError) as e:
        RedactPii(str(policy_without_tools), topics.TOOLS)
    message = str(e.value)
    assert topics.TOOLS in message and "AgentToolInvoked" in message and str(policy_without_tools) in message
    RedactPii(str(policy_without_tools), topics.TURNS)  # covered topics still build
    with pytest.raises(ValueError, match=topics.TOOLS):
        RedactPii(str(policy_without_tools), [topics.TURNS, topics.TOOLS])
    with pytest.raises(ValueError, match="AgentToolInvoked"):
        RedactPii(str(policy_without_tools), AgentToolInvoked)


def test_the_kpi_graph_refuses_to_build_with_such_a_policy(policy_without_tools, monkeypatch):
    # kpi.build as written: the read is replaced by empty typed inputs, the sinks are never reached
    def fake_read(p, opts, topic_names):
        events = {t: p | f"Empty[{t}]" >> beam.Create([]) for t in topic_names}
        return events, p | "NoDeadLetters" >> beam.Create([])

    monkeypatch.setattr(kpi, "read_and_validate", fake_read)
    opts = PipelineOptions(["--runner=DirectRunner", f"--pii_policy_file={policy_without_tools}"])
    with pytest.raises(ValueError, match=r"agent\.tool\.invoked.*AgentToolInvoked"):
        kpi.build(beam.Pipeline(options=opts), opts)


def test_without_topic_the_element_type_must_name_the_model(policy_without_tools):
    with pytest.raises(ValueError, match="AgentToolInvoked"):
        with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            p | beam.Create([_tool()]) | RedactPii(str(policy_without_tools))
    with pytest.raises(ValueError, match="topic="):
        with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
            untyped = p | beam.Create([_tool()]) | beam.Map(lambda e: e).with_output_types(typing.Any)
            untyped | RedactPii(str(policy_without_tools))


def test_an_unpoliced_event_on_a_worker_is_a_dead_letter(policy_without_tools):
    policy = PiiPolicy.load(policy_without_tools)
    with pytest.raises(MissingPiiPolicy, match="AgentToolInvoked"):
        Redactor(policy, KEY.encode()).event(_tool())
    turn = AgentTurnCompleted.model_validate({"session_id": "s1", "turn_id": "t1", "model_name": "m",
                                              "tokens_in": 1, "tokens_out": 1, "latency_ms": 1.0, "timestamp": TS,
                                              "response_text": "mail bob@x.io"})
    with TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        # built for turns (which are covered); a tool invocation slips in
        mixed = p | beam.Create([turn, _tool()]) | beam.Map(lambda e: e)
        out, dead = split_dead_letters(mixed | "Redact" >> RedactPii(policy, topics.TURNS))
        assert_that(out | beam.Map(lambda e: (type(e).__name__, getattr(e, "response_text", None))),
                    equal_to([("AgentTurnCompleted", "mail <EMAIL>")]), label="redacted")
        assert_that(dead | beam.Map(lambda d: (d.source_topic, d.source_partition, d.source_offset, d.step,
                                               d.error_class)),
                    equal_to([(topics.TOOLS, 2, 41, "Redact", "no_pii_policy")]), label="dead")
