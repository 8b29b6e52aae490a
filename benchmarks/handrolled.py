"""The user's alternative to the KPI and frontend pipelines: one process, one confluent-kafka consumer (the
seeds' design), doing the same work with the project's own pure functions and sinks.
`benchmarks/bench_pipelines.py` runs it side by side with the Beam pipeline on the same records.

    .venv/bin/python benchmarks/handrolled.py --group G [--pipeline kpi|frontend] [--idle-exit-seconds 10]

kpi, per poll of up to `--batch` records: validate (parse_record), redact (Redactor), score (score_turn);
upsert `agent_turns` (COPY + merge, newer ts_ms wins), write the Redis session state (the Lua guard script,
one pipeline), fold the batch into per-session totals (distinct turns and tool calls, in memory) and upsert
the touched sessions' `session_kpis` rows with the pipeline's own merge. frontend: validate, redact, enrich
(enrich_frontend), upsert `frontend_analytics`, fold into per-session engagement and upsert the touched
`frontend_session_engagement` rows. Dead letters go to `<topic>.dlq`; then the offsets are committed
(at-least-once; the sinks are idempotent, so a replay after a crash converges). Written as well as we could:
batching everywhere, one round trip per sink per batch. What it does not do (and the pipelines do): survive
a crash without re-counting session totals (they live in memory), final rows after the session gap,
late-data dead letters, parallelism beyond one core.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from events import topics  # noqa: E402
from events.dead_letters import DeadLetter  # noqa: E402
from events.records import KafkaRecord  # noqa: E402
from io_connectors.postgres import PostgresUpserter  # noqa: E402
from io_connectors.redis_state import SessionStateWriter  # noqa: E402
from io_connectors.settings import KafkaSettings  # noqa: E402
from transforms.keyed_totals import _id_digest, row_version  # noqa: E402
from transforms.pii import PiiPolicy, Redactor, load_hmac_key  # noqa: E402
from transforms.scoring import PriceTable, Scored, score_turn  # noqa: E402
from transforms.turns import (AGENT_TURN_JSON, AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS,  # noqa: E402
                              session_state_event, turn_to_row)
from transforms.validation import EventError, parse_record  # noqa: E402
from transforms.windows import (SESSION_KPI_COLUMNS, SESSION_KPI_MERGE, SessionUsage, scored_turn_activity,  # noqa: E402
                                tool_activity)

TOPICS = (topics.TURNS, topics.TOOLS, topics.SESSIONS)


class HandRolledKpi:
    TOPICS = TOPICS

    def __init__(self, group: str, batch: int = 2000):
        from confluent_kafka import Consumer, Producer

        kafka = KafkaSettings.from_env().librdkafka_config()
        self.consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest", "fetch.min.bytes": 1})
        self.dlq = Producer({**kafka, "enable.idempotence": True, "acks": "all", "linger.ms": 20})
        self.batch = batch
        self.redactor = Redactor(PiiPolicy.load(), load_hmac_key())
        self.prices = PriceTable.load()
        self.turns = PostgresUpserter("agent_turns", AGENT_TURN_KEYS, AGENT_TURN_SCORED_COLUMNS,
                                      version_column="ts_ms", json_columns=AGENT_TURN_JSON)
        self.sessions = PostgresUpserter("session_kpis", ("session_id",), SESSION_KPI_COLUMNS,
                                         version_column="pane_version", merge_sql=SESSION_KPI_MERGE)
        self.state = SessionStateWriter(pipeline_events=500)
        self.agg = SessionUsage(1800, 3600)
        self.totals: Dict[str, object] = {}  # session_id -> Usage
        self.items: Dict[str, int] = {}
        self.seen: set = set()  # (session, item digest): each turn / tool call counted once
        self.records = self.written = self.dead = 0

    def _dead(self, rec: KafkaRecord, e: BaseException, step: str) -> None:
        letter = DeadLetter.of(rec.value or b"", step=step, error_class=getattr(getattr(e, "kind", None), "value",
                                                                                  type(e).__name__),
                               error_message=str(e), topic=rec.topic, partition=rec.partition, offset=rec.offset,
                               event_time_ms=rec.timestamp_ms)
        self.dlq.produce(topics.dlq_topic(rec.topic), key=letter.kafka_key(), value=letter.to_json())
        self.dead += 1

    def _events(self, msgs):
        """(record, validated and redacted event) per message; bad ones go to their DLQ."""
        for m in msgs:
            if m.error():
                continue
            rec = KafkaRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1])
            self.records += 1
            try:
                event, _ = self.redactor.event(parse_record(rec))
            except EventError as e:
                self._dead(rec, e, "Validate")
                continue
            yield rec, event

    def _count(self, session_id: str, item, touched: set) -> None:
        """Fold a distinct item into its session's totals (a duplicate counts once)."""
        key = (session_id, _id_digest(self.agg.item_id(item)))
        if key in self.seen:
            return
        self.seen.add(key)
        totals = self.totals.get(session_id)
        if totals is None:
            totals = self.totals[session_id] = self.agg.empty()
        self.agg.add(totals, item)
        self.items[session_id] = self.items.get(session_id, 0) + 1
        touched.add(session_id)

    def process(self, msgs) -> None:
        rows: List[dict] = []
        states: List[dict] = []
        touched = set()
        for rec, event in self._events(msgs):
            if rec.topic == topics.TURNS:
                scored = Scored(event, score_turn(event, self.prices))
                rows.append(turn_to_row(scored))
                states.append(session_state_event(scored))
                activity = scored_turn_activity(scored)
            elif rec.topic == topics.TOOLS:
                activity = tool_activity(event)
            else:
                continue  # session updates: validated and redacted only, as in the pipeline
            self._count(activity.session_id, activity, touched)
        for row, reason in self.turns.write(rows):
            self.dead += 1  # refused rows: counted (the pipeline dead-letters them; none in the benchmark)
        self.state.write(states)
        self.sessions.write([self.agg.row(s, self.totals[s], False,
                                          row_version(self.totals[s].last_ms, self.items[s], False))
                             for s in touched])
        self.written += len(rows)
        self.dlq.poll(0)

    def run(self, idle_exit_s: float) -> None:
        self.consumer.subscribe(list(self.TOPICS))
        idle_since = time.monotonic()
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        while not stopping:
            msgs = self.consumer.consume(self.batch, timeout=0.2)
            if not msgs:
                if idle_exit_s and time.monotonic() - idle_since > idle_exit_s:
                    break
                continue
            idle_since = time.monotonic()
            self.process(msgs)
            self.dlq.flush(30)
            self.consumer.commit(asynchronous=False)
        self.consumer.close()
        self.dlq.flush(30)
        print(f"handrolled: {self.records} records, {self.written} turn rows, {self.dead} dead letters", flush=True)


