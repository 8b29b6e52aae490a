"""Where the time of a TaskManager-kill cell goes, read from the JobManager's log.

    .venv/bin/python -m reliability.resume_phases reliability/results/<matrix>.json   # its tm_kill cells

For a kill at wall time T (the matrix records it per cell as `details["fault_at"]`), the seconds after T at which:
`detected` the JobManager found the TaskManager gone (`... is no longer reachable` or a heartbeat timeout),
`restarting` the cell's job went RUNNING -> RESTARTING, `registered` a new TaskManager registered,
`scheduled` the job last went RESTARTING -> RUNNING (earlier restarts can fail for lack of slots),
`tasks_running` the last task switched INITIALIZING -> RUNNING, and `first_row` the cell's resume (the row that
ended the stall). `first_row - tasks_running` is the SDK harness start, the restore and the replay of the
records since the last checkpoint (their rows exist already: they are upserts of the same values).
The matrix runs one job at a time, so task transitions in the window are the cell's job's.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterable, List, Optional

LOG_DIR = Path("/var/tmp/iheardai-devstack/logs/flink")
_TS = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")


def _lines(log_dir: Path) -> Iterable[tuple]:
    """(epoch seconds, line) of every JobManager log file, oldest file first (Flink rotates *.log.N)."""
    files = sorted(log_dir.glob("flink-*-standalonesession-*.log*"),
                   key=lambda p: -int(p.name.rsplit(".", 1)[1]) if p.name[-1].isdigit() else 0)
    for f in files:
        with open(f, errors="replace") as fh:
            for line in fh:
                m = _TS.match(line)
                if m:
                    # Flink writes local time; datetime.timestamp() reads a naive value as local time too
                    yield datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line


def phases(job_name: str, fault_at: float, resume_s: Optional[float], log_dir: Path = LOG_DIR,
           horizon_s: float = 300.0) -> Dict[str, Optional[float]]:
    end = fault_at + (resume_s if resume_s else horizon_s)
    out: Dict[str, Optional[float]] = dict.fromkeys(("detected", "restarting", "registered", "scheduled",
                                                     "tasks_running"))
    job = f"Job {job_name} ("
    for ts, line in _lines(log_dir):
        if ts < fault_at - 0.5 or ts > end + 1:
            continue
        rel = round(ts - fault_at, 1)
        if out["detected"] is None and ("is no longer reachable" in line or "Heartbeat of TaskManager" in line):
            out["detected"] = rel
        elif out["restarting"] is None and job in line and "from state RUNNING to RESTARTING" in line:
            out["restarting"] = rel
        elif out["registered"] is None and "Registering TaskManager with ResourceID" in line:
            out["registered"] = rel
        elif job in line and "from state RESTARTING to RUNNING" in line:
            out["scheduled"] = rel
        elif "switched from INITIALIZING to RUNNING" in line and out["scheduled"] is not None:
            out["tasks_running"] = rel
    out["first_row"] = resume_s
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    head = ("cell", "detected", "restarting", "registered", "scheduled", "tasks_running", "first_row")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for path in argv:
        for c in json.loads(Path(path).read_text())["cells"]:
            d = c.get("details") or {}
            if c["fault"] != "tm_kill" or "fault_at" not in d or "job_name" not in d:
                continue
            ph = phases(d["job_name"], d["fault_at"], c.get("resume_s"))
            print(f"| {c['pipeline']} x {c['point']} | " + " | ".join(
                "-" if ph[k] is None else f"{ph[k]:.1f}" for k in head[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
