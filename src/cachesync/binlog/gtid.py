"""GTID states: what a server (or a checkpoint) has applied, independent of binlog file names.

A file name and offset mean something on one server only: a promoted replica
writes the same transactions into differently named files at different
offsets. A GTID names the transaction itself, and a replica with
``log_slave_updates`` keeps the primary's GTIDs. So the checkpoint records the
GTID state *before* the transaction in progress, and a (re)connect finds that
place in whichever server it talks to (:func:`locate`).

Two flavours, one interface (:class:`GtidState`):

* **MariaDB** (always on): ``domain-server-seq`` per replication domain, as in
  ``@@gtid_binlog_pos`` (``0-1-12,1-2-5``). A transaction is in the state when
  its domain's sequence number is at or below the state's.
* **MySQL** with ``gtid_mode=ON`` (written from the MySQL manual and
  python-mysql-replication's ``GtidSet`` tests; no MySQL 8 server was available
  here): GTID sets, ``uuid:1-100:105,uuid2:1-5`` as in ``@@gtid_executed``.

:attr:`GtidState.weight` is a number that grows by at least one with every
transaction added, whatever the server: MariaDB's sum of the per-domain
sequence numbers, MySQL's count of transactions. It is what the Elasticsearch
external version of a change is made of (:class:`~cachesync.changes.GtidPosition`).
"""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import DecodeError

__all__ = ["FLAVOURS", "GtidState", "MariaDBGtidState", "MySQLGtidState", "parse_state"]

_MARIADB_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class GtidState(ABC):
    """An immutable set of applied transactions, in the notation of its server flavour."""

    flavour: ClassVar[str]

    @abstractmethod
    def contains(self, gtid: str) -> bool:
        """Whether the transaction *gtid* (``0-1-12`` / ``uuid:12``) is in the state."""

    @abstractmethod
    def add(self, gtid: str) -> GtidState:
        """The state with transaction *gtid* applied too."""

    @abstractmethod
    def covers(self, other: GtidState) -> bool:
        """Whether every transaction of *other* is in this state (a server that "has" it)."""

    @property
    @abstractmethod
    def weight(self) -> int:
        """A non-negative integer that grows by at least one with each transaction added."""

    @abstractmethod
    def encode(self) -> str:
        """The server's own notation (what ``@@gtid_binlog_pos`` / ``@@gtid_executed`` show)."""

    def __str__(self) -> str:
        return self.encode() or "(empty)"


@dataclass(frozen=True)
class MariaDBGtidState(GtidState):
    """``domain -> (server_id, seq)``: the last transaction of each replication domain."""

    domains: Mapping[int, tuple[int, int]]
    flavour: ClassVar[str] = "mariadb"

    @classmethod
    def parse(cls, text: str) -> MariaDBGtidState:
        domains: dict[int, tuple[int, int]] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = _MARIADB_GTID.match(part)
            if match is None:
                raise DecodeError(f"not a MariaDB GTID (domain-server-seq): {part!r:.80}")
            domain, server, seq = (int(g) for g in match.groups())
            if domain in domains:
                raise DecodeError(f"MariaDB GTID state {text!r:.200} names domain {domain} twice")
            domains[domain] = (server, seq)
        return cls(domains)

    @staticmethod
    def _split(gtid: str) -> tuple[int, int, int]:
        match = _MARIADB_GTID.match(gtid)
        if match is None:
            raise DecodeError(f"not a MariaDB GTID (domain-server-seq): {gtid!r:.80}")
        domain, server, seq = (int(g) for g in match.groups())
        return domain, server, seq

    def contains(self, gtid: str) -> bool:
        domain, _server, seq = self._split(gtid)
        last = self.domains.get(domain)
        return last is not None and seq <= last[1]

    def add(self, gtid: str) -> MariaDBGtidState:
        domain, server, seq = self._split(gtid)
        domains = dict(self.domains)
        domains[domain] = (server, seq)
        return MariaDBGtidState(domains)

    def covers(self, other: GtidState) -> bool:
        if not isinstance(other, MariaDBGtidState):
            return False
        return all(
            domain in self.domains and self.domains[domain][1] >= seq
            for domain, (_server, seq) in other.domains.items()
        )

    @property
    def weight(self) -> int:
        return sum(seq for _server, seq in self.domains.values())

    def encode(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))

    def __hash__(self) -> int:
        return hash(self.encode())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MariaDBGtidState) and dict(self.domains) == dict(other.domains)


