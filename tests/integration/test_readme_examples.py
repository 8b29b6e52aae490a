"""The README's producer examples run as written: the seed's `on_turn_completed` (with `process_turn`) against the
local stack's Kafka, and the tracker snippet names only functions the tracker exports."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from events import topics
from tests.producer_helpers import end_offsets, read_to_end

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = README.read_text().split("## Producers:", 1)[1].split("\n## ", 1)[0]


class _Agent:
    async def process(self, message):
        return ({"text": f"You said: {message}", "tokens_in": 12, "tokens_out": 7},
                [{"name": "crm_lookup", "success": True}])


def test_the_seed_on_turn_completed_example_works_as_written(kafka_settings, run_id, tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", SECTION, re.S).group(1)
    monkeypatch.setenv("IHEARDAI_ANALYTICS_SPILL_DIR", str(tmp_path))
    start = end_offsets(topics.TURNS, kafka_settings.bootstrap_servers)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own example
    server = ns["TextAgentServer"](_Agent())
    asyncio.run(server.process_turn(f"{run_id}-chat", "How much is the team plan?"))
    assert server.analytics.flush(30) == 0
    server.analytics.close()
    got = [v for _, _, k, v in read_to_end(topics.TURNS, kafka_settings.bootstrap_servers, start)
           if v["session_id"] == f"{run_id}-chat"]
    assert len(got) == 1
    turn = got[0]
    assert turn["model_name"] == "claude-3-sonnet" and turn["tokens_in"] == 12 and turn["tools_used"] == ["crm_lookup"]
    assert turn["tool_results"] == {"crm_lookup": {"success": True}} and turn["latency_ms"] >= 0
    assert abs(turn["timestamp"] - time.time() * 1000) < 60_000


def test_the_tracker_snippet_uses_what_the_tracker_exports():
    snippet = re.search(r'```html\n(.*?)```', SECTION, re.S).group(1)
    imported = re.search(r"import \{([^}]*)\}", snippet).group(1)
    js = (Path(__file__).resolve().parents[2] / "iheardai_analytics/static/tracker.js").read_text()
    for name in (n.strip() for n in imported.split(",")):
        assert re.search(rf"export (async )?function {name}\b", js), name
