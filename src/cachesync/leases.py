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
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .keys import wire_key

__all__ = ["Leases"]

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


class Leases:
    """``leases.cached(key, loader)``: read-through with lease tokens and collapsed misses.

    *dumps*/*loads* serialise values (JSON by default; a serialised value must not
    start with a NUL byte). *lease_ms* bounds how long a crashed loader can hold a
    key: after it, the marker expires and the next reader loads again.
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
    ) -> None:
        self.client = client
        self.ttl_ms = int(ttl * 1000) if ttl else 0
        self.lease_ms = lease_ms
        self.wait = wait
        self.dumps = dumps
        self.loads = loads
        self.sleep = sleep
        self._acquire = client.register_script(_ACQUIRE)
        self._fill = client.register_script(_FILL)

    def cached(self, key: str, loader: Callable[[], T]) -> T:
        """The value of *key*, loading and caching it on a miss.

        A Redis failure never fails the read: the loader's value is returned uncached.
        """
        import redis
        from redis.exceptions import RedisClusterException

        # RedisClusterException: a Redis Cluster client that found no node to ask.
        errors = (redis.RedisError, RedisClusterException, OSError)
        marker = _MARKER + secrets.token_hex(8).encode()
        deadline = time.monotonic() + self.lease_ms / 1000
        try:
            while True:
                reply = self._acquire(keys=[wire_key(key)], args=[marker, self.lease_ms, _MARKER])
                if reply[0] == 0:
                    return self.loads(reply[1])  # type: ignore[no-any-return]
                if reply[0] == 1:
                    break
                if time.monotonic() >= deadline:  # the holder is slow or dead: load uncached
                    return loader()
                self.sleep(self.wait)
        except errors:
            return loader()
        value = loader()
        try:
            self._fill(keys=[wire_key(key)], args=[marker, self.dumps(value), self.ttl_ms])
        except errors as exc:
            # The marker expires by itself after lease_ms; the read still succeeds.
            log.warning("cachesync lease: could not fill %r: %s", key, exc)
        return value
