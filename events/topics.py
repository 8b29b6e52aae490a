"""The topic registry: every Kafka topic the suite reads or writes, and everything that hangs off it.

One `Topic` entry per topic is the source the rest of the tree derives from:

- `contract`: the pydantic model its events follow (`CONTRACTS` below; validation, PII policy checks and the
  exported JSON Schema in `schemas/` come from it);
- `partitions`, `retention_ms`, `cleanup_policy`: created by the local stack (`all_topics()`, with a `.dlq`
  twin each) and rendered for production by `flink-deploy/gen_topics.py`;
- `scorer`: the name of the scorer in `transforms.scoring.SCORERS` that enriches its events (None: the
  topic is validated and redacted, not scored);
- `archive_columns`: contract fields the Parquet archive parses out of the payload beside the raw record
  (typed from the contract; `io_connectors.parquet_archive.archive_schema`).

The PII policy (`config/pii_policy.json`, a deployment file) must name every topic here; so must the test
data generator (`workloads.generator.WORKLOADS` and the mixed workload's shares).
`tests/unit/test_topic_registry.py` names whatever is missing for a topic. Adding a topic means one entry
here, its contract in `events/contracts.py`, and whatever the test names (the policy entry, a workload, the
regenerated schema and topic files, a table for a pipeline that writes one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple, Type

from events.contracts import (AgentSessionUpdated, AgentToolInvoked, AgentTurnCompleted, BillingUsageMetered,
                              EventModel, FrontendSessionAnalytics, FrontendUserInteraction,
                              FrontendWidgetPerformance, MarketoLeadDelta)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int
    contract: Optional[Type[EventModel]] = None  # None only for the dead-letter twins (the envelope's topics)
    scorer: Optional[str] = None
    archive_columns: Tuple[str, ...] = ()
    cleanup_policy: str = "delete"

    @property
    def dlq(self) -> str:
        return dlq_topic(self.name)


TURNS = "text.agent.turn.completed"
TOOLS = "agent.tool.invoked"
SESSIONS = "text.agent.session.updated"
FRONTEND_INTERACTION = "frontend.user.interaction"
FRONTEND_SESSION = "frontend.session.analytics"
FRONTEND_WIDGET = "frontend.widget.performance"
BILLING = "billing.usage.metered"
LEADS = "marketo.leads.delta"

TOPICS = (
    Topic(TURNS, 6, 30 * DAY_MS, AgentTurnCompleted, scorer="turn",
          archive_columns=("turn_id", "model_name", "tokens_in", "tokens_out", "latency_ms")),
    Topic(TOOLS, 3, 30 * DAY_MS, AgentToolInvoked, archive_columns=("tool_name",)),
    Topic(SESSIONS, 3, 30 * DAY_MS, AgentSessionUpdated),
    Topic(FRONTEND_INTERACTION, 8, 30 * DAY_MS, FrontendUserInteraction, scorer="frontend"),
    Topic(FRONTEND_SESSION, 3, 30 * DAY_MS, FrontendSessionAnalytics, scorer="frontend"),
    Topic(FRONTEND_WIDGET, 3, 30 * DAY_MS, FrontendWidgetPerformance, scorer="frontend"),
    Topic(BILLING, 3, 30 * DAY_MS, BillingUsageMetered),
    Topic(LEADS, 3, 7 * DAY_MS, MarketoLeadDelta, scorer="lead", archive_columns=("lead_id",)),
)
BY_NAME: Dict[str, Topic] = {t.name: t for t in TOPICS}
CONTRACTS: Dict[str, Type[EventModel]] = {t.name: t.contract for t in TOPICS}


def topic(name: str) -> Topic:
    """The registry entry of `name`; a KeyError that lists the known topics otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; the registry (events/topics.py) has {sorted(BY_NAME)}") from None


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def all_topics() -> Iterator[Topic]:
    """Every topic with its dead-letter twin (same retention, 3 partitions)."""
    for t in TOPICS:
        yield t
        yield Topic(t.dlq, 3, t.retention_ms)
