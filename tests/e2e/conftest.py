"""End-to-end tests share one Flink cluster; each test module starts on a fresh TaskManager.

Cancelled Beam jobs leave Kafka producer threads and classes of the EMBEDDED Java harness behind in the
TaskManager JVM (see devstack.services.flink.restart_taskmanager); recycling it per module keeps a long suite healthy.
"""

import pytest


@pytest.fixture(scope="module", autouse=True)
def fresh_taskmanager(stack):
    """IHEARDAI_SHARED_STACK=1 (a cluster others use, e.g. for benchmarks): leave the TaskManager alone."""
    import os

    from devstack.services.flink import restart_taskmanager

    if os.environ.get("IHEARDAI_SHARED_STACK") != "1":
        restart_taskmanager()
    yield


@pytest.fixture(scope="session", autouse=True)
def local_pii_key(stack):
    """Expected rows are computed here with the same key the pipelines use: the local stack's, which the
    README's command reads from $DEVSTACK_HOME/devstack.env (as a pod reads its Secret)."""
    from beam_pipelines.options import _export_local_secrets

    _export_local_secrets()