class HandRolledFrontend(HandRolledKpi):
    TOPICS = (topics.FRONTEND_INTERACTION, topics.FRONTEND_SESSION, topics.FRONTEND_WIDGET)  # the pipeline's

    def __init__(self, group: str, batch: int = 2000):
        super().__init__(group, batch)
        from transforms.engagement import (ENGAGEMENT_COLUMNS, ENGAGEMENT_KEYS, ENGAGEMENT_MERGE,
                                           SessionEngagementAggregate)
        from transforms.rows import FRONTEND_COLUMNS, FRONTEND_JSON, FRONTEND_KEYS

        self.rows = PostgresUpserter("frontend_analytics", FRONTEND_KEYS, FRONTEND_COLUMNS, version_column="ts_ms",
                                     json_columns=FRONTEND_JSON)
        self.sessions = PostgresUpserter("frontend_session_engagement", ENGAGEMENT_KEYS, ENGAGEMENT_COLUMNS,
                                         version_column="pane_version", merge_sql=ENGAGEMENT_MERGE)
        self.agg = SessionEngagementAggregate(1800, 3600)

    def process(self, msgs) -> None:
        from transforms.engagement import engagement_event
        from transforms.rows import frontend_to_row
        from transforms.scoring import enrich_frontend

        rows: List[dict] = []
        touched = set()
        for _rec, event in self._events(msgs):
            scored = Scored(event, enrich_frontend(event))
            rows.append(frontend_to_row(scored))
            item = engagement_event(scored)
            self._count(self.agg.key(item), item, touched)
        self.dead += len(self.rows.write(rows))
        self.sessions.write([self.agg.row(s, self.totals[s], False,
                                          row_version(self.agg.last_ms(self.totals[s]), self.items[s], False))
                             for s in touched])
        self.written += len(rows)
        self.dlq.poll(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", required=True, help="consumer group (offsets committed after each batch)")
    ap.add_argument("--pipeline", choices=("kpi", "frontend"), default="kpi", help="the pipeline it stands in for")
    ap.add_argument("--batch", type=int, default=2000, help="records per poll")
    ap.add_argument("--idle-exit-seconds", type=float, default=0, help="exit after this long without records")
    args = ap.parse_args()
    cls = HandRolledFrontend if args.pipeline == "frontend" else HandRolledKpi
    cls(args.group, args.batch).run(args.idle_exit_seconds)


if __name__ == "__main__":
    main()
