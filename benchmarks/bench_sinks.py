"""Sink benchmark on the local stack (`python -m devstack up` first):

    .venv/bin/python benchmarks/bench_sinks.py [--pg-batches 60] [--redis-seconds 5] [--redis-rate 5000]
                                               [--parquet-rows 200000]

- Postgres: 500-row upsert batches of realistic `agent_turns` rows (15 columns, 2 JSONB) through
  PostgresUpserter, for both methods (COPY into a temp table + merge, and execute_values): rows/s and
  per-batch latency p50/p95/max. Targets: >= 20,000 rows/s, p95 < 50 ms.
- Redis: one process writes session events through SessionStateWriter (500-event pipelines, Lua guard)
  while this one reads `HGETALL session:<id>:state` in a loop: events/s and read latency p50/p95/p99,
  once flat out (max write throughput) and once paced at --redis-rate, plus Redis' own per-call server
  time; a control run reads with no writes while a CPU-bound process runs (the scheduling share of the
  read tail). Target: HGETALL p95 < 1 ms.
- Parquet: the archive DoFn's own code path (rows -> Arrow -> zstd Parquet -> S3 upload) on raw Kafka records
  of ~600 B: rows/s, input MB/s (payload bytes) and output MB/s (file bytes).

All data goes under a `bench-<random>` prefix and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from io_connectors.postgres import PostgresUpserter  # noqa: E402
from io_connectors.redis_state import SessionStateWriter, connect  # noqa: E402
from transforms.turns import AGENT_TURN_COLUMNS, AGENT_TURN_JSON, AGENT_TURN_KEYS  # noqa: E402

T0 = 1767258000000


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def turn_row(run, i):
    ts = T0 + i
    return dict(session_id=f"{run}-s{i // 8}", turn_id=f"t{i}", user_id=f"user-{i % 997}", account_id="acct-1",
                channel="web_chat", model="gpt-4o-mini", tokens_in=120 + i % 50, tokens_out=300 + i % 70,
                total_tokens=420, latency_ms=812.5, response_text="Sure, here is how to reset the widget. " * 4,
                tools_used=["kb_search"], ts_ms=ts, timestamp=datetime.fromtimestamp(ts / 1000, tz=timezone.utc),
                transformation_metadata={"schema_version": 1})


def bench_postgres(batches: int, batch_size: int = 500) -> dict:
    import psycopg2

    run = f"bench-{uuid.uuid4().hex[:8]}"
    results = {}
    try:
        for method in ("copy", "values"):
            w = PostgresUpserter("agent_turns", AGENT_TURN_KEYS, AGENT_TURN_COLUMNS, "ts_ms", AGENT_TURN_JSON,
                                 method=method)
            w.connect()
            base = 0 if method == "copy" else 10 ** 7
            data = [[turn_row(run, base + b * batch_size + i) for i in range(batch_size)] for b in range(batches)]
            w.write(data[0])  # warm-up (first statement plans, temp table)
            lat = []
            t0 = time.perf_counter()
            for rows in data[1:]:
                t = time.perf_counter()
                assert w.write(rows) == []
                lat.append((time.perf_counter() - t) * 1000)
            elapsed = time.perf_counter() - t0
            w.close()
            results[method] = dict(rows_per_s=round(batch_size * len(lat) / elapsed),
                                   p50_ms=round(pct(lat, 50), 1), p95_ms=round(pct(lat, 95), 1),
                                   max_ms=round(max(lat), 1))
    finally:
        from io_connectors.settings import PostgresSettings
        conn = psycopg2.connect(**PostgresSettings.from_env().connect_kwargs())
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM agent_turns WHERE session_id LIKE %s", (run + "-%",))
        conn.close()
    return results


def _redis_writer(run: str, seconds: float, rate: float, pipeline_events: int, out) -> None:
    """Write 500-event batches for `seconds`, flat out (rate 0) or paced to `rate` events/s."""
    w = SessionStateWriter(ttl_seconds=600, pipeline_events=pipeline_events)
    w.connect()
    n, seq, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if rate and n / rate > time.perf_counter() - t0:
            time.sleep(min(0.01, n / rate - (time.perf_counter() - t0)))
            continue
        seq += 1
        batch = [{"session_id": f"{run}-{s}", "turn_id": f"t{seq}", "seq": seq, "event_time_ms": T0 + seq,
                  "message": "Thanks! Your order [ORDER_ID] ships today.", "channel": "web_chat",
                  "status": "active", "response_time_ms": 700.0 + s % 300} for s in range(500)]
        assert w.write(batch) == []
        n += len(batch)
    out.put((n, time.perf_counter() - t0))
    w.close()


def bench_redis(seconds: float, rate: float = 0, pipeline_events: int = 100) -> dict:
    run = f"bench-{uuid.uuid4().hex[:8]}"
    client = connect()
    w = SessionStateWriter(ttl_seconds=600)
    w.connect()
    w.write([{"session_id": f"{run}-{s}", "turn_id": "t0", "seq": 0, "event_time_ms": T0, "message": "hi"}
             for s in range(500)])
    w.close()
    client.config_resetstat()
    q = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_redis_writer, args=(run, seconds, rate, pipeline_events, q))
    proc.start()
    time.sleep(0.5)  # let the writer get going
    lat, i = [], 0
    deadline = time.perf_counter() + seconds - 1.0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        client.hgetall(f"session:{run}-{i % 500}:state")
        lat.append((time.perf_counter() - t) * 1000)
        i += 1
        time.sleep(0.0005)
    n, elapsed = q.get(timeout=seconds + 60)
    proc.join()
    stats = client.info("commandstats")
    keys = list(client.scan_iter(match=f"session:{run}-*", count=1000))
    for k in range(0, len(keys), 1000):
        client.delete(*keys[k:k + 1000])
    client.close()
    return dict(write_rate_limit=rate or "none", pipeline_events=pipeline_events, events_per_s=round(n / elapsed), hgetall_reads=len(lat), hgetall_p50_ms=round(pct(lat, 50), 3),
                hgetall_p95_ms=round(pct(lat, 95), 3), hgetall_p99_ms=round(pct(lat, 99), 3),
                server_usec_per_hgetall=stats.get("cmdstat_hgetall", {}).get("usec_per_call"),
                server_usec_per_guard_script=stats.get("cmdstat_evalsha", {}).get("usec_per_call"))


def _burn(seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sum(range(1000))


def bench_redis_control(seconds: float) -> dict:
    """HGETALL latency with no Redis writes at all, while one CPU-bound process runs: the share of the read
    tail that comes from CPU scheduling on this machine rather than from Redis."""
    client = connect()
    key = f"bench-{uuid.uuid4().hex[:8]}:state"
    client.hset(key, mapping={"last_turn_id": "t1", "last_message": "x" * 40, "seq": 1})
    proc = mp.get_context("spawn").Process(target=_burn, args=(seconds + 0.5,))
    proc.start()
    time.sleep(0.3)
    lat, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds - 0.5:
        t = time.perf_counter()
        client.hgetall(key)
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.0005)
    proc.join()
    client.delete(key)
    client.close()
    return dict(hgetall_p50_ms=round(pct(lat, 50), 3), hgetall_p95_ms=round(pct(lat, 95), 3))


def bench_parquet(rows: int) -> dict:
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming

    from io_connectors.parquet_archive import _WriteParquetFn, archive_schema, kafka_record_to_row, s3_client
    from io_connectors.settings import SpacesSettings
    from events.records import KafkaRecord

    topic = "text.agent.turn.completed"
    run = f"bench-{uuid.uuid4().hex[:8]}/"
    schema = archive_schema(topic)
    payload = {"event_type": "text_agent.turn_completed", "schema_version": 1, "user_id": "user-1",
               "account_id": "acct-1", "model_name": "gpt-4o-mini", "tokens_in": 120, "tokens_out": 300,
               "latency_ms": 812.5, "channel": "web_chat", "tools_used": ["kb_search"],
               "response_text": "Sure, here is how to reset the widget: open settings, then " * 6}
    records = [KafkaRecord(topic, i % 6, i, f"s{i // 8}".encode(),
                           json.dumps(dict(payload, session_id=f"s{i // 8}", turn_id=f"t{i}",
                                           timestamp=T0 + i)).encode(), T0 + i) for i in range(rows)]
    in_bytes = sum(len(r.value) for r in records)
    settings = SpacesSettings.from_env()
    fn = _WriteParquetFn(topic, schema, run, "part", 1, (("partition", "ascending"), ("offset", "ascending")),
                         128 * 1024, 64 << 20, settings)
    fn.setup()
    win = IntervalWindow(T0 / 1000, T0 / 1000 + 3600)
    pane = PaneInfo(True, True, PaneInfoTiming.ON_TIME, 0, 0)
    t0 = time.perf_counter()
    out = list(fn.process((0, [kafka_record_to_row(r, schema) for r in records]), win, pane))
    elapsed = time.perf_counter() - t0
    fn.teardown()
    c = s3_client(settings)
    for o in c.list_objects_v2(Bucket=settings.bucket, Prefix=run).get("Contents", []):
        c.delete_object(Bucket=settings.bucket, Key=o["Key"])
    size = out[0]["bytes"]
    return dict(rows=rows, rows_per_s=round(rows / elapsed), input_mb_per_s=round(in_bytes / elapsed / 1e6, 1),
                output_mb_per_s=round(size / elapsed / 1e6, 1), payload_mb=round(in_bytes / 1e6, 1),
                file_mb=round(size / 1e6, 2), seconds=round(elapsed, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-batches", type=int, default=60, help="500-row batches per Postgres method")
    ap.add_argument("--redis-seconds", type=float, default=5.0, help="duration of the Redis write+read run")
    ap.add_argument("--redis-rate", type=float, default=5000,
                    help="events/s of the second, paced Redis run (the first runs flat out)")
    ap.add_argument("--parquet-rows", type=int, default=200_000, help="rows in the Parquet file")
    a = ap.parse_args(argv)
    report = {"postgres_500_row_batches": bench_postgres(a.pg_batches), "redis_flat_out": bench_redis(a.redis_seconds),
              "redis_paced": bench_redis(a.redis_seconds, a.redis_rate),
              "redis_control_cpu_burner_no_writes": bench_redis_control(a.redis_seconds),
              "parquet": bench_parquet(a.parquet_rows), "cpus": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
