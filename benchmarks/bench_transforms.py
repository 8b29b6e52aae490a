"""Events/s per core of the transform layer (validate + redact PII + score), in-process, one core.

    .venv/bin/python benchmarks/bench_transforms.py [--events 50000] [--seed 7] [--repeat 3]

Events come from workloads.generator.MixedWorkload (every topic, product-like mix, 10% of free texts with
planted PII). Each record goes through transforms.layer.TransformLayer.apply, the same pure functions the
Beam composites call. The first pass warms caches (user-agent parses); the best of `--repeat` passes is
reported, as wall-clock events/s and as events per CPU-second of this process (the fairer per-core figure on
a shared machine, where other processes steal the core). Target (issue 3): >= 25,000 events/s on one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workloads.generator import MixedWorkload  # noqa: E402
from transforms.layer import TransformLayer  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pii-rate", type=float, default=0.1)
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly
    work = MixedWorkload(seed=args.seed, pii_rate=args.pii_rate).generate(args.events)
    records = [(topic, r.value) for topic, r in work.records]
    layer = TransformLayer(hmac_key=b"benchmark-key-not-a-secret-0123456789",
                           now_ms=work.start_ms + 86_400_000)
    for topic, raw in records[:2000]:  # warm-up
        layer.apply(topic, raw)
    best = best_cpu = 0.0
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for topic, raw in records:
            layer.apply(topic, raw)
        best = max(best, len(records) / (time.perf_counter() - t0))
        best_cpu = max(best_cpu, len(records) / (time.process_time() - c0))
    mix = Counter(t for t, _ in records)
    size = sum(len(v) for _, v in records) / len(records)
    print(f"events: {len(records)} (mean payload {size:.0f} B) mix: {dict(sorted(mix.items()))}")
    print(f"validate + redact + score: {best:,.0f} events/s wall clock, {best_cpu:,.0f} events per CPU-second, "
          f"one core (best of {args.repeat}; load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
