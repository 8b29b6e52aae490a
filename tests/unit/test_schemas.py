"""The exported JSON Schemas in schemas/ match the models (re-export: python -m transforms.export_schemas)."""

from __future__ import annotations

import json

import pytest

from events.topics import CONTRACTS
from transforms.export_schemas import SCHEMA_DIR, render_schemas, stale_files, write_schemas

pytestmark = pytest.mark.unit


def test_exported_schemas_are_up_to_date():
    assert stale_files() == [], "run: python -m transforms.export_schemas"


def test_a_model_change_makes_the_export_stale(tmp_path):
    write_schemas(tmp_path)
    assert stale_files(tmp_path) == []
    name = "billing.usage.metered.schema.json"
    doc = json.loads((tmp_path / name).read_text())
    doc["required"].append("new_field")
    (tmp_path / name).write_text(json.dumps(doc))
    (tmp_path / "gone.topic.schema.json").write_text("{}")
    assert stale_files(tmp_path) == [name, "gone.topic.schema.json"]


def test_one_schema_per_topic_with_required_fields_and_extra_allowed():
    rendered = render_schemas()
    assert sorted(rendered) == sorted(f"{t}.schema.json" for t in CONTRACTS)
    turn = json.loads((SCHEMA_DIR / "text.agent.turn.completed.schema.json").read_text())
    assert {"session_id", "turn_id", "model_name", "tokens_in", "tokens_out", "latency_ms",
            "timestamp"} <= set(turn["required"])
    assert turn["additionalProperties"] is True and turn["x-schema-version"] == 1
