"""The composites' edges are typed: a wrong input fails when the graph is built, and the keyed steps shuffle
on deterministic key coders (StrUtf8 / VarInt, not FastPrimitivesCoder)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.typehints.decorators import TypeCheckError

from events.records import KafkaRecord
from io_connectors.parquet_archive import ArchiveKafkaRecords
from io_connectors.postgres import WriteToPostgres
from transforms.windows import Activity, HourlyUsagePerAccount, SessionizeActivity

pytestmark = pytest.mark.unit

ACT = Activity("turn", "s/t1", "s", "a", None, "web_chat", 1_795_000_000_000)
REC = KafkaRecord("text.agent.turn.completed", 0, 1, b"k", b"{}", 1_795_000_000_000)


def _pipeline():
    return beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))


@pytest.mark.parametrize("build", [
    lambda p: p | beam.Create([REC]) | SessionizeActivity(),
    lambda p: p | beam.Create([REC]) | HourlyUsagePerAccount(),
    lambda p: p | beam.Create([ACT]) | ArchiveKafkaRecords("text.agent.turn.completed", prefix="t/"),
    lambda p: p | beam.Create([1, 2]) | WriteToPostgres("agent_turns", ("k",), ("k", "v")),
], ids=["records-into-sessions", "records-into-billing", "activity-into-archive", "ints-into-postgres"])
def test_a_wrong_input_fails_when_the_graph_is_built(build):
    with pytest.raises(TypeCheckError):
        build(_pipeline())


def _key_coders(p):
    comps = p.to_runner_api().components
    out = {}
    for t in comps.transforms.values():
        if t.unique_name.endswith("/Key") or t.unique_name.endswith("/KeyByShard"):
            kv = comps.coders[comps.pcollections[list(t.outputs.values())[0]].coder_id]
            out[t.unique_name] = comps.coders[kv.component_coder_ids[0]].spec.urn
    return out


def test_keyed_state_and_archive_shuffles_use_deterministic_key_coders():
    p = _pipeline()
    acts = p | "Acts" >> beam.Create([ACT])
    _ = acts | "S" >> SessionizeActivity()
    _ = acts | "H" >> HourlyUsagePerAccount()
    _ = p | "Recs" >> beam.Create([REC]) | "A" >> ArchiveKafkaRecords("text.agent.turn.completed", prefix="t/")
    assert _key_coders(p) == {"S/SessionTotals/Key": "beam:coder:string_utf8:v1",
                              "H/HourTotals/Key": "beam:coder:string_utf8:v1",
                              "A/WriteHourlyParquet/KeyByShard": "beam:coder:varint:v1"}
