"""The one-command local demo: `python -m beam_pipelines.demo` (the README's `./run demo` wraps it).

Starts the local stack, applies the schema, submits the whole suite (kpi, frontend, billing, archive, leads)
to the local Flink cluster, produces a realistic workload to Kafka (many concurrent sessions crossing hour
boundaries, duplicates, out-of-order and malformed events on every topic), waits until it has landed, and
prints what landed where plus the Flink dashboard URL. The jobs keep running (cancel them in the dashboard,
or `python -m beam_pipelines.demo --stop`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from io_connectors.settings import librdkafka_for

PIPELINES = ("kpi", "frontend", "billing", "archive", "leads")
PREFIX = "iheardai-demo-"


def _flink(path: str, method: str = "GET"):
    from io_connectors import settings

    req = urllib.request.Request(settings.get("FLINK_REST_URL", "http://localhost:8081") + path, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read().decode()
    return json.loads(body) if body else {}


def _demo_jobs(state: str = "RUNNING"):
    return [j for j in _flink("/jobs/overview")["jobs"] if j["name"].startswith(PREFIX) and j["state"] == state]


def stop() -> None:
    for j in _demo_jobs():
        _flink(f"/jobs/{j['jid']}?mode=cancel", "PATCH")
        print(f"cancelled {j['name']} ({j['jid']})")


def _dlq_ends(bootstrap: str) -> dict:
    """Total end offset of every .dlq topic (the demo prints how many dead letters it caused)."""
    from confluent_kafka import Consumer, TopicPartition

    from events.topics import TOPICS

    c = Consumer({**librdkafka_for(bootstrap), "group.id": "iheardai-demo-dlq-count"})
    try:
        out = {}
        for t in TOPICS:
            parts = c.list_topics(t.dlq, timeout=10).topics[t.dlq].partitions
            out[t.dlq] = sum(c.get_watermark_offsets(TopicPartition(t.dlq, p), timeout=10)[1] for p in parts)
        return out
    finally:
        c.close()


def _query(sql: str, args=()):
    import psycopg2

    from io_connectors.settings import PostgresSettings

    try:
        with psycopg2.connect(**PostgresSettings.from_env().connect_kwargs()) as c, c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    except psycopg2.OperationalError:
        return None  # Postgres restarting: the sinks retry, so does the demo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=6000, help="events to produce across all topics")
    ap.add_argument("--stop", action="store_true", help="cancel the demo jobs and exit")
    args = ap.parse_args(argv)

    if subprocess.call([sys.executable, "-m", "devstack", "up"]) != 0:
        return 1
    if args.stop:
        stop()
        return 0
    from sql.migrate import apply

    apply()
    from events import topics
    from io_connectors.settings import KafkaSettings, get
    from workloads.generator import MixedWorkload, TurnWorkload
    from workloads.produce import produce

    stop()  # one demo suite at a time (the sinks are idempotent, so a re-run is harmless anyway)
    run_id = f"demo-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    start = (now // 3_600_000 - 1) * 3_600_000 - 20 * 60_000  # sessions cross an hour boundary
    t0 = time.monotonic()
    # Each pipeline starts the way the README starts it: `python -m beam_pipelines.<name> --runner=FlinkRunner`,
    # here with --no_wait_until_finish (the command returns once its job is RUNNING and healthy, or fails with
    # the job's root cause). One after another: the local expansion service streams its ~200 MB jar to every
    # expansion, and concurrent first expansions fail there (direct buffer memory, and a race in KafkaIO's row
    # schema inference: "Cannot convert between types that don't have equivalent schemas").
    failed = []
    for name in PIPELINES:
        proc = subprocess.run(
            [sys.executable, "-m", f"beam_pipelines.{name}", "--runner=FlinkRunner", "--no_wait_until_finish",
             f"--job_name={PREFIX}{name}", f"--consumer_group={PREFIX}{name}", "--start_from=latest",
             "--parallelism=1", "--health_period_seconds=15", "--archive_late_firing_delay_seconds=10"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = proc.stdout
        if proc.returncode == 0:
            print(f"started {name}: {out.strip().splitlines()[-1] if out.strip() else 'RUNNING'}")
        else:
            failed.append(name)
            print(f"{name} did not start (exit {proc.returncode}):\n{out[-3000:]}", file=sys.stderr)
    if failed:
        return 1
    # --start_from=latest committed the groups' end offsets at submission: everything produced now is read.

    bootstrap = KafkaSettings.from_env().bootstrap_servers
    dlq_before = _dlq_ends(bootstrap)
    turns = TurnWorkload(seed=2026, run_id=run_id, start_ms=start, sessions=150).generate(args.events // 3)
    produce(turns.records, topics.TURNS, bootstrap)
    mixed = MixedWorkload(seed=2027, run_id=run_id, start_ms=start, shares={
        t: s for t, s in MixedWorkload().shares.items() if t != topics.TURNS}).generate(args.events * 2 // 3)
    by_topic = {}
    for topic, rec in mixed.records:
        by_topic.setdefault(topic, []).append(rec)
    for topic, recs in by_topic.items():
        produce(recs, topic, bootstrap)
    print(f"produced {len(turns.records) + len(mixed.records)} events to {1 + len(by_topic)} topics "
          f"({turns.malformed_count} malformed turns, {sum(r.kind == 'duplicate' for r in turns.records)} "
          f"duplicate turns, {len(turns.expected)} distinct turns over {len({k[0] for k in turns.expected})} "
          "sessions)")

    like = f"{run_id}-%"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        got = _query("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (like,))
        if got and got[0][0] >= len(turns.expected):
            break
        time.sleep(2)
    time.sleep(10)  # early rows of the session and hourly totals

    def one(sql, *a):
        rows = _query(sql, a)
        return rows[0][0] if rows else "?"

    print()
    print(f"What landed (run {run_id}, {time.monotonic() - t0:.0f}s after submission):")
    print(f"  Postgres agent_turns:        {one('SELECT count(*) FROM agent_turns WHERE session_id LIKE %s', like)}"
          f" rows (expected {len(turns.expected)} distinct turns; scored, PII redacted)")
    print(f"  Postgres session_kpis:       {one('SELECT count(*) FROM session_kpis WHERE session_id LIKE %s', like)}"
          " sessions (totals of each whole session: updated within seconds, final once inactive)")
    print(f"  Postgres frontend_analytics: "
          f"{one('SELECT count(*) FROM frontend_analytics WHERE session_id LIKE %s', like)} events")
    print(f"  Postgres billing_usage:      {one('SELECT count(*) FROM billing_usage WHERE updated_at > now() - interval %s', '10 minutes')}"
          " account-hours updated")
    print(f"  Postgres marketo_leads:      {one('SELECT count(*) FROM marketo_leads')} leads in the table")
    try:
        from io_connectors.clients import redis_client

        r = redis_client()
        keys = sum(1 for _ in r.scan_iter(f"session:{run_id}-*:state", count=1000))
        print(f"  Redis hot session state:     {keys} sessions (session:<id>:state / :metrics)")
    except Exception as e:  # noqa: BLE001 - the summary is informative only
        print(f"  Redis: {e}")
    try:
        from io_connectors.clients import s3_client
        from io_connectors.settings import SpacesSettings

        ss = SpacesSettings.from_env()
        objs = s3_client(ss).list_objects_v2(Bucket=ss.bucket).get("KeyCount", 0)
        print(f"  Spaces archive:              {objs} Parquet objects in s3://{ss.bucket}/ "
              "(hourly files appear as the watermark passes each hour)")
    except Exception as e:  # noqa: BLE001
        print(f"  Spaces archive: {e}")
    dlq_after = _dlq_ends(bootstrap)
    dead = {t: dlq_after[t] - dlq_before.get(t, 0) for t in dlq_after if dlq_after[t] > dlq_before.get(t, 0)}
    print("  Dead letters (with reasons):  " + (", ".join(f"{t} +{n}" for t, n in sorted(dead.items())) or "none"))
    dashboard = get("FLINK_REST_URL", "http://localhost:8081")
    print(f"Flink dashboard: {dashboard}/#/job/running  ({len(_demo_jobs())} demo jobs running)")
    print("Status page:     http://localhost:8000/status.html  (jobs, lag, dead letters, sink freshness, alerts)")
    print("Prometheus:      http://localhost:9090/alerts  (rules in observability/rules/); "
          "Alertmanager: http://localhost:9094")
    print("The jobs keep running; stop them with: .venv/bin/python -m beam_pipelines.demo --stop")
    got = _query("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (like,))
    return 0 if got and got[0][0] >= len(turns.expected) else 1


if __name__ == "__main__":
    sys.exit(main())
