"""Deleting cache keys in as few round trips as Redis allows.

Measured on the project's machine (see SERVICES.md): one UNLINK per key 13.7k
keys/s, a pipeline of single-key UNLINKs 232k keys/s, one multi-key UNLINK of
1000 keys 1.09M keys/s. So a batch is one pipeline of multi-key UNLINKs of at
most ``chunk`` keys each, and on Redis Cluster one UNLINK per hash slot.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..errors import TransientError
from ..keys import wire_key

__all__ = ["RedisSink"]


class RedisSink:
    """The :class:`~cachesync.sinks.base.KeySink` of Redis: multi-key ``UNLINK``, one round trip per batch.

    redis-py errors become :class:`TransientError`; ``delete`` either deletes
    every key or raises.
    """

    def __init__(self, client: Any, *, cluster: bool | None = None, chunk: int = 1000) -> None:
        from redis.cluster import RedisCluster

        self.client = client
        self.cluster = isinstance(client, RedisCluster) if cluster is None else cluster
        self.chunk = chunk

    def _groups(self, keys: Sequence[str]) -> list[list[bytes]]:
        wire = [wire_key(k) for k in keys]
        if not self.cluster:
            return [wire[i : i + self.chunk] for i in range(0, len(wire), self.chunk)]
        from redis.crc import key_slot

        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for key in wire:
            by_slot[key_slot(key)].append(key)
        return [
            group[i : i + self.chunk]
            for group in by_slot.values()
            for i in range(0, len(group), self.chunk)
        ]

    def delete(self, keys: Sequence[str]) -> int:
        """Delete *keys*; return how many existed. Raises :class:`TransientError` on failure."""
        if not keys:
            return 0
        import redis

        groups = self._groups(keys)
        try:
            if len(groups) == 1:
                return int(self.client.unlink(*groups[0]))
            pipe = self.client.pipeline(transaction=False)
            for group in groups:
                # execute_command, not pipe.unlink: redis-py's cluster pipeline refuses a
                # multi-key unlink even when every key is in one slot, as each group is.
                pipe.execute_command("UNLINK", *group)
            return sum(int(n) for n in pipe.execute())
        except (redis.RedisError, OSError) as exc:
            raise TransientError(
                f"Redis UNLINK of {len(keys)} key(s) failed: {type(exc).__name__}: {exc}",
                keys=len(keys),
            ) from exc

    def purge(self, pattern: str) -> int:
        """``SCAN MATCH`` *pattern* on every primary, ``UNLINK`` each page of matches.

        Matches are deleted page by page (at most ``chunk`` keys per multi-key
        UNLINK, grouped by hash slot on a cluster), so memory stays bounded
        however many keys match. Raises :class:`TransientError` if the walk broke.
        """
        import redis

        deleted = 0
        match = wire_key(pattern)
        try:
            if self.cluster:
                scanners = [node.redis_connection for node in self.client.get_primaries()]
            else:
                scanners = [self.client]
            for scanner in scanners:
                cursor: int = 0
                while True:
                    cursor, found = scanner.scan(cursor, match=match, count=self.chunk)
                    if found:
                        deleted += self.delete([_text(k) for k in found])
                    if not cursor:
                        break
        except (redis.RedisError, OSError) as exc:
            raise TransientError(
                f"Redis SCAN MATCH {pattern!r} failed after deleting {deleted} key(s): "
                f"{type(exc).__name__}: {exc}",
                pattern=pattern,
            ) from exc
        return deleted

    def ping(self) -> bool:
        import redis

        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False


def _text(key: bytes | str) -> str:
    """A scanned key as the text :func:`wire_key` turns back into the same bytes."""
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
