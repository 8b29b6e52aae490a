"""The analytics collector (`python -m iheardai_analytics.collector`): the browser tracker's endpoint, producing to
the local Kafka. CORS allows the local demo origins; its spill lives under $DEVSTACK_HOME/data/collector-spill."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

from devstack.config import DATA, PORTS, REPO
from devstack.process import port_open, spawn_supervised, supervisor_name
from devstack.services import Service

LOCAL_ORIGINS = ",".join(f"http://{h}:{p}" for h in ("localhost", "127.0.0.1") for p in (3000, 5173, 8080))


def collector_start() -> subprocess.Popen:
    # supervised like its Deployment (a process librdkafka aborts comes back; its spill keeps what it accepted)
    return spawn_supervised("collector", [sys.executable, "-m", "iheardai_analytics.collector",
                                          "--port", str(PORTS["collector"])],
                            cwd=REPO, env={"KAFKA_PRINCIPAL": "producer-frontend",  # it writes the frontend topics only
                                           "COLLECTOR_SPILL_DIR": str(DATA / "collector-spill"),
                                           "COLLECTOR_ALLOWED_ORIGINS": LOCAL_ORIGINS})


def collector_healthy() -> bool:
    if not port_open(PORTS["collector"]):
        return False
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['collector']}/health", timeout=2) as r:
        return r.status == 200


SERVICE = Service("collector", PORTS["collector"], lambda: None, collector_start, collector_healthy, 60, None,
                  f"http://localhost:{PORTS['collector']}/api/analytics (analytics collector; /tracker.js)",
                  [supervisor_name("collector")])
