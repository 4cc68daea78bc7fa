"""Django transactions as :class:`cachesync.transactions.LevelStack` levels, and the outbox row.

:func:`collect` takes the keys of one row change from the signal receivers
(:mod:`.hooks`) and puts them where they belong:

* Inside ``transaction.atomic``: into the current level of the connection's
  stack (the outermost transaction, or the innermost savepoint), with the
  merge/drop/deliver rules both ORMs share. Django has no savepoint events; it
  promises that an ``on_commit`` callback is discarded when its savepoint rolls
  back and runs after the OUTERMOST commit otherwise. So each level that holds
  keys registers ONE ``transaction.on_commit`` marker at its own depth, and the
  next change reads the fate of the levels Django closed meanwhile from their
  markers: pending means released (merge into the parent), gone means rolled
  back (drop). No monkey-patching. A transaction without savepoints deletes all
  of its keys in one Redis call; a released savepoint not yet merged when the
  transaction commits (no change came after it) is delivered by its own
  marker, in one more call.
* Outside a transaction (autocommit): deleted right after the write.

Keys that ``invalidates()`` declarations add (intents) are also written to the
outbox table in the same transaction: ONE row per outermost transaction holding
the intents of every level that commits, the row the SQLAlchemy hooks write.
Django has no before-commit hook, so the row is written eagerly: inserted at the
first intent, rewritten when new ones appear; a savepoint that rolls back takes
its insert or rewrite with it (the database undoes them) and its intents leave
the stack. (In autocommit mode a ``save()`` has already committed when
``post_save`` runs, so that row follows the change instead of sharing its
transaction; use ``transaction.atomic`` or ``ATOMIC_REQUESTS`` where intents must
be atomic. Deletes and many-to-many changes always run inside Django's own atomic
block.)
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...actions import DeleteKeys
from ...binding import collect_change
from ...codec import encode_actions
from ...fastpath import fast_path
from ...outbox.schema import KIND_INTENT, OUTBOX_TABLE
from ...spec import Row
from ...transactions import Collected, Level, LevelStack
from .tables import DjangoTable

__all__ = ["collect", "pending_keys"]

log = logging.getLogger("cachesync.contrib.django")

#: A level's token: its savepoint id, None for the outermost transaction.
_Token = str | None


class _Marker:
    """The ``on_commit`` callback of one level: Django's word on whether the level committed.

    Django has no savepoint events; what it does promise is that an
    ``on_commit`` callback registered inside a savepoint is discarded when that
    savepoint (or any around it) rolls back, and runs after the outermost commit
    otherwise. So each level that holds keys has a marker registered at its own
    depth: a marker still pending means "not rolled back". When it runs, it
    delivers the keys of the level it stands for (``level``, which moves to the
    parent when a released level is merged into a parent without a marker).
    """

    __slots__ = ("level",)

    def __init__(self, level: Level[_Token]) -> None:
        self.level = level

    def __call__(self) -> None:
        collected = self.level.collected
        keys = collected.all_keys()
        collected.clear()  # each level is delivered once, whichever marker runs
        if keys:
            fast_path.deliver(keys)


@dataclass
class _Transaction:
    """The :class:`LevelStack` of one connection and the marker of each level that has one."""

    stack: LevelStack[_Token] = field(default_factory=LevelStack)
    markers: dict[Level[_Token], _Marker] = field(default_factory=dict)


_transactions: weakref.WeakKeyDictionary[Any, _Transaction] = weakref.WeakKeyDictionary()


def _pending(connection: Any, marker: _Marker) -> bool:
    """Is *marker* still registered with *connection* (its level not rolled back)?

    Reads ``connection.run_on_commit`` for the marker itself, whatever the shape
    of its entries (``(sids, func)`` before Django 4.2, ``(sids, func, robust)``
    since); never the identity of the list, which Django rebuilds at will.
    """
    return any(item is marker for entry in connection.run_on_commit for item in entry)


def _path(connection: Any) -> list[_Token]:
    # savepoint_ids holds None for atomic(savepoint=False) blocks: not a level of their own.
    return [None, *(sid for sid in connection.savepoint_ids if sid)]


def _reconcile(connection: Any, txn: _Transaction) -> None:
    """Bring the stack up to date with the levels Django closed since the last change.

    A level whose marker is gone rolled back (or belongs to a transaction that
    has ended): it is dropped with everything inside it, and with it the outbox
    row it inserted, which the database dropped too. A level that is no longer
    open but whose marker is pending was released: it merges into its parent,
    which takes over the marker if it has none (the marker's savepoint ids cover
    the parent's, so it answers for the parent from now on).
    """
    stack = txn.stack
    for level in stack.levels:
        marker = txn.markers.get(level)
        if marker is not None and not _pending(connection, marker):
            stack.rollback(level.token)
            break
    path = _path(connection)
    while stack.levels:
        depth = len(stack) - 1
        top = stack.levels[-1]
        if depth < len(path) and path[depth] == top.token:
            break
        parent = stack.parent(top.token)
        if parent is None:  # the outermost level is always on the path
            stack.rollback(top.token)
            break
        marker = txn.markers.pop(top, None)
        stack.commit(top.token)
        if marker is not None and parent not in txn.markers:
            marker.level = parent
            txn.markers[parent] = marker
    live = set(stack.levels)
    for level in [lv for lv in txn.markers if lv not in live]:
        del txn.markers[level]


def _level(connection: Any) -> tuple[_Transaction, Level[_Token]]:
    """The current level of *connection*'s transaction, its marker registered."""
    from django.db import transaction

    txn = _transactions.get(connection)
    if txn is None:
        txn = _transactions[connection] = _Transaction()
    _reconcile(connection, txn)
    level = txn.stack.enter(_path(connection))
    if level not in txn.markers:
        marker = txn.markers[level] = _Marker(level)
        transaction.on_commit(marker, using=connection.alias, robust=True)
    return txn, level


def _write_outbox(connection: Any, row_id: int | None, keys: Iterable[str]) -> int:
    """Insert the transaction's intent row, or rewrite row *row_id*; returns the row's id.

    Rewriting a row that is gone (its savepoint rolled back under us) inserts it again.
    """
    payload = encode_actions([DeleteKeys(tuple(keys))])
    table = connection.ops.quote_name(OUTBOX_TABLE)
    with connection.cursor() as cursor:
        if row_id is not None:
            cursor.execute(f"UPDATE {table} SET payload = %s WHERE id = %s", [payload, row_id])
            if cursor.rowcount != 0:
                return row_id
        sql = f"INSERT INTO {table} (kind, payload) VALUES (%s, %s)"
        if connection.features.can_return_columns_from_insert:
            # PostgreSQL has no lastrowid; MariaDB >= 10.5 and SQLite >= 3.35 speak it too.
            cursor.execute(f"{sql} RETURNING {connection.ops.quote_name('id')}",
                           [KIND_INTENT, payload])  # fmt: skip
            return int(cursor.fetchone()[0])
        cursor.execute(sql, [KIND_INTENT, payload])
        return int(connection.ops.last_insert_id(cursor, OUTBOX_TABLE, "id"))


def _record_intents(connection: Any, txn: _Transaction, level: Level[_Token]) -> None:
    """(Re)write the transaction's ONE outbox row with the intents of every live level.

    The same outcome as the SQLAlchemy hooks' single row written just before
    the outermost commit, which Django has no hook for: the row is written
    eagerly instead. Inserted inside a savepoint, it is that level's and goes
    if the savepoint rolls back; a rewrite inside a savepoint that rolls back is
    undone by the database, leaving the intents of the levels that remain.
    """
    owner = txn.stack.outbox_row()
    intents = txn.stack.pending().intents
    if owner is None:
        level.outbox_row = _write_outbox(connection, None, intents)
        return
    row_id = _write_outbox(connection, owner.outbox_row, intents)
    if row_id != owner.outbox_row:  # inserted again, at this level
        owner.outbox_row = None
        level.outbox_row = row_id


def pending_keys(connection: Any) -> set[str]:
    """Keys the open transaction of *connection* will delete at commit (its own writes)."""
    txn = _transactions.get(connection)
    if txn is None or not connection.in_atomic_block:
        return set()
    _reconcile(connection, txn)
    return set(txn.stack.pending().all_keys())


def collect(
    using: str,
    table: DjangoTable,
    before: Row | None,
    after: Row | None,
    *,
    connection: Any = None,
) -> None:
    """Collect the keys of one row change made on database *using* (its *connection*, if known).

    In a transaction: into the current level (delivered after the outermost
    commit). In autocommit: delivered now. In manual transaction management
    (``set_autocommit(False)``), where Django has no commit hook, only the intents
    are written; the binlog sidecar deletes the keys after the commit.
    """
    if connection is None:  # asked once per change: connections[] is a thread-local lookup
        from django.db import connections

        connection = connections[using]
    if connection.in_atomic_block:
        txn, level = _level(connection)
        known = len(level.collected.intents)
        collect_change(level.collected, table.spec, table.row_attnames, before, after)
        if len(level.collected.intents) != known:
            _record_intents(connection, txn, level)
        return
    collected = Collected()
    collect_change(collected, table.spec, table.row_attnames, before, after)
    if collected.intents:
        _write_outbox(connection, None, collected.intents)
    # get_autocommit() is ensure_connection() (behind Django's async-safety check) then
    # this attribute; after the write that sent this signal the connection is open.
    autocommit = (
        connection.autocommit if connection.connection is not None else connection.get_autocommit()
    )
    if autocommit:
        fast_path.deliver(collected.all_keys())
    else:
        log.debug(
            "%s: manual transaction management, no after-commit hook; the binlog sidecar "
            "deletes %d key(s)",
            table.label,
            len(collected.keys),
        )
