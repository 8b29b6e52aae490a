"""Loading the scripts of flink-deploy/ (not a package: its name has a dash) as modules, once each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "flink-deploy"


def load(name: str):
    """flink-deploy/<name>.py as the module `flink_deploy_<name>` (the name its siblings load it under)."""
    key = f"flink_deploy_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, DEPLOY / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]
