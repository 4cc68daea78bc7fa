"""Every Redis client of cachesync against a real three-node Redis Cluster.

* :class:`RedisSink`: one ``delete`` of keys spread over all three nodes (and
  hash-tagged keys sharing a slot) deletes every one of them;
* the binlog sidecar and the Kafka retry consumer: a transaction touching rows
  whose keys live on every node is applied as one batch; a node SIGKILLed while
  rows keep changing and restarted (with the keys it had, from its append-only
  file) loses nothing: every stale key is gone afterwards and the index equals
  the table;
* the SQLAlchemy after-commit fast path built from ``redis_cluster = true``;
* :class:`Leases`: fills, collapsed misses' values, and an invalidation during a
  fill, on keys of every node.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from redis.cluster import RedisCluster
from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from cachesync import RetryPolicy, Settings, Sync, config, metrics
from cachesync.connections import redis_client, sql_engine
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, uninstall
from cachesync.errors import ConfigurationError, TransientError
from cachesync.fastpath import fast_path
from cachesync.kafka import RetryConsumer, RetryQueue
from cachesync.leases import Leases
from cachesync.registry import Registry
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import RedisSink, SearchSink
from tests.integration.binlog.harness import BinlogEnv, running, wait_for
from tests.integration.kafka.helpers import FAST_GROUP, create_topics, unique
from tests.support.redis_cluster import RedisClusterNodes, command

pytestmark = pytest.mark.services


def nodes_of(client: RedisCluster, keys: list[str]) -> Counter[int]:
    """How many of *keys* each node (by port) holds the slot of."""
    return Counter(int(client.get_node_from_key(k).port) for k in keys)


def test_one_delete_of_keys_on_every_node(cluster_client: RedisCluster) -> None:
    keys = [f"cl:sink:{i}" for i in range(2000)]
    keys += [f"{{cl:tag}}:{i}" for i in range(500)]  # one slot: one multi-key UNLINK
    assert len(nodes_of(cluster_client, keys)) == 3
    pipe = cluster_client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, "v")
    pipe.execute()
    sink = RedisSink(cluster_client)
    assert sink.cluster
    assert sink.delete([*keys, "cl:sink:never-set"]) == len(keys)
    pipe = cluster_client.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    assert sum(pipe.execute()) == 0


def _pipeline(env: BinlogEnv, cluster_client: RedisCluster, kafka_bootstrap: str) -> Any:
    """The sidecar (in a thread) handing failures to Kafka, and a retry consumer, on the cluster."""
    retry, dead = unique("cl-retry"), unique("cl-dlq")
    create_topics(kafka_bootstrap, retry, dead, partitions=3)
    queue = RetryQueue(kafka_bootstrap, retry, timeout=10.0, pipeline=env.schema)
    sidecar = env.sidecar(applier=env.applier(redis=cluster_client), on_failure=queue)
    settings = Settings(redis_url=env.redis_url, redis_cluster=True)
    engine = sql_engine(env.root_url)
    consumer = RetryConsumer(
        kafka_bootstrap,
        topic=retry,
        dead_letter_topic=dead,
        group_id=unique("cl-group"),
        redis=RedisSink(redis_client(settings)),
        search=SearchSink(env.es),
        refresher=Refresher(SqlRowReader(engine), env.registry()),
        # Long enough to outlast the node's outage (about 10 s): nothing may be dead-lettered.
        policy=RetryPolicy(attempts=15, min_backoff=0.5, max_backoff=3.0),
        consumer_options=FAST_GROUP,
    )
    return sidecar, consumer, engine, dead


def test_sidecar_and_retry_consumer_converge_across_a_node_restart(
    binlog_env: BinlogEnv,
    cluster: RedisClusterNodes,
    cluster_client: RedisCluster,
    kafka_bootstrap: str,
) -> None:
    env = binlog_env
    env.redis = cluster_client  # sync points, set_keys and existing() go to the cluster
    env.redis_url = cluster.url
    ids = range(1, 301)
    for start in range(1, 301, 100):
        env.sql(
            "INSERT INTO users VALUES "
            + ", ".join(f"({i}, 'u{i}', 'n{i}', NULL, 0)" for i in range(start, start + 100))
        )
    keys = [k for i in ids for k in env.keys(i, f"u{i}")]
    spread = nodes_of(cluster_client, keys)
    assert len(spread) == 3, spread
    sidecar, consumer, engine, _dead = _pipeline(env, cluster_client, kafka_bootstrap)
    stop = threading.Event()
    consuming = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    consuming.start()
    before = metrics.snapshot()
    try:
        with running(sidecar):
            env.sync_point()
            # 1. One transaction: 300 rows, 600 keys on three nodes, one batch.
            env.set_keys(keys)
            env.sql("UPDATE users SET nickname = CONCAT(nickname, '+') WHERE id > 0")
            env.sync_point()
            assert env.existing(keys) == []

            # 2. A node SIGKILLed while rows keep changing, then restarted with its keys.
            env.set_keys(keys)
            victim = max(spread, key=lambda port: spread[port])
            writes = 0
            cluster.kill_node(victim)
            killed = time.monotonic()
            while time.monotonic() - killed < 6:  # the cluster notices and refuses (CLUSTERDOWN)
                first = 1 + (writes * 30) % 300
                env.sql(
                    "UPDATE users SET nickname = CONCAT(nickname, '.') "
                    f"WHERE id BETWEEN {first} AND {first + 29}"
                )
                writes += 1
                time.sleep(0.2)
            # Every row changed during the outage (its keys must go, wherever they live).
            env.sql("UPDATE users SET nickname = CONCAT(nickname, '!') WHERE id > 0")
            cluster.start_node(victim)
            kept = int(command(victim, "DBSIZE") or 0)  # before the cluster lets anyone delete
            cluster.wait_ok()
            back = time.monotonic()
            # The restarted node kept its keys (append-only file): they are there to delete.
            assert kept > 0, "the restarted node came back empty: nothing left to prove"
            wait_for(lambda: env.existing(keys) == [], 120, "every stale key deleted")
            converged = time.monotonic() - back
            env.sync_point(timeout=120)
            env.assert_index_matches_table()
    finally:
        stop.set()
        consuming.join(30)
        engine.dispose()
    after = metrics.snapshot()
    handed = after["handed_off_total"] - before["handed_off_total"]
    retried = after["retry_succeeded_total"] - before["retry_succeeded_total"]
    dead = after["dead_letters_total"] - before["dead_letters_total"]
    print(
        f"\ncluster: {len(keys)} keys on nodes {dict(spread)}; node {victim} down "
        f"{back - killed:.1f} s during {writes} updates, came back with {kept} keys; {handed} actions handed to Kafka, "
        f"{retried} applied by the retry consumer, {dead} dead letters; all keys gone "
        f"{converged:.1f} s after the node returned"
    )
    assert handed > 0 and retried > 0, "the outage never reached the retry path"
    assert dead == 0


class Base(DeclarativeBase):
    pass


class ClusterMember(CacheSyncMixin, Base):
    __tablename__ = "cluster_members"
    __cachesync_registry__ = Registry()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column("user_name", String(64))
    __cachesync__ = Sync(keys=["cl:member:{id}", "cl:member:by-name:{username}"])


def test_the_fast_path_deletes_keys_of_every_node_after_commit(
    cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    config.configure(redis_url=cluster.url, redis_cluster=True)
    fast_path.configure()  # built again from the settings: RedisCluster, slot-grouped sink
    install(sessions)
    keys = [k for i in range(100) for k in (f"cl:member:{i}", f"cl:member:by-name:m{i}")]
    try:
        assert len(nodes_of(cluster_client, keys)) == 3
        for key in keys:
            cluster_client.set(key, "cached")
        with sessions.begin() as session:  # one commit, 200 keys on three nodes
            session.add_all(ClusterMember(id=i, username=f"m{i}") for i in range(100))
        assert [k for k in keys if cluster_client.exists(k)] == []
        assert isinstance(fast_path.applier.keys.client, RedisCluster)  # type: ignore[attr-defined]
    finally:
        uninstall(sessions)
        config.reset_settings()
        fast_path.configure()
        engine.dispose()


def test_leases_fill_and_refuse_stale_fills_on_every_node(cluster_client: RedisCluster) -> None:
    leases = Leases(cluster_client, ttl=60)
    keys = [f"cl:lease:{i}" for i in range(60)]
    assert len(nodes_of(cluster_client, keys)) == 3
    loads: Counter[str] = Counter()

    def loader(key: str, value: str) -> Any:
        def load() -> str:
            loads[key] += 1
            return value

        return load

    for key in keys:
        assert leases.cached(key, loader(key, "v1")) == "v1"
        assert leases.cached(key, loader(key, "never")) == "v1"  # a hit: not loaded again
    assert all(n == 1 for n in loads.values())
    sink = RedisSink(cluster_client)
    for key in keys:
        # An invalidation lands while the (old) value is being loaded: the fill must fail.
        def racing(key: str = key) -> str:
            sink.delete([key])
            return "stale"

        sink.delete([key])
        assert leases.cached(key, racing) == "stale"
        assert cluster_client.get(key) is None
        assert leases.cached(key, loader(key, "v2")) == "v2"
        assert leases.cached(key, loader(key, "never")) == "v2"


def test_a_cluster_down_at_start_up_is_a_redis_error_at_first_use(
    cluster: RedisClusterNodes,
) -> None:
    """redis-py's RedisCluster connects in its constructor and raises a non-Redis error;
    cachesync's client waits for its first command, so nothing crashes at start-up."""
    closed = Settings(redis_url="redis://127.0.0.1:9/0", redis_cluster=True)
    client = redis_client(closed)  # no node answers: still a client
    assert isinstance(client, RedisCluster)
    sink = RedisSink(client)
    assert sink.cluster and not sink.ping()
    with pytest.raises(TransientError, match="Redis UNLINK of 2 key"):
        sink.delete(["cl:a", "cl:b"])
    assert Leases(client).cached("cl:lease:down", lambda: "loaded") == "loaded"
    client.close()
    with pytest.raises(ConfigurationError, match="a Redis Cluster has only database 0"):
        redis_client(Settings(redis_url=f"{cluster.url[:-2]}/3", redis_cluster=True))
    fine = redis_client(Settings(redis_url=cluster.url, redis_cluster=True))
    assert RedisSink(fine).ping()
    fine.close()


