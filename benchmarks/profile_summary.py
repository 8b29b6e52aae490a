"""Summarise the profiles `bench_pipelines.py --profile DIR` wrote: the Python functions that held the GIL
(self and inclusive share of samples, all SDK workers together) and the TaskManager's hottest Java frames.

    .venv/bin/python benchmarks/profile_summary.py DIR/beam [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
from pathlib import Path


def python_profile(files, top: int) -> None:
    own, incl, total = collections.Counter(), collections.Counter(), 0
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = stack.split(";")
            total += int(n)
            own[frames[-1]] += int(n)
            for fr in set(frames):
                incl[fr] += int(n)
    print(f"Python: {total} GIL samples in {len(files)} process(es)")
    print("  self:")
    for k, c in own.most_common(top):
        print(f"  {c / total:6.1%}  {k[:140]}")
    print("  inclusive:")
    for k, c in incl.most_common(top * 2):
        if "threading.py" not in k and "thread_pool_executor" not in k and not k.startswith("process "):
            print(f"  {c / total:6.1%}  {k[:140]}")


def java_profile(jfr: Path, top: int) -> None:
    out = subprocess.run(["jfr", "print", "--events", "jdk.ExecutionSample", str(jfr)], capture_output=True,
                         text=True, check=True).stdout
    own, incl, threads, n = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for ev in out.split("jdk.ExecutionSample")[1:]:
        frames = re.findall(r"^\s+([\w.$<>]+)\(", ev, re.M)
        if not frames:
            continue
        n += 1
        t = re.search(r'sampledThread = "([^"]*)"', ev)
        threads[re.sub(r"\d+", "N", t.group(1))[:90] if t else "?"] += 1
        own[frames[0]] += 1
        for f in set(frames):
            incl[f] += 1
    print(f"Java (TaskManager): {n} execution samples")
    for title, counter, k in (("threads", threads, 12), ("self", own, top), ("inclusive", incl, top)):
        print(f"  {title}:")
        for name, c in counter.most_common(k):
            print(f"  {c / max(n, 1):6.1%}  {name[:140]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    d = Path(args.dir)
    py = sorted(d.glob("py-*.txt"))
    if py:
        python_profile(py, args.top)
    if (d / "taskmanager.jfr").exists():
        java_profile(d / "taskmanager.jfr", args.top)


if __name__ == "__main__":
    main()
