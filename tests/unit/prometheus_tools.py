"""promtool and amtool for the tests, installed from Debian's packages when missing (as the local stack does)."""

from __future__ import annotations

import shutil


def tool(binary: str, package: str) -> str:
    """The path of `binary`; `apt-get install package` first if it is not on PATH."""
    path = shutil.which(binary)
    if path is None:
        from devstack.process import apt_install

        apt_install(package)
        path = shutil.which(binary)
    assert path, f"{binary} not found after installing the Debian package {package}"
    return path


def promtool() -> str:
    return tool("promtool", "prometheus")


def amtool() -> str:
    return tool("amtool", "prometheus-alertmanager")
