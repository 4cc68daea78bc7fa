"""Fixtures of the Redis Cluster tests: the three-node cluster, started by the tests themselves.

It is started once per session (``tests/support/redis_cluster.py``; reused if
``scripts/services cluster-start`` left one running) and stopped at the end if
this session started it. Without ``redis-server`` the fixture FAILS, never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

from cachesync import Settings
from cachesync.connections import redis_client
from tests.integration.binlog.harness import binlog_env
from tests.support import services as svc
from tests.support.redis_cluster import RedisClusterNodes

__all__ = ["binlog_env", "cluster", "cluster_client"]


@pytest.fixture(scope="session")
def cluster(services: dict[str, str]) -> Iterator[RedisClusterNodes]:
    try:
        nodes, started = svc.start_redis_cluster()
    except svc.ServiceError as exc:
        pytest.fail(f"the Redis Cluster could not be started: {exc}", pytrace=False)
    yield nodes
    if started:
        nodes.stop()


@pytest.fixture
def cluster_client(cluster: RedisClusterNodes) -> Iterator[RedisCluster]:
    """cachesync's own client for the cluster (``redis_cluster = true``), all nodes healthy."""
    cluster.start()  # a node a previous test stopped comes back
    client = redis_client(Settings(redis_url=cluster.url, redis_cluster=True))
    assert isinstance(client, RedisCluster)
    yield client
    client.close()
