"""How the suite names its Beam metrics, so that operators see them per step.

Beam's Flink runner reports a user metric to Flink as `<namespace>.<name>` in the metric group of the fused
stage, without the step: two steps of one stage with the same namespace and name would overwrite each other
(`FlinkMetricContainer.getFlinkMetricNameString`). Every DoFn here therefore uses its step as namespace,
`iheardai:<step>:`, which Flink's Prometheus reporter keeps as
`flink_taskmanager_job_task_operator_iheardai:<step>:_<name>` (':' is valid in a Prometheus metric name), and
the Prometheus scrape config turns that into `iheardai_step_<name>{step="<step>", job_name=...}`.
"""

from __future__ import annotations

import re

PREFIX = "iheardai:"


def step_namespace(step: str) -> str:
    """`Validate[text.agent.turn.completed]` -> `iheardai:Validate_text_agent_turn_completed_:`."""
    return f"{PREFIX}{re.sub(r'[^A-Za-z0-9_]', '_', step)}:"
