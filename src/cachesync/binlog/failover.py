"""Which of several servers the sidecar follows: the writable one that has the checkpoint.

``mysql_url`` may name the primary and its replicas
(``mysql://u:p@h1:3306,h2:3306/db``). When the stream from the current server
breaks, the sidecar asks every server (the current one first) and follows the
first that

* accepts writes (``@@read_only = 0``): after a failover only the promoted
  server does, and it is the one the application writes to; reading a replica
  that is still replicating would miss what the promoted server writes; and
* has the checkpoint's GTID state (its binlog covers every transaction the
  sidecar already handled): a server that lacks some would make the sidecar
  skip the changes made after them on the new primary, or stream from a
  position it never reached.

No server qualifying (promotion still in progress, or every server behind the
checkpoint) is a :class:`~cachesync.errors.TransientError` that names each
server and why; the sidecar says it and asks again after its backoff. A single
server in the URL is followed whatever its ``read_only``, so a sidecar can
read a replica's binlog to offload the primary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CacheSyncError, TransientError
from . import server
from .gtid import GtidState
from .positions import server_state

__all__ = ["choose", "describe"]

log = logging.getLogger("cachesync.binlog")


def describe(params: Mapping[str, Any]) -> str:
    """``host:port`` of a server's connection keywords (never the password)."""
    return f"{params.get('host')}:{params.get('port')}"


def choose(
    servers: Sequence[Mapping[str, Any]],
    wanted: GtidState | None,
    *,
    current: Mapping[str, Any] | None = None,
    timeout: float = 3.0,
) -> Mapping[str, Any]:
    """The server to follow (see the module docstring); *current* is asked first."""
    ordered = list(servers)
    if current is not None:
        ordered.sort(key=lambda p: describe(p) != describe(current))
    reasons: list[str] = []
    for params in ordered:
        where = describe(params)
        try:
            conn = server.connect(params, what="MySQL", connect_timeout=timeout)
        except CacheSyncError as exc:
            reasons.append(f"{where}: unreachable ({exc})")
            continue
        try:
            if server.read_only(conn):
                reasons.append(f"{where}: read-only")
                continue
            if wanted is not None:
                flavour = server.gtid_flavour(conn)
                if flavour != wanted.flavour:
                    reasons.append(f"{where}: no {wanted.flavour} GTIDs")
                    continue
                state = server_state(conn, flavour)
                if not state.covers(wanted):
                    reasons.append(f"{where}: at GTID state {state}, behind the checkpoint")
                    continue
        except CacheSyncError as exc:
            reasons.append(f"{where}: {exc}")
            continue
        finally:
            conn.close()
        if current is not None and describe(current) != where:
            log.warning(
                "cachesync: failover: following %s, writable and at the checkpoint's GTID state "
                "%s (%s)",
                where, wanted, "; ".join(reasons) or "the previous server is not asked",
            )  # fmt: skip
        return params
    raise TransientError(
        "no server to follow: none of "
        + ", ".join(describe(p) for p in ordered)
        + f" is writable with the checkpoint's GTID state {wanted}: "
        + "; ".join(reasons)
    )