def test_verify_finds_and_deletes_orphan_keys_on_every_node(
    cluster_client: RedisCluster, mysql_url: str
) -> None:
    import pymysql

    from cachesync import resolve
    from cachesync.connections import mysql_params
    from cachesync.verify import verify_keys

    table = unique("cl_verify").replace("-", "_")
    conn = pymysql.connect(**mysql_params(mysql_url), autocommit=True)
    spec = resolve(
        "ClusterVerify",
        Sync(keys=[f"cl:{table}:{{id}}"]),
        table=table,
        columns={"id": "id"},
        primary_key=["id"],
    )
    try:
        with conn.cursor() as c:
            c.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            c.executemany(f"INSERT INTO {table} VALUES (%s)", [(i,) for i in range(50)])
        live = [f"cl:{table}:{i}" for i in range(50)]
        gone = [f"cl:{table}:{i}" for i in range(50, 110)]  # rows that no longer exist
        assert len(nodes_of(cluster_client, gone)) == 3
        for key in live + gone:
            cluster_client.set(key, "cached")
        report = verify_keys(conn, cluster_client, spec, repair=True)
        assert (report.cached, sorted(report.orphans)) == (50, sorted(gone))
        assert report.repaired == len(gone)
        assert verify_keys(conn, cluster_client, spec).ok
    finally:
        with conn.cursor() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()


