"""The one-command local demo: `python -m beam_pipelines.demo` (the README's `./run demo` wraps it).

Starts the local stack, applies the schema, produces a realistic workload of agent turns (duplicates,
out-of-order events, malformed records) to Kafka, runs the KPI pipeline on the local Flink cluster, waits
until what it wrote is visible, and prints a summary with the Flink dashboard URL. The job keeps running
(Flink dashboard: cancel it there, or `python -m beam_pipelines.demo --stop`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
import uuid

DEMO_JOB = "iheardai-demo-kpi"


def _flink(path: str, method: str = "GET"):
    from io_connectors import settings

    req = urllib.request.Request(settings.get("FLINK_REST_URL", "http://localhost:8081") + path, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read().decode()
    return json.loads(body) if body else {}


def _running_demo_jobs():
    return [j for j in _flink("/jobs/overview")["jobs"] if j["name"] == DEMO_JOB and j["state"] == "RUNNING"]


def stop() -> None:
    for j in _running_demo_jobs():
        _flink(f"/jobs/{j['jid']}?mode=cancel", "PATCH")
        print(f"cancelled {DEMO_JOB} ({j['jid']})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=2000, help="valid turns to produce")
    ap.add_argument("--stop", action="store_true", help="cancel the demo job and exit")
    args = ap.parse_args(argv)

    if subprocess.call([sys.executable, "-m", "devstack", "up"]) != 0:
        return 1
    if args.stop:
        stop()
        return 0
    from sql.migrate import apply

    apply()
    import psycopg2

    from beam_pipelines import kpi
    from io_connectors import topics
    from io_connectors.settings import KafkaSettings, PostgresSettings, get
    from transforms.generator import TurnWorkload, produce

    stop()  # one demo job at a time (the sinks are idempotent, so a re-run is harmless anyway)
    run_id = f"demo-{uuid.uuid4().hex[:6]}"
    now = int(time.time() * 1000)
    work = TurnWorkload(seed=2026, run_id=run_id, start_ms=now - 2 * 3_600_000, sessions=120).generate(args.turns)
    produce(work.records, topics.TURNS, KafkaSettings.from_env().bootstrap_servers)
    print(f"produced {len(work.records)} records to {topics.TURNS}: {len(work.expected)} distinct turns, "
          f"{sum(r.kind == 'duplicate' for r in work.records)} duplicates, {work.malformed_count} malformed")

    t0 = time.monotonic()
    kpi.run([f"--job_name={DEMO_JOB}", "--consumer_group=iheardai-demo-kpi"], wait=False)
    pg = PostgresSettings.from_env().connect_kwargs()

    def landed() -> int:
        try:
            with psycopg2.connect(**pg) as c, c.cursor() as cur:
                cur.execute("SELECT count(*) FROM agent_turns WHERE session_id LIKE %s", (f"{run_id}-%",))
                return cur.fetchone()[0]
        except psycopg2.OperationalError:
            return 0  # Postgres restarting: the sink retries, so do we

    deadline = time.monotonic() + 300
    count = 0
    while time.monotonic() < deadline:
        count = landed()
        if count >= len(work.expected):
            break
        time.sleep(1)
    conn = psycopg2.connect(**pg)
    with conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT session_id), sum(total_tokens), round(avg(latency_ms)::numeric, 1), "
                    "min(\"timestamp\"), max(\"timestamp\") FROM agent_turns WHERE session_id LIKE %s",
                    (f"{run_id}-%",))
        sessions, tokens, latency, first, last = cur.fetchone()
        cur.execute("SELECT model, count(*) FROM agent_turns WHERE session_id LIKE %s GROUP BY model ORDER BY 2 DESC",
                    (f"{run_id}-%",))
        by_model = cur.fetchall()
    conn.close()

    dashboard = get("FLINK_REST_URL", "http://localhost:8081")
    jobs = _running_demo_jobs()
    print()
    print(f"KPI pipeline on Flink: {len(work.expected)} turns expected, {count} rows in agent_turns "
          f"after {time.monotonic() - t0:.0f}s (run {run_id})")
    print(f"  sessions: {sessions}, tokens: {tokens}, avg latency: {latency} ms, event time {first} .. {last}")
    print("  by model: " + ", ".join(f"{m}={n}" for m, n in by_model))
    print(f"  {work.malformed_count} malformed records -> {topics.dlq_topic(topics.TURNS)} (with reasons)")
    print(f"Flink dashboard: {dashboard}/#/job/running" + (f"  (job {jobs[0]['jid']})" if jobs else ""))
    print("The job keeps running; stop it with: python -m beam_pipelines.demo --stop")
    return 0 if count >= len(work.expected) else 1


if __name__ == "__main__":
    sys.exit(main())
