"""Read-through caching that cannot write a stale value after an invalidation.

The classic cache-aside race: reader A misses, reads the OLD row, a writer
commits and cachesync deletes the key (nothing there yet), then A writes the old
value, which stays until its TTL. Facebook's memcache leases close it; this is
the same idea on Redis with two small Lua scripts:

1. On a miss the reader stores a *lease marker* (a random token) IN the key.
2. It loads the value and writes it with compare-and-set: only if the key still
   holds its marker.

An invalidation is a plain ``UNLINK`` of the key, which also removes the marker,
so the stale write fails. Nothing else in cachesync needs to know about leases.
Concurrent misses collapse: a reader that finds someone else's marker waits for
the value instead of hitting the database too.

A hit is one plain ``GET`` (no script): a value that is not a marker is
exactly what the acquire script would have returned, and ``GET`` costs the
server and redis-py less than ``EVALSHA`` with its array reply. Only a miss or
a marker runs the acquire script, so a miss pays one more round trip.

:class:`Leases` runs on a redis-py client, :class:`AsyncLeases` on a
``redis.asyncio`` one with the same scripts, so a coroutine never blocks its
event loop on Redis. The model-level read API (:mod:`cachesync.reads`) is built
on these two; use them directly for keys the declarations do not name.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import DecodeError
from .keys import wire_key

__all__ = ["AsyncLeases", "Leases"]

T = TypeVar("T")
log = logging.getLogger("cachesync.leases")

_MARKER = b"\x00cachesync-lease:"

# KEYS[1] key; ARGV[1] marker; ARGV[2] lease ms.
# Returns {0, value} on a hit, {1} when this caller got the lease, {2} when another holds it.
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then return {2} end
  return {0, v}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
"""

# KEYS[1] key; ARGV[1] marker; ARGV[2] value; ARGV[3] ttl ms (0 = none). 1 if stored.
_FILL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], ARGV[2])
  end
  return 1
