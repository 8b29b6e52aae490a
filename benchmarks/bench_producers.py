"""Benchmark of the producers: the HTTP collector under wrk (batches of 1 and 20) and the library's track_event.

    python benchmarks/bench_producers.py [--duration-s 15] [--connections 64] [--workers 1 2]
                                         [--throwaway-broker] [--library-events 100000]

- Collector: `python -m iheardai_analytics.collector` (rate limit off, --ack spill) on a free port, loaded by
  `wrk` (Debian package `wrk`; the script checks and says how to install it, it installs nothing) with a Lua
  script that POSTs frontend events with unique session ids; requests/s, events/s and wrk's p50/p99 latency.
  The events really go to Kafka: the table says how many the producer had acknowledged at the end.
- Library: track_event of a text-agent turn (the seed's payload), back to back (events/s) and paced at
  --paced-rate events/s (call-time p50/p99/p99.9, what a service calling it between requests sees), in both
  validation modes (raise: validated on the caller's thread; dead_letter: validated on the sender thread).

--throwaway-broker runs against a private KRaft broker (tests.producer_helpers.ThrowawayKafka) instead of the
local stack's, so that a benchmark does not fill the shared frontend topics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from events import topics  # noqa: E402
from tests.producer_helpers import ThrowawayKafka, collector_process  # noqa: E402
from io_connectors.settings import librdkafka_for

LUA = """
local n = 0
local batch = %d
request = function()
  n = n + 1
  local evs = {}
  for i = 1, batch do
    evs[i] = string.format('{"event_type":"click","session_id":"%s-%%d-%%d","event_id":"%s-%%d-%%d-%%d",' ..
      '"page_url":"https://www.iheard.ai/pricing","interaction_type":"click","element_id":"chat-button",' ..
      '"widget_id":"sales-assistant","user_agent":"Mozilla/5.0 bench","timestamp":%%d}',
      n %% 500, i, n, i, math.random(1000000), %d)
  end
  local body = batch == 1 and evs[1] or ("[" .. table.concat(evs, ",") .. "]")
  return wrk.format("POST", "/api/analytics", {["Content-Type"] = "application/json"}, body)
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000


def run_wrk(url: str, batch: int, duration_s: int, connections: int, tag: str) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA % (batch, tag, tag, int(time.time() * 1000)))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}  # wrk --latency distribution
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "events_s": rps * batch, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def bench_collector(bootstrap: str, args) -> list:
    rows = []
    for workers in args.workers:
        tmp = Path(tempfile.mkdtemp(prefix="bench-collector-"))
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        with collector_process(tmp / "spill", "--workers", str(workers), "--rate-limit-per-s", "0",
                               "--max-batch-events", "100", env=env) as url:
            for batch in (1, 20):
                run_wrk(url, batch, 3, args.connections, "warm")  # warm-up (JIT-less, but caches, connections)
                r = run_wrk(url, batch, args.duration_s, args.connections, f"bench-{uuid.uuid4().hex[:6]}")
                r.update(workers=workers, batch=batch)
                rows.append(r)
                print(f"collector workers={workers} batch={batch}: {r}", flush=True)
            health = json.loads(subprocess.run(["curl", "-s", f"{url}/health"], capture_output=True, text=True).stdout)
            print(f"  producer at the end: {health}", flush=True)
            rows[-1]["acked_at_end"] = health["sent"]
            rows[-1]["queued_at_end"] = health["queued"]
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _turn(i: int, sid: str) -> dict:
    return {"event_type": "text_agent.turn_completed", "session_id": f"{sid}-{i % 100}", "turn_id": f"turn_{i}",
            "user_id": "user-1", "channel": "web_chat", "model_name": "claude-3-sonnet", "tokens_in": 412,
            "tokens_out": 96, "latency_ms": 1234.5, "response_text": "Our team plan is $49 per seat per month.",
            "user_message": "How much is the team plan?", "tools_used": ["pricing_lookup"],
            "tool_results": {"pricing_lookup": {"success": True}},
            "conversation_context": {"previous_turns": 2, "topic_history": ["pricing"], "user_intent": "purchase"},
            "timestamp": int(time.time() * 1000)}


def bench_library(bootstrap: str, args) -> list:
    from iheardai_analytics import Analytics

    rows = []
    for mode in ("raise", "dead_letter"):
        tmp = Path(tempfile.mkdtemp(prefix="bench-library-"))
        a = Analytics(librdkafka_for(bootstrap), name=f"bench-{mode}", spill_dir=tmp, on_invalid=mode)
        sid = f"bench-{uuid.uuid4().hex[:6]}"
        events = [_turn(i, sid) for i in range(args.library_events)]
        t0 = time.perf_counter()
        for ev in events:  # back to back: throughput
            a.track_event(ev)
        burst_s = time.perf_counter() - t0
        a.flush(120)
        durations = []
        gap = 1.0 / args.paced_rate
        nxt = time.perf_counter()
        for ev in events[: min(len(events), args.paced_rate * 10)]:  # paced: call time as a service sees it
            while time.perf_counter() < nxt:
                pass
            t = time.perf_counter_ns()
            a.track_event(ev)
            durations.append(time.perf_counter_ns() - t)
            nxt += gap
        sent_all = a.flush(120) == 0
        st = a.stats()
        a.close()
        shutil.rmtree(tmp, ignore_errors=True)
        durations.sort()
        q = lambda f: durations[min(len(durations) - 1, int(len(durations) * f))] / 1000  # noqa: E731
        row = {"mode": mode, "events_s": len(events) / burst_s, "paced_rate": args.paced_rate, "p50_us": q(0.5),
               "p99_us": q(0.99), "p999_us": q(0.999), "all_acked": sent_all, "sent": st["sent"]}
        rows.append(row)
        print(f"library {row}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--library-events", type=int, default=100_000)
    ap.add_argument("--paced-rate", type=int, default=5000, help="events/s of the paced call-time measurement")
    ap.add_argument("--throwaway-broker", action="store_true")
    ap.add_argument("--skip-collector", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_collector and not shutil.which("wrk"):
        print("wrk is not installed: `apt-get install -y wrk` (Debian), or run with --skip-collector", file=sys.stderr)
        return 2
    broker = None
    if args.throwaway_broker:
        broker = ThrowawayKafka(Path(tempfile.mkdtemp(prefix="bench-kafka-")))
        broker.start()
        for t in topics.TOPICS:
            broker.create_topic(t.name, t.partitions)
        bootstrap = broker.bootstrap
    else:
        from io_connectors.settings import KafkaSettings

        bootstrap = KafkaSettings.from_env().bootstrap_servers
    try:
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} at start; broker {bootstrap}")
        coll = [] if args.skip_collector else bench_collector(bootstrap, args)
        lib = bench_library(bootstrap, args)
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(broker.dir, ignore_errors=True)
    print("\n| collector workers | batch | requests/s | events/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|---|---|")
    for r in coll:
        print(f"| {r['workers']} | {r['batch']} | {r['rps']:,.0f} | {r['events_s']:,.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['non_2xx']} |")
    print("\n| library validation | events/s back to back | paced at | track_event p50 us | p99 us | p99.9 us | all acked |")
    print("|---|---|---|---|---|---|---|")
    for r in lib:
        print(f"| {r['mode']} | {r['events_s']:,.0f} | {r['paced_rate']}/s | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
              f"{r['p999_us']:.1f} | {r['all_acked']} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
