"""``RedisSink.purge`` on a three-primary Redis Cluster: every primary's keyspace is walked.

A ``SCAN`` on a cluster client reaches one node only; a purge that scanned one
primary would leave about two thirds of the matching keys behind.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from cachesync.sinks import RedisSink
from tests.support import services as svc

pytestmark = pytest.mark.services


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; Redis wants both below 65536."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise AssertionError("no free port pair for a Redis Cluster node")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    nodes = [
        svc.start_redis(
            _cluster_port(),
            dir=tmp_path / f"n{i}",
            extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
        )
        for i in range(3)
    ]
    try:
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is needed to create the test cluster"
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 60
        while True:
            info = subprocess.run(
                [cli, "-p", str(nodes[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "cluster_state:ok" in info:
                break
            assert time.monotonic() < deadline, f"the cluster did not form: {info}"
            time.sleep(0.2)
        client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        try:
            yield client
        finally:
            client.close()
    finally:
        for node in nodes:
            node.stop()


def test_purge_walks_every_primary(cluster: RedisCluster) -> None:
    run = uuid.uuid4().hex[:8]
    matching = [f"{run}:user:{i}" for i in range(3000)]
    others = [f"{run}:order:{i}" for i in range(300)]
    for start in range(0, len(matching + others), 500):
        pipe = cluster.pipeline()
        for key in (matching + others)[start : start + 500]:
            pipe.set(key, b"1")
        pipe.execute()
    owners = {cluster.get_node_from_key(k).name for k in matching}
    assert len(owners) == 3  # the keys really are spread over the three primaries
    sink = RedisSink(cluster)
    assert sink.cluster
    assert sink.purge(f"{run}:user:*") == len(matching)
    assert sum(cluster.exists(k) for k in matching[::50]) == 0
    assert sum(int(cluster.exists(k)) for k in others) == len(others)


def test_delete_of_keys_in_many_slots(cluster: RedisCluster) -> None:
    """One pipelined UNLINK per hash slot (redis-py's cluster pipeline refuses ``pipe.unlink(a, b)``)."""
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}:k:{i}" for i in range(200)] + [f"{{{run}}}:same-slot:{i}" for i in range(50)]
    pipe = cluster.pipeline()
    for key in keys:
        pipe.set(key, b"1")
    pipe.execute()
    assert RedisSink(cluster, chunk=20).delete([*keys, f"{run}:absent"]) == len(keys)
    assert sum(int(cluster.exists(k)) for k in keys) == 0