end
return 0
"""


@functools.cache
def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis
    from redis.exceptions import RedisClusterException

    # RedisClusterException: a Redis Cluster client that found no node to ask.
    return (redis.RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


class _Next(enum.Enum):
    """What a reader does after one look at the key (see :meth:`_LeaseConfig.step`)."""

    HIT = "hit"  # return the value
    LEASED = "leased"  # this reader holds the lease: load, then fill
    ACQUIRE = "acquire"  # nothing readable yet: run the acquire script
    WAIT = "wait"  # another reader holds the lease: sleep, acquire again
    LOAD = "load"  # load without caching (unreadable value, or the holder is too slow)


class _LeaseConfig:
    """What :class:`Leases` and :class:`AsyncLeases` share: TTL, lease length, serialisation,
    and the pure steps of a read (reply -> what next; value -> bytes to fill), so the sync
    and async readers differ only in how they wait for Redis."""

    def __init__(
        self,
        *,
        ttl: float | None,
        lease_ms: int,
        wait: float,
        dumps: Callable[[Any], bytes | str],
        loads: Callable[[bytes], Any],
        marker: bytes,
    ) -> None:
        if lease_ms <= 0:
            raise ValueError("lease_ms must be > 0")
        self.ttl_ms = int(ttl * 1000) if ttl else 0
        self.lease_ms = lease_ms
        self.wait = wait
        self.dumps = dumps
        self.loads = loads
        self.marker = marker

    def new_marker(self) -> bytes:
        return self.marker + secrets.token_hex(8).encode()

    def decode(self, key: str, data: bytes) -> tuple[bool, Any]:
        """``(True, value)``, or ``(False, None)`` for bytes this serialiser cannot read."""
        try:
            return True, self.loads(data)
        except (DecodeError, ValueError) as exc:
            log.warning("cachesync lease: %r holds a value that cannot be read (%s)", key, exc)
            return False, None

    def seen(self, key: str, data: bytes | None) -> tuple[_Next, Any]:
        """What a plain ``GET``'s *data* means: a readable value is a hit; nothing or a
        marker needs the acquire script; an unreadable value is loaded around, never
        overwritten (another writer put it there)."""
        if isinstance(data, str):  # a client made with decode_responses=True
            data = data.encode()
        if data is None or data.startswith(self.marker):
            return _Next.ACQUIRE, None
        ok, value = self.decode(key, data)
        return (_Next.HIT, value) if ok else (_Next.LOAD, None)

    def step(self, key: str, reply: list[Any], deadline: float) -> tuple[_Next, Any]:
        """What one reply of the acquire script means (``{0, value}``, ``{1}`` or ``{2}``)."""
        if reply[0] == 0:
            ok, value = self.decode(key, reply[1])
            return (_Next.HIT, value) if ok else (_Next.LOAD, None)
        if reply[0] == 1:
            return _Next.LEASED, None
        if time.monotonic() >= deadline:  # the holder is slow or dead: load uncached
            return _Next.LOAD, None
        return _Next.WAIT, None

    def fill_data(self, key: str, value: Any) -> bytes | str | None:
        """*value* serialised for the fill, or ``None`` (logged) when it cannot be stored."""
        try:
            return self.dumps(value)
        except TypeError as exc:  # the value cannot be stored: serve it, say why once per read
            log.error("cachesync lease: %r not cached: %s", key, exc)
            return None


class Leases(_LeaseConfig):
    """``leases.cached(key, loader)``: read-through with lease tokens and collapsed misses.

    *dumps*/*loads* serialise values (JSON by default); *marker* is the prefix of
    lease markers, which no serialised value may start with (the default one
    starts with a NUL byte, which neither JSON nor pickle ever does). *lease_ms*
    bounds how long a crashed loader can hold a key: after it, the marker
    expires and the next reader loads again; a reader waiting on another's lease
    waits at most that long, then loads without caching.
    """

    def __init__(
        self,
        client: Any,
        *,
        ttl: float | None = 300.0,
        lease_ms: int = 3000,
        wait: float = 0.02,
        dumps: Callable[[Any], bytes | str] = lambda v: json.dumps(v, separators=(",", ":")),
        loads: Callable[[bytes], Any] = json.loads,
        sleep: Callable[[float], None] = time.sleep,
        marker: bytes = _MARKER,
    ) -> None:
        super().__init__(
            ttl=ttl, lease_ms=lease_ms, wait=wait, dumps=dumps, loads=loads, marker=marker
        )
        self.client = client
        self.sleep = sleep
        self._acquire = client.register_script(_ACQUIRE)
        self._fill = client.register_script(_FILL)

    def cached(self, key: str, loader: Callable[[], T]) -> T:
        """The value of *key*, loading and caching it on a miss.

        A Redis failure never fails the read: the loader's value is returned
        uncached, after at most one Redis socket timeout.
        """
        errors = _redis_errors()
        wire = wire_key(key)
        marker = b""
        try:
            then, value = self.seen(key, self.client.get(wire))
            if then is _Next.HIT:
                return value  # type: ignore[no-any-return]
            if then is _Next.ACQUIRE:
                marker = self.new_marker()
                deadline = time.monotonic() + self.lease_ms / 1000
                while True:
                    reply = self._acquire(keys=[wire], args=[marker, self.lease_ms, self.marker])
                    then, value = self.step(key, reply, deadline)
                    if then is _Next.HIT:
                        return value  # type: ignore[no-any-return]
                    if then is not _Next.WAIT:
                        break
                    self.sleep(self.wait)
        except errors:
            then = _Next.LOAD  # Redis is down or frozen: serve the read from the loader
        value = loader()
        if then is not _Next.LEASED:
            return value
        data = self.fill_data(key, value)
        if data is None:
            return value
        try:
            self._fill(keys=[wire], args=[marker, data, self.ttl_ms])
        except errors as exc:
            # The marker expires by itself after lease_ms; the read still succeeds.
            log.warning("cachesync lease: could not fill %r: %s", key, exc)
        return value


class AsyncLeases(_LeaseConfig):
    """:class:`Leases` for asyncio on a ``redis.asyncio`` client: ``await leases.cached(key, loader)``.

    *loader* is a coroutine function. The same scripts, markers and guarantees
    as :class:`Leases`; waiting for another reader's lease uses ``asyncio.sleep``.
    """

    def __init__(
        self,
        client: Any,
        *,
        ttl: float | None = 300.0,
        lease_ms: int = 3000,
        wait: float = 0.02,
        dumps: Callable[[Any], bytes | str] = lambda v: json.dumps(v, separators=(",", ":")),
        loads: Callable[[bytes], Any] = json.loads,
        marker: bytes = _MARKER,
    ) -> None:
        super().__init__(
            ttl=ttl, lease_ms=lease_ms, wait=wait, dumps=dumps, loads=loads, marker=marker
        )
        self.client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._fill = client.register_script(_FILL)

    async def cached(self, key: str, loader: Callable[[], Awaitable[T]]) -> T:
        """The value of *key*, awaiting *loader* and caching its value on a miss."""
        errors = _redis_errors()
        wire = wire_key(key)
        marker = b""
        try:
            then, value = self.seen(key, await self.client.get(wire))
            if then is _Next.HIT:
                return value  # type: ignore[no-any-return]
            if then is _Next.ACQUIRE:
                marker = self.new_marker()
                deadline = time.monotonic() + self.lease_ms / 1000
                while True:
                    reply = await self._acquire(
                        keys=[wire], args=[marker, self.lease_ms, self.marker]
                    )
                    then, value = self.step(key, reply, deadline)
                    if then is _Next.HIT:
                        return value  # type: ignore[no-any-return]
                    if then is not _Next.WAIT:
                        break
                    await asyncio.sleep(self.wait)
        except errors:
            then = _Next.LOAD
        value = await loader()
        if then is not _Next.LEASED:
            return value
        data = self.fill_data(key, value)
        if data is None:
            return value
        try:
            await self._fill(keys=[wire], args=[marker, data, self.ttl_ms])
        except errors as exc:
            log.warning("cachesync lease: could not fill %r: %s", key, exc)
        return value
