"""End-to-end tests share one Flink cluster; each test module starts on a fresh TaskManager.

Cancelled Beam jobs leave Kafka producer threads and classes of the EMBEDDED Java harness behind in the
TaskManager JVM (see devstack.stack.restart_taskmanager); recycling it per module keeps a long suite healthy.
"""

import pytest


@pytest.fixture(scope="module", autouse=True)
def fresh_taskmanager(stack):
    from devstack.stack import restart_taskmanager

    restart_taskmanager()
    yield
