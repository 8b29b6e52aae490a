"""The topic registry (events/topics.py) is the one place a topic is declared: everything that must exist for
a topic is checked here, and a failure names the topic and what it lacks. Also: imports run one way
(beam_pipelines -> transforms / io_connectors -> events)."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import List

import pytest

from events import topics
from events.contracts import EventModel
from io_connectors.parquet_archive import topic_fields
from transforms.export_schemas import SCHEMA_DIR, render_schemas
from transforms.pii import PiiPolicy
from transforms.scoring import SCORERS
from workloads import generator

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def _gen_topics():
    spec = importlib.util.spec_from_file_location("gen_topics", REPO / "flink-deploy" / "gen_topics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_for(t: topics.Topic, policy: PiiPolicy, schemas: dict, topics_yaml: str) -> List[str]:
    """What the tree lacks for registry entry `t` (empty when the topic is complete)."""
    out = []
    if not (isinstance(t.contract, type) and issubclass(t.contract, EventModel)):
        out.append("a contract (an EventModel subclass in events/contracts.py)")
    if t.partitions < 1 or t.retention_ms <= 0:
        out.append("partitions >= 1 and a positive retention")
    if t.contract is None or t.contract.__name__ not in policy.fields:
        out.append("a PII policy entry in config/pii_policy.json")
    if t.scorer is not None and t.scorer not in SCORERS:
        out.append(f"scorer {t.scorer!r} in transforms.scoring.SCORERS")
    try:
        topic_fields(t)
    except ValueError as e:
        out.append(f"valid archive columns ({e})")
    if t.name not in generator.SHARES:
        out.append("a share in workloads.generator.SHARES")
    if t.name not in generator.WORKLOADS and t.name != generator.TurnWorkload.topic:
        out.append("a workload in workloads.generator.WORKLOADS")
    name = f"{t.name}.schema.json"
    if name not in schemas or not (SCHEMA_DIR / name).exists() \
            or json.loads((SCHEMA_DIR / name).read_text()) != json.loads(schemas[name]):
        out.append("an up-to-date schemas/ export (python -m transforms.export_schemas)")
    if f"topicName: {t.name}\n" not in topics_yaml or f"topicName: {t.dlq}\n" not in topics_yaml:
        out.append("flink-deploy/kafka-topics.yaml entries for it and its DLQ (python flink-deploy/gen_topics.py)")
    return out


def _context():
    schemas = {}
    try:
        schemas = render_schemas()
    except Exception:  # noqa: BLE001 - a contract that cannot render is reported per topic below
        pass
    return PiiPolicy.load(), schemas, (REPO / "flink-deploy" / "kafka-topics.yaml").read_text()


@pytest.mark.parametrize("entry", topics.TOPICS, ids=lambda t: t.name)
def test_every_registry_topic_has_everything_it_needs(entry):
    assert missing_for(entry, *_context()) == [], f"{entry.name} lacks these"


def test_a_new_topic_without_its_parts_is_named_with_each_missing_part():
    policy, schemas, yaml = _context()
    new = topics.Topic("example.new.topic", 3, topics.DAY_MS, contract=None, scorer="deal",
                       archive_columns=("amount",))
    missing = missing_for(new, policy, schemas, yaml)
    assert [m.split(" (")[0].split(" in ")[0] for m in missing] == [
        "a contract", "a PII policy entry", "scorer 'deal'", "valid archive columns", "a share",
        "a workload", "an up-to-date schemas/ export", "flink-deploy/kafka-topics.yaml entries for it and its DLQ"]


def test_derived_tables_follow_the_registry():
    assert list(topics.CONTRACTS) == [t.name for t in topics.TOPICS]
    assert set(generator.SHARES) == set(topics.BY_NAME)
    assert _gen_topics().render() == (REPO / "flink-deploy" / "kafka-topics.yaml").read_text()
    with pytest.raises(KeyError, match="unknown topic 'nope'.*text.agent.turn.completed"):
        topics.topic("nope")


# --- one-way imports ------------------------------------------------------------------------------------

# workloads -> io_connectors: produce() connects the way every client does (io_connectors.settings: SASL_SSL)
# workloads -> transforms: workloads/expected.py computes the rows a test or the fault matrix expects with the
# project's own transforms (redaction, scoring), as the pipelines do
LAYERS = {"events": set(), "transforms": {"events"}, "io_connectors": {"events"},
          "workloads": {"events", "io_connectors", "transforms"},
          "beam_pipelines": {"events", "transforms", "io_connectors", "workloads"}}  # workloads: the demo


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_imports_run_one_way():
    wrong = []
    for package, allowed in LAYERS.items():
        for path in sorted((REPO / package).glob("*.py")):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in LAYERS and top != package and top not in allowed:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []
