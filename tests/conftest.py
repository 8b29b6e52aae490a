"""Shared fixtures. Integration and e2e tests talk to the real local stack (`python -m devstack up`),
which the `stack` fixture starts if it is not up yet (idempotent)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(config, items):
    """Tests marked `after_suite` (the secret scan of what the suite left behind) run last, in order."""
    items.sort(key=lambda item: item.get_closest_marker("after_suite") is not None)


@pytest.fixture(scope="session")
def stack():
    """The local stack, up and healthy, with the schema migrated."""
    if os.environ.get("IHEARDAI_SHARED_STACK") == "1":
        # someone else's stack, already up: use it as it is (no `up`: it would start new services and reload
        # Prometheus' config); the schema is still migrated (idempotent)
        rc = 0
    else:
        rc = subprocess.call([sys.executable, "-m", "devstack", "up"], cwd=REPO)
    if rc != 0:
        pytest.fail("the local stack did not start: see the [devstack] lines above and its logs")
    from sql.migrate import apply

    apply(out=open(os.devnull, "w"))
    return True


@pytest.fixture(scope="session")
def pg_settings(stack):
    from io_connectors.settings import PostgresSettings

    return PostgresSettings.from_env()


@pytest.fixture
def pg_conn(pg_settings):
    import psycopg2

    conn = psycopg2.connect(**pg_settings.connect_kwargs())
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def redis_settings(stack):
    from io_connectors.settings import RedisSettings

    return RedisSettings.from_env()


@pytest.fixture(scope="session")
def spaces_settings(stack):
    from io_connectors.settings import SpacesSettings

    return SpacesSettings.from_env()


@pytest.fixture(scope="session")
def kafka_settings(stack):
    from io_connectors.settings import KafkaSettings

    return KafkaSettings.from_env()


@pytest.fixture
def run_id():
    """A unique prefix for the data a test writes, so tests never see each other's rows, keys or files."""
    return f"t{uuid.uuid4().hex[:10]}"
