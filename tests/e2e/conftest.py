"""End-to-end tests share one Flink cluster and its one TaskManager for the whole suite.

Kafka IO's Java half runs in a PROCESS environment that ends with each job, and the Beam runner's classes are
loaded once from the cluster's classpath, so cancelled jobs leave nothing behind in the TaskManager
(benchmarks/taskmanager_cycles.py measures it). IHEARDAI_FRESH_TASKMANAGER=1 recycles it before each module anyway.
"""

import pytest


@pytest.fixture(scope="module", autouse=True)
def fresh_taskmanager(stack):
    """IHEARDAI_FRESH_TASKMANAGER=1: a new TaskManager before each module (to tell a leak from a test's fault)."""
    import os

    from devstack.services.flink import restart_taskmanager

    if os.environ.get("IHEARDAI_FRESH_TASKMANAGER") == "1" and os.environ.get("IHEARDAI_SHARED_STACK") != "1":
        restart_taskmanager()
    yield


@pytest.fixture(scope="session", autouse=True)
def local_pii_key(stack):
    """Expected rows are computed here with the same key the pipelines use: the local stack's, which the
    README's command reads from $DEVSTACK_HOME/devstack.env (as a pod reads its Secret)."""
    from beam_pipelines.options import _export_local_secrets

    _export_local_secrets()
