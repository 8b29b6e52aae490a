"""The Kafka topic table from the seeds' architecture design, in one place.

Used by the local stack (creates the topics), the Kubernetes topic config in flink-deploy/, the pipelines
(topic names) and the tests. Every input topic has a `<topic>.dlq` twin for dead letters.
"""

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int
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
    Topic(TURNS, 6, 30 * DAY_MS),
    Topic(TOOLS, 3, 30 * DAY_MS),
    Topic(SESSIONS, 3, 30 * DAY_MS),
    Topic(FRONTEND_INTERACTION, 8, 30 * DAY_MS),
    Topic(FRONTEND_SESSION, 3, 30 * DAY_MS),
    Topic(FRONTEND_WIDGET, 3, 30 * DAY_MS),
    Topic(BILLING, 3, 30 * DAY_MS),
    Topic(LEADS, 3, 7 * DAY_MS),
)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def all_topics():
    """Every topic with its dead-letter twin (same retention, 3 partitions)."""
    for t in TOPICS:
        yield t
        yield Topic(t.dlq, 3, t.retention_ms)
