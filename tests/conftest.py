"""Shared fixtures: the private services (MariaDB, Redis, Kafka, Elasticsearch API).

Tests that need real services request ``services`` (or one of the URL fixtures). If the services
cannot be started the fixture errors, so those tests FAIL rather than skip. The services are left
running after the session (``scripts/services stop`` stops them).
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.support import services as _services

# Generated examples are judged by what they find, not by how fast a loaded 2-core CI
# machine runs them: hypothesis's default 200 ms deadline made property tests flaky there.
settings.register_profile("cachesync", deadline=None)
settings.load_profile("cachesync")


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Start (or verify) the shared private services; returns the CACHESYNC_* settings."""
    try:
        return _services.start_all()
    except _services.ServiceError as exc:
        pytest.fail(f"private services could not be started: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def mysql_url(services: dict[str, str]) -> str:
    """``mysql://root@127.0.0.1:33061/cachesync_test``"""
    return services["CACHESYNC_MYSQL_URL"]


@pytest.fixture(scope="session")
def sidecar_mysql_url(services: dict[str, str]) -> str:
    """Least-privilege binlog user: ``mysql://cachesync_sidecar:sidecar-pw@127.0.0.1:33061/...``"""
    return _services.sidecar_mysql_url()


@pytest.fixture(scope="session")
def redis_url(services: dict[str, str]) -> str:
    """``redis://127.0.0.1:63791/0``"""
    return services["CACHESYNC_REDIS_URL"]


@pytest.fixture(scope="session")
def kafka_bootstrap(services: dict[str, str]) -> str:
    """``127.0.0.1:19092``"""
    return services["CACHESYNC_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def es_url(services: dict[str, str]) -> str:
    """``http://127.0.0.1:19200``"""
    return services["CACHESYNC_ES_URL"]
