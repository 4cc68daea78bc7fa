"""Clients built from :class:`~cachesync.config.Settings`, always with explicit timeouts.

A frozen Redis or Elasticsearch must never hang an application request or the
sidecar, so every client gets connect and socket timeouts and no hidden retries
(retrying is the applier's job, where it is bounded and counted).
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .config import Settings, env_name
from .errors import ConfigurationError

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine

    from .registry import Registry

__all__ = [
    "any_reachable",
    "elasticsearch_client",
    "mysql_hosts",
    "mysql_params",
    "needed_sinks",
    "redis_client",
    "redis_options",
    "sql_engine",
    "sqlalchemy_url",
]


def redis_client(settings: Settings) -> redis.Redis:
    """A redis-py client (or ``RedisCluster`` when ``redis_cluster``) with explicit timeouts.

    ``redis_url`` has no default: a guessed ``localhost:6379`` would receive the
    deletes meant for the application's real cache, so its absence is a
    :class:`ConfigurationError` naming the setting.

    With ``redis_cluster = true``, ``redis_url`` names any one node
    (``redis://node1:6379/0``; a cluster has only database 0): the client learns
    the others from it. It does so at its first command, not here, like the
    single-node client: a cluster that is down when the sidecar starts or the
    application first commits is an ordinary Redis error later (retried,
    handed off, logged), never a crash at start-up or in a commit hook.
    """
    url = settings.require("redis_url", "to delete cache keys")
    import redis as redis_lib

    options = redis_options(settings)
    if settings.redis_cluster:
        database = urlsplit(url).path.strip("/")
        if database not in ("", "0"):
            raise ConfigurationError(
                f"redis_url names database {database}, but a Redis Cluster has only "
                "database 0 (redis_cluster is true): use redis://host:port/0",
                setting="redis_url",
            )
        cluster: redis_lib.Redis = _cluster_client(url, options)
        return cluster
    from .redis_pool import waiting_client

    client: redis_lib.Redis = waiting_client(url, settings, options)
    return client


def redis_options(settings: Settings) -> dict[str, Any]:
    """What every cachesync Redis client connects with: the settings' timeouts, no retries."""
    return {
        "socket_connect_timeout": settings.redis_connect_timeout,
        "socket_timeout": settings.redis_socket_timeout,
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


def _cluster_client(url: str, options: dict[str, Any]) -> Any:
    """A ``RedisCluster`` that asks for its nodes at its first command (see :func:`redis_client`).

    redis-py's own constructor connects at once and raises ``RedisClusterException``
    (not a ``RedisError``) when no node answers. This subclass runs that
    constructor on the first attribute the instance lacks, i.e. at the first
    command, turning that failure into ``redis.ConnectionError``; it stays a
    ``RedisCluster`` for ``isinstance`` (:class:`~cachesync.sinks.redis.RedisSink`
    groups keys by hash slot for it).
    """
    import threading

    import redis as redis_lib
    from redis.cluster import RedisCluster
    from redis.connection import Encoder  # type: ignore[attr-defined]
    from redis.exceptions import RedisClusterException

    class DeferredRedisCluster(RedisCluster):
        def __init__(self) -> None:  # the real constructor runs at first use
            self.__dict__.update(
                _cachesync_options={"url": url, **options},
                _cachesync_lock=threading.Lock(),
                _cachesync_ready=False,
                # Leases.register_script asks for the encoder before any command.
                encoder=Encoder("utf-8", "strict", False),  # type: ignore[no-untyped-call]
            )

        def __getattr__(self, name: str) -> Any:
            state = self.__dict__
            if name.startswith("__") or "_cachesync_lock" not in state or state["_cachesync_ready"]:
                raise AttributeError(name)
            with state["_cachesync_lock"]:
                if not state["_cachesync_ready"]:
                    try:
                        RedisCluster.__init__(self, **state["_cachesync_options"])
                    except RedisClusterException as exc:
                        raise redis_lib.ConnectionError(str(exc)) from exc
                    state["_cachesync_ready"] = True
            return object.__getattribute__(self, name)

        def close(self) -> None:
            if self.__dict__.get("_cachesync_ready"):
                super().close()

    return DeferredRedisCluster()


def any_reachable(bootstrap: str, *, timeout: float) -> bool:
    """True when a TCP connection to one of the ``host:port`` servers succeeds in *timeout*.

    Used for Kafka because kafka-python's own bootstrap ignores short timeouts
    (about 30 s per client before it gives up).
    """
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def needed_sinks(
    settings: Settings, registry: Registry, *, command: str, strict_search: bool = True
) -> tuple[bool, bool]:
    """``(needs_redis, needs_search)`` of the declarations, checked against the settings.

    A declared key with no ``redis_url`` (or a projection with no ``es_url``) is a
    :class:`ConfigurationError` naming the models and the setting, at start-up,
    not a crash at the first change. Without any declaration (*command* run
    without ``models``) nothing can be ruled out, so Redis is needed.
    """
    specs = registry.tables()
    needs_redis = not specs or any(s.key_templates or s.invalidates is not None for s in specs)
    needs_search = any(s.projections for s in specs)
    for needed, name, what in (
        (needs_redis, "redis_url", "cache keys"),
        (needs_search, "es_url", "search projections"),
    ):
        if needed and getattr(settings, name) is None:
            flag = "--" + name.replace("_", "-")
            models = ", ".join(
                s.model
                for s in specs
                if (s.projections if name == "es_url" else s.key_templates or s.invalidates)
            )
            who = f"{models} declare {what}" if models else f"{command} applies {what}"
            message = f"{who} but {name} ({flag} / {env_name(name)}) is not set"
            if name == "es_url" and not strict_search:
                logging.getLogger("cachesync.cli").warning(
                    "%s: %s; their document actions cannot be applied here", command, message
                )
                continue
            raise ConfigurationError(f"{message}; there is no default", setting=name)
    return needs_redis, needs_search


def elasticsearch_client(settings: Settings) -> Any:
    """An ``elasticsearch.Elasticsearch`` 8.x client; retries are left to the applier."""
    es_url = settings.require("es_url", "for search projections")
    from elasticsearch import Elasticsearch

    hosts = [h.strip() for h in es_url.split(",") if h.strip()]
    return Elasticsearch(
        hosts, request_timeout=settings.es_timeout, max_retries=0, retry_on_timeout=False
    )


def mysql_hosts(url: str, *, setting: str = "mysql_url") -> list[dict[str, Any]]:
    """Connection keywords for each server of a ``mysql://`` URL, in the URL's order.

    A URL may name several servers, ``mysql://u:p@h1:3306,h2:3306/db``: the
    primary and the replicas it may fail over to (the sidecar follows the
    writable one, :mod:`cachesync.binlog.failover`). They share user, password
    and database.
    """
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    problem = f"setting {setting} must be mysql://user:password@host:port[,host2:port2]/database"
    if parts.scheme.split("+")[0] not in ("mysql", "mariadb") or not hostlist:
        raise ConfigurationError(problem, setting=setting)
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    database = parts.path.lstrip("/")
    hosts: list[dict[str, Any]] = []
    for item in hostlist.split(","):
        one = urlsplit(f"//{item.strip()}")
        try:
            host, port = one.hostname, one.port or 3306
        except ValueError:
            host = None
        if not host:
            raise ConfigurationError(
                f"{problem}; {item.strip()!r} is not host:port", setting=setting
            )
        params: dict[str, Any] = {
            "host": host,
            "port": port,
            "user": unquote(user or "root"),
            "password": unquote(password),
        }
        if database:
            params["database"] = database
        hosts.append(params)
    return hosts


def mysql_params(url: str, *, setting: str = "mysql_url") -> dict[str, Any]:
    """PyMySQL / python-mysql-replication connection keywords from a ``mysql://`` URL.

    For a URL naming several servers, the first one (see :func:`mysql_hosts`).
    """
    return mysql_hosts(url, setting=setting)[0]


def _writable_creator(hosts: list[dict[str, Any]], timeout: float) -> Any:
    """A DB-API connection factory that returns a connection to the first writable server."""

    def connect() -> Any:
        import pymysql

        errors: list[str] = []
        for params in hosts:
            where = f"{params['host']}:{params['port']}"
            try:
                conn = pymysql.connect(
                    **params,
                    charset="utf8mb4",
                    connect_timeout=max(1, int(timeout)),
                    read_timeout=max(1, int(timeout)) * 2,
                    write_timeout=max(1, int(timeout)) * 2,
                )
            except (pymysql.MySQLError, OSError) as exc:
                errors.append(f"{where}: {exc}")
                continue
            with conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.read_only")
                row = cur.fetchone()
            if row is not None and not int(row[0]):
                return conn
            conn.close()
            errors.append(f"{where}: read-only")
        raise pymysql.OperationalError(2003, "no writable server: " + "; ".join(errors))

    return connect


def sqlalchemy_url(url: str) -> str:
    """A SQLAlchemy URL from a setting: ``mysql://`` and ``mariadb://`` use the PyMySQL driver.

    Other URLs (``postgresql://``, ``sqlite:///path``, ``mysql+pymysql://``) pass unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("mysql", "mariadb"):
        return f"mysql+pymysql://{rest}"
    if sep and scheme == "mariadb+pymysql":
        return f"mysql+pymysql://{rest}"
    return url


def sql_engine(url: str, *, timeout: float = 5.0) -> Engine:
    """A SQLAlchemy engine with explicit connect/read timeouts and a pre-ping pool.

    Used where cachesync itself reads or writes SQL (re-reading rows for retries,
    the outbox table): a database outage must surface as an error within
    *timeout* seconds, never hang the sidecar or the retry consumer.
    """
    import sqlalchemy as sa

    scheme = url.partition("://")[0].split("+")[0]
    if scheme in ("mysql", "mariadb") and "," in urlsplit(url).netloc:
        return sa.create_engine(
            "mysql+pymysql://",
            creator=_writable_creator(mysql_hosts(url), timeout),
            pool_pre_ping=True,
            pool_recycle=3600,
        )
    target = sa.engine.make_url(sqlalchemy_url(url))
    connect_args: dict[str, Any] = {}
    if target.get_backend_name() == "mysql":
        seconds = max(1, int(timeout))
        connect_args = {
            "connect_timeout": seconds,
            "read_timeout": seconds * 2,
            "write_timeout": seconds * 2,
        }
    elif target.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": max(1, int(timeout))}
    elif target.get_backend_name() == "sqlite":
        connect_args = {"timeout": timeout}
    return sa.create_engine(
        target, connect_args=connect_args, pool_pre_ping=True, pool_recycle=3600
    )