@dataclass(frozen=True)
class MySQLGtidState(GtidState):
    """``server_uuid -> intervals``: MySQL's executed GTID set (``gtid_mode=ON``).

    Intervals are half-open ``(start, stop)`` pairs, sorted and merged, as
    MySQL keeps them (the text form shows them closed: ``1-100``).
    """

    sets: Mapping[str, tuple[tuple[int, int], ...]]
    flavour: ClassVar[str] = "mysql"

    @classmethod
    def parse(cls, text: str) -> MySQLGtidState:
        sets: dict[str, list[tuple[int, int]]] = {}
        for part in filter(None, (p.strip() for p in text.replace("\n", "").split(","))):
            sid, *ranges = part.split(":")
            try:
                sid = str(uuid.UUID(sid))
                for item in ranges:
                    start, _, stop = item.partition("-")
                    first, last = int(start), int(stop or start)
                    if first < 1 or last < first:
                        raise ValueError(item)
                    sets.setdefault(sid, []).append((first, last + 1))
            except ValueError:
                raise DecodeError(f"not a MySQL GTID set: {part!r:.120}") from None
        return cls({sid: _merge(intervals) for sid, intervals in sets.items()})

    @staticmethod
    def _split(gtid: str) -> tuple[str, int]:
        sid, _, gno = gtid.rpartition(":")
        try:
            return str(uuid.UUID(sid)), int(gno)
        except ValueError:
            raise DecodeError(f"not a MySQL GTID (uuid:number): {gtid!r:.80}") from None

    def contains(self, gtid: str) -> bool:
        sid, gno = self._split(gtid)
        return any(start <= gno < stop for start, stop in self.sets.get(sid, ()))

    def add(self, gtid: str) -> MySQLGtidState:
        sid, gno = self._split(gtid)
        sets = dict(self.sets)
        sets[sid] = _merge([*sets.get(sid, ()), (gno, gno + 1)])
        return MySQLGtidState(sets)

    def covers(self, other: GtidState) -> bool:
        if not isinstance(other, MySQLGtidState):
            return False
        for sid, intervals in other.sets.items():
            mine = self.sets.get(sid, ())
            for start, stop in intervals:
                if not any(a <= start and stop <= b for a, b in mine):
                    return False
        return True

    @property
    def weight(self) -> int:
        return sum(stop - start for intervals in self.sets.values() for start, stop in intervals)

    def encode(self) -> str:
        return ",".join(
            sid + "".join(f":{a}" if b == a + 1 else f":{a}-{b - 1}" for a, b in intervals)
            for sid, intervals in sorted(self.sets.items())
        )

    def __hash__(self) -> int:
        return hash(self.encode())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MySQLGtidState) and self.encode() == other.encode()


def _merge(
    intervals: list[tuple[int, int]] | tuple[tuple[int, int], ...],
) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return tuple(merged)


FLAVOURS: Mapping[str, Any] = {"mariadb": MariaDBGtidState, "mysql": MySQLGtidState}


def parse_state(flavour: str, text: str) -> GtidState:
    """The state *text* in the notation of *flavour* (``mariadb`` / ``mysql``)."""
    cls = FLAVOURS.get(flavour)
    if cls is None:
        raise DecodeError(f"unknown GTID flavour {flavour!r}")
    state: GtidState = cls.parse(text)
    return state
