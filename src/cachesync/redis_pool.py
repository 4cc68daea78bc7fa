"""redis-py connection pools that wait for a free connection instead of refusing one.

redis-py's ``ConnectionPool`` opens at most ``max_connections`` (100 by
default in redis-py 8) and raises ``MaxConnectionsError`` ("Too many
connections") at the next simultaneous command. cachesync never lets a Redis
error reach the application, so that error turned into something quieter: a
read served from the database (1,000 simultaneous misses of one key loaded it
878 times, bench/reads.py) or a fast-path delete left to the binlog path.

redis-py's ``BlockingConnectionPool`` waits, but on a ``queue.Queue`` and a
``Condition`` at EVERY command: about 130 more Python opcodes per fast-path
delete, measured (bench/writepath.py's loops). These pools keep redis-py's own
code for every command and only wait when it refuses: the refusal is retried
with short, growing sleeps until ``timeout`` seconds have passed, then raised.
Waiting threads poll instead of being woken (a release would otherwise pay for
a notification at every command); the wait only happens beyond
``max_connections`` simultaneous commands, which the setting
``redis_max_connections`` sizes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["AsyncWaitingConnectionPool", "WaitingConnectionPool", "waiting_client"]

#: redis-py 6+; older versions raise a plain ConnectionError with the same text.
_MAX_CONNECTIONS_ERROR: type[Exception] | None = getattr(
    redis.exceptions, "MaxConnectionsError", None
)
_FIRST_SLEEP = 0.0005
_LONGEST_SLEEP = 0.01


def _exhausted(exc: BaseException) -> bool:
    """Did redis-py refuse a connection because every one is in use?"""
    if _MAX_CONNECTIONS_ERROR is not None and isinstance(exc, _MAX_CONNECTIONS_ERROR):
        return True
    return isinstance(exc, redis.ConnectionError) and str(exc) == "Too many connections"


def _pauses(timeout: float) -> Iterator[float]:
    """Sleeps between attempts, growing from half a millisecond, until *timeout* seconds passed."""
    deadline = time.monotonic() + timeout
    pause = _FIRST_SLEEP
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(pause * 2, _LONGEST_SLEEP)


def _next_pause(refusal: redis.ConnectionError, pauses: Iterator[float], pool: Any) -> float:
    """How long to sleep before asking *pool* again after *refusal*; re-raises what is not
    "every connection is in use", and gives up once the pool's ``timeout`` has passed."""
    if not _exhausted(refusal):
        raise refusal
    pause = next(pauses, None)
    if pause is None:
        raise redis.ConnectionError(
            f"no Redis connection came free within {pool.timeout} s: all {pool.max_connections} "
            "are in use (setting redis_max_connections)"
        ) from refusal
    return pause


class WaitingConnectionPool(redis.ConnectionPool):
    """A ``ConnectionPool`` whose ``get_connection`` waits up to *timeout* seconds when full."""

    def __init__(self, *args: Any, timeout: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        pauses: Iterator[float] | None = None  # made at the first refusal only
        while True:
            try:
                return super().get_connection(*args, **kwargs)
            except redis.ConnectionError as exc:
                if pauses is None:
                    pauses = _pauses(self.timeout)
                pause = _next_pause(exc, pauses, self)
            time.sleep(pause)


class AsyncWaitingConnectionPool(redis.asyncio.ConnectionPool):
    """The ``redis.asyncio`` twin of :class:`WaitingConnectionPool` (it sleeps without blocking)."""

    def __init__(self, *args: Any, timeout: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        pauses: Iterator[float] | None = None
        while True:
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except redis.ConnectionError as exc:
                if pauses is None:
                    pauses = _pauses(self.timeout)
                pause = _next_pause(exc, pauses, self)
            await asyncio.sleep(pause)


def waiting_client(
    url: str, settings: Settings, options: Mapping[str, Any], *, asynchronous: bool = False
) -> Any:
    """A single-node client on *url* (``redis.asyncio`` with *asynchronous*) whose pool waits.

    At most ``redis_max_connections`` connections, a command beyond them waiting up
    to ``redis_connect_timeout``; *options* are the connection's
    (:func:`cachesync.connections.redis_options`). Closing the client closes its
    pool, as with ``Redis.from_url``.
    """
    pool_class: Any = AsyncWaitingConnectionPool if asynchronous else WaitingConnectionPool
    client_class: Any = redis.asyncio.Redis if asynchronous else redis.Redis
    pool = pool_class.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_connect_timeout,
        retry=None,
        **options,
    )
    client = client_class(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client
