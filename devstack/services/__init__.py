"""The services of the local stack, one module each; `devstack.stack.SERVICES` lists them in start order.

A module defines its install/start/health (and optional after-start) functions and a `Service` that names
them; the orchestrator in `devstack.stack` does the rest (`up`, `status`, `down`).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Callable, List, Optional


@dataclass
class Service:
    name: str
    port: int
    install: Callable[[], None]
    start: Callable[[], subprocess.Popen]
    healthy: Callable[[], bool]
    timeout_s: float = 90
    after_start: Optional[Callable[[], None]] = None
    address: str = ""
    extra_pids: List[str] = field(default_factory=list)
    # a clean shutdown before `down` signals the process group (None: SIGTERM, then SIGKILL after 20 s)
    stop: Optional[Callable[[], None]] = None
