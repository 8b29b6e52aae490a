"""The Beam Python SDK worker pool (EXTERNAL environment) the Flink TaskManager's Python stages run on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.config import PORTS, REPO, load_env_file
from devstack.process import port_open, spawn_supervised, supervisor_name
from devstack.services import Service


def worker_pool_start() -> subprocess.Popen:
    # Beam's pool, with a user-state cache in its workers (beam_pipelines/worker_pool.py); supervised: a killed
    # pool (kill -9 of its process group) is started again, as its pod's container would be
    return spawn_supervised("worker-pool", [sys.executable, "-m", "beam_pipelines.worker_pool",
                                 f"--service_port={PORTS['worker-pool']}"], cwd=REPO,
                 # the pool starts workers as `python ...`: the venv's interpreter must come first on PATH
                 # the workers get the same settings a production pod gets from its Secrets/ConfigMaps
                 env={**load_env_file(), "PYTHONPATH": str(REPO),
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})


def _noop() -> None:
    pass


SERVICE = Service("worker-pool", PORTS["worker-pool"], _noop, worker_pool_start,
                  lambda: port_open(PORTS["worker-pool"]), 60, None, f"localhost:{PORTS['worker-pool']} (Beam Python SDK)",
                  [supervisor_name("worker-pool")])