def _move_slot(cluster: RedisClusterNodes, slot: int, source: int, target: int) -> None:
    """Migrate *slot* with its keys from node *source* to node *target* (ports), as a
    resharding does, announcing the new owner to every node."""
    ids = {p: (command(p, "CLUSTER", "MYID") or b"").decode() for p in cluster.ports}
    assert command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source]) == b"OK"
    assert command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target]) == b"OK"
    client = RedisCluster(host="127.0.0.1", port=source)
    try:
        node = client.get_node(host="127.0.0.1", port=source)
        keys = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000, target_nodes=node)
        if keys:
            client.get_redis_connection(node).execute_command(
                "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys
            )
    finally:
        client.close()
    for port in cluster.ports:
        assert command(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target]) == b"OK"


def test_a_slot_moved_under_the_sink_is_followed(
    cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    """The sink sends each node its UNLINKs directly; a slot resharded since the client
    read the topology answers MOVED, and those keys go through the cluster client."""
    keys = [f"{{cl:moving}}:{i}" for i in range(20)] + [f"cl:staying:{i}" for i in range(200)]
    for key in keys:
        cluster_client.set(key, "cached")
    slot = cluster_client.keyslot(keys[0])
    source = int(cluster_client.get_node_from_key(keys[0]).port)
    target = next(p for p in cluster.ports if p != source)
    _move_slot(cluster, slot, source, target)
    try:
        assert int(cluster_client.get_node_from_key(keys[0]).port) == source  # stale topology
        assert RedisSink(cluster_client).delete(keys) == len(keys)
        assert not any(cluster_client.exists(k) for k in keys)
        assert int(cluster_client.get_node_from_key(keys[0]).port) == target  # read again
    finally:
        _move_slot(cluster, slot, target, source)
        cluster.wait_ok()
