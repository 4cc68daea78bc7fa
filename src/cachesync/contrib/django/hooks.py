"""The Django fast path: model signals -> keys collected per transaction level -> deleted after commit.

How a change travels:

1. ``pre_save`` reads the row's BEFORE image from the database (see below);
   ``post_save``/``post_delete``/``m2m_changed`` hand ``(before, after)`` rows to
   :func:`collect`.
2. Inside ``transaction.atomic`` the keys go into a :class:`cachesync.fastpath.Collected`
   for the current transaction level (the innermost savepoint), and that level
   registers ONE ``transaction.on_commit`` callback. Django keeps callbacks of
   released savepoints, drops those of rolled-back savepoints and of rolled-back
   transactions, and runs the survivors after the OUTERMOST commit: exactly the
   semantics cachesync needs, with no monkey-patching. A transaction without
   savepoints therefore deletes all of its keys in one Redis call; each savepoint
   level that changed something adds one more call.
3. Outside a transaction (autocommit) the keys are deleted right after the write.

Keys that ``invalidates()`` declarations add (intents) are also written to the
outbox table in the same transaction: one row per transaction level, inserted at
the first intent and updated when new keys appear, so a rolled-back savepoint
takes its row with it. (In autocommit mode a ``save()`` has already committed
when ``post_save`` runs, so that row follows the change instead of sharing its
transaction; use ``transaction.atomic`` or ``ATOMIC_REQUESTS`` where intents must
be atomic. Deletes and many-to-many changes always run inside Django's own atomic
block.)

Before images. An update must delete the keys of the OLD values too (a renamed
``username`` drops ``user:by-name:<old>``). ``pre_save`` loads the key columns
of the row by primary key (every column when the model declares
``invalidates``) in one indexed query. This is correct whatever happened to the
instance in memory (constructed with an explicit pk, loaded long ago, loaded with
``only()``, refreshed) and costs one primary-key read per ORM update of a synced
model only; ``save(update_fields=...)`` that touches no key field skips it, and
inserts never pay it. Snapshotting values in ``post_init`` was rejected: it taxes
every instance of every query, misses instances built with an explicit pk and
deferred fields, and is still only as fresh as the load. A concurrent writer can
change the row between the read and the update; the binlog sidecar, which sees
the true before image, covers that case. Deletes use the instance's values
(``pre_delete``, which also loads deferred fields while the row still exists):
cascades are fetched fresh by Django's collector, so an extra read per deleted
row would buy nothing.

Not covered here, left to the binlog sidecar: ``QuerySet.update()``,
``bulk_update()``, ``bulk_create()`` and raw SQL send no signals, and the rows
they touch are not known without extra queries. ``QuerySet.delete()`` IS covered
(Django's collector sends delete signals once a model has listeners).

Signals are connected per sender (the model, its proxies, and multi-table
children whose saves write the parent's table), never globally, so that models
without declarations keep Django's fast-delete path.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...actions import DeleteKeys
from ...codec import encode_actions
from ...config import get_settings
from ...fastpath import Collected, fast_path, sync_enabled
from ...outbox.schema import KIND_INTENT, OUTBOX_TABLE
from ...spec import Row
from .declarations import DjangoTable

__all__ = ["collect", "connect", "disconnect", "set_enabled"]

log = logging.getLogger("cachesync.contrib.django")

_BEFORE_ATTR = "_cachesync_before"
_SAME = object()  # the update touched no key field: before == after

_lock = threading.RLock()
_enabled = True
#: sender model -> tables its writes change (its own, and concrete parents' in MTI)
_targets: dict[Any, tuple[DjangoTable, ...]] = {}
#: through model -> its table, for m2m_changed
_through: dict[Any, DjangoTable] = {}
_connected: set[tuple[Any, str]] = set()


def set_enabled(enabled: bool) -> None:
    """Switch every hook on or off (off while ``settings.CACHESYNC`` is invalid)."""
    global _enabled
    _enabled = enabled


def _active(table: DjangoTable) -> bool:
    # Intents go to the outbox even with the fast path off: they are a separate guarantee.
    return get_settings().fast_path or table.needs_full_rows


# ----------------------------------------------------------------------------------------
# Transaction levels
# ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Level:
    """Keys collected at one transaction level of one connection, delivered on commit."""

    alias: str
    collected: Collected = field(default_factory=Collected)
    outbox_id: int | None = None
    hooks: Any = None  # the connection's run_on_commit list when we registered
    callback: Any = None

    def deliver(self) -> None:
        _forget(self)
        fast_path.deliver(self.collected.all_keys())


# connection -> {innermost savepoint id (None: no savepoint): level}
_levels: weakref.WeakKeyDictionary[Any, dict[str | None, _Level]] = weakref.WeakKeyDictionary()


def _forget(level: _Level) -> None:
    from django.db import connections

    levels = _levels.get(connections[level.alias])
    if levels is not None:
        for sid, candidate in list(levels.items()):
            if candidate is level:
                del levels[sid]


def _registered(connection: Any, level: _Level) -> bool:
    """Is *level*'s on_commit callback still pending on *connection*?

    Django rebuilds ``run_on_commit`` as a new list whenever it drops callbacks
    (savepoint rollback, rollback, commit), so an unchanged list object means the
    callback is still there; otherwise look for it.
    """
    hooks = connection.run_on_commit
    if hooks is level.hooks:
        return True
    for entry in hooks:
        if entry[1] is level.callback:
            level.hooks = hooks
            return True
    return False


def _level(connection: Any) -> _Level:
    from django.db import transaction

    sid = next((s for s in reversed(connection.savepoint_ids) if s), None)
    levels = _levels.setdefault(connection, {})
    level = levels.get(sid)
    if level is not None and _registered(connection, level):
        return level
    for old_sid, old in list(levels.items()):  # drop levels of rolled-back savepoints
        if not _registered(connection, old):
            del levels[old_sid]
    level = _Level(connection.alias)
    level.callback = level.deliver
    transaction.on_commit(level.callback, using=connection.alias, robust=True)
    level.hooks = connection.run_on_commit
    levels[sid] = level
    return level


def _write_outbox(connection: Any, row_id: int | None, keys: Iterable[str]) -> int | None:
    """Insert (or rewrite) this level's intent row, in the current transaction."""
    payload = encode_actions([DeleteKeys(tuple(keys))])
    table = connection.ops.quote_name(OUTBOX_TABLE)
    with connection.cursor() as cursor:
        if row_id is None:
            sql = f"INSERT INTO {table} (kind, payload) VALUES (%s, %s)"
            if connection.features.can_return_columns_from_insert:
                # PostgreSQL has no lastrowid; MariaDB >= 10.5 and SQLite >= 3.35 speak it too.
                cursor.execute(f"{sql} RETURNING {connection.ops.quote_name('id')}",
                               [KIND_INTENT, payload])  # fmt: skip
                return int(cursor.fetchone()[0])
            cursor.execute(sql, [KIND_INTENT, payload])
            return int(connection.ops.last_insert_id(cursor, OUTBOX_TABLE, "id"))
        cursor.execute(f"UPDATE {table} SET payload = %s WHERE id = %s", [payload, row_id])
        return row_id


def collect(using: str, table: DjangoTable, before: Row | None, after: Row | None) -> None:
    """Collect the keys of one row change made on database *using*.

    In a transaction: into the current level (delivered after the outermost
    commit). In autocommit: delivered now. In manual transaction management
    (``set_autocommit(False)``), where Django has no commit hook, only the intents
    are written; the binlog sidecar deletes the keys after the commit.
    """
    from django.db import connections

    connection = connections[using]
    if connection.in_atomic_block:
        level = _level(connection)
        known = len(level.collected.intents)
        level.collected.add_change(table.spec, before, after)
        if len(level.collected.intents) != known:
            level.outbox_id = _write_outbox(connection, level.outbox_id, level.collected.intents)
        return
    collected = Collected()
    collected.add_change(table.spec, before, after)
    if collected.intents:
        _write_outbox(connection, None, collected.intents)
    if connection.get_autocommit():
        fast_path.deliver(collected.all_keys())
    else:
        log.debug(
            "%s: manual transaction management, no after-commit hook; the binlog sidecar "
            "deletes %d key(s)",
            table.label,
            len(collected.keys),
        )


# ----------------------------------------------------------------------------------------
# Signal receivers
# ----------------------------------------------------------------------------------------


def _pk_insert_forced(instance: Any) -> bool:
    # Mirrors Model._save_table: an adding instance whose pk has a default is INSERTed.
    from django.db.models import NOT_PROVIDED

    pk = instance._meta.pk
    has_default = pk.default is not NOT_PROVIDED and pk.default is not None
    has_db_default = getattr(pk, "db_default", NOT_PROVIDED) is not NOT_PROVIDED
    return bool(instance._state.adding and (has_default or has_db_default))


def _pre_save(
    sender: Any, instance: Any, raw: bool = False, using: str = "default", **kwargs: Any
) -> None:
    if not (_enabled and sync_enabled()):
        return
    targets = _targets.get(sender, ())
    befores: dict[str, Any] = {}
    update_fields = kwargs.get("update_fields")
    pk = instance.pk
    if pk is None or _pk_insert_forced(instance):
        instance.__dict__.pop(_BEFORE_ATTR, None)
        return
    for table in targets:
        if not _active(table) or not table.row_attnames:
            continue
        if (
            update_fields is not None
            and not table.needs_full_rows
            and table.key_names.isdisjoint(update_fields)
        ):
            befores[table.label] = _SAME
            continue
        rows = table.fetch_rows(using, pk=pk)
        befores[table.label] = rows[0] if rows else None
    instance.__dict__[_BEFORE_ATTR] = befores


def _post_save(
    sender: Any, instance: Any, created: bool = False, using: str = "default", **kwargs: Any
) -> None:
    befores = instance.__dict__.pop(_BEFORE_ATTR, None) or {}
    if not (_enabled and sync_enabled()):
        return
    from django.db import connections

    connection = connections[using]
    for table in _targets.get(sender, ()):
        if not _active(table):
            continue
        after = table.instance_row(instance, connection)
        before = None if created else befores.get(table.label)
        if before is _SAME:
            before = after
        collect(using, table, before, after)


def _pre_delete(sender: Any, instance: Any, using: str = "default", **kwargs: Any) -> None:
    if not (_enabled and sync_enabled()):
        return
    from django.db import connections

    connection = connections[using]
    # Read now: a deferred field cannot be loaded once the row is gone.
    instance.__dict__[_BEFORE_ATTR] = {
        table.label: table.instance_row(instance, connection)
        for table in _targets.get(sender, ())
        if _active(table)
    }


def _post_delete(sender: Any, instance: Any, using: str = "default", **kwargs: Any) -> None:
    befores = instance.__dict__.pop(_BEFORE_ATTR, None) or {}
    if not (_enabled and sync_enabled()):
        return
    for table in _targets.get(sender, ()):
        before = befores.get(table.label)
        if before is not None:
            collect(using, table, before, None)


@dataclass(frozen=True)
class _M2M:
    source: str  # through FK attname pointing at the signal's instance
    target: str  # through FK attname pointing at the objects in pk_set
    source_value: str  # attname on the instance that the source FK references
    symmetrical: bool


_m2m_cache: dict[tuple[Any, Any, bool], _M2M | None] = {}


def _m2m_shape(through: Any, instance_model: Any, model: Any, reverse: bool) -> _M2M | None:
    key = (through, instance_model, reverse)
    if key in _m2m_cache:
        return _m2m_cache[key]
    owner = model if reverse else instance_model
    shape = None
    for m2m in owner._meta.many_to_many:
        if m2m.remote_field.through is not through:
            continue
        source_name, target_name = m2m.m2m_field_name(), m2m.m2m_reverse_field_name()
        if reverse:
            source_name, target_name = target_name, source_name
        source_fk = through._meta.get_field(source_name)
        target_fk = through._meta.get_field(target_name)
        shape = _M2M(
            source=source_fk.attname,
            target=target_fk.attname,
            source_value=source_fk.target_field.attname,
            symmetrical=bool(m2m.remote_field.symmetrical) and not reverse,
        )
        break
    _m2m_cache[key] = shape
    return shape


def _m2m_rows(
    table: DjangoTable, shape: _M2M, instance: Any, pk_set: Any, using: str
) -> list[dict[str, Any]]:
    from django.db.models import Q

    value = getattr(instance, shape.source_value)
    forward = Q(**{shape.source: value})
    if pk_set is not None:
        forward &= Q(**{f"{shape.target}__in": list(pk_set)})
    if shape.symmetrical:  # Django writes mirror rows without a signal of their own
        mirror = Q(**{shape.target: value})
        if pk_set is not None:
            mirror &= Q(**{f"{shape.source}__in": list(pk_set)})
        forward |= mirror
    from django.db import connections

    query = table.model._base_manager.using(using).filter(forward).values(*table.row_attnames)
    connection = connections[using]
    return [table.normalise(r, connection) for r in query]


def _m2m_changed(
    sender: Any,
    instance: Any,
    action: str,
    reverse: bool,
    model: Any,
    pk_set: Any,
    using: str = "default",
    **kwargs: Any,
) -> None:
    if not (_enabled and sync_enabled()):
        return
    table = _through.get(sender)
    if table is None or not _active(table):
        return
    auto = bool(sender._meta.auto_created)
    if action == "post_add":
        removing = False
    elif action in ("pre_remove", "pre_clear") and auto:
        # A custom through model's rows are deleted through Django's collector, which
        # sends post_delete for each of them; only auto-created ones need this.
        removing = True
    else:
        return
    if pk_set is not None and not pk_set:
        return
    shape = _m2m_shape(sender, type(instance)._meta.concrete_model, model, reverse)
    if shape is None:
        log.warning("%s: cannot tell which m2m relation changed; left to the binlog", table.label)
        return
    for row in _m2m_rows(table, shape, instance, pk_set, using):
        collect(using, table, row if removing else None, None if removing else row)


# ----------------------------------------------------------------------------------------
# Wiring
# ----------------------------------------------------------------------------------------


def _senders(tables: Mapping[Any, DjangoTable]) -> dict[Any, tuple[DjangoTable, ...]]:
    from django.apps import apps

    senders: dict[Any, tuple[DjangoTable, ...]] = {}
    for model in apps.get_models(include_auto_created=True):
        concrete = model._meta.concrete_model
        chain = [concrete, *concrete._meta.get_parent_list()]
        found = tuple(tables[m] for m in chain if m in tables)
        if found:
            senders[model] = found
    for model in tables:  # models outside the app registry (tests, dynamic models)
        senders.setdefault(model, (tables[model],))
    return senders


def connect(tables: Mapping[Any, DjangoTable]) -> None:
    """(Re)connect the receivers for exactly the senders that *tables* make relevant.

    The new sender maps are built aside and swapped in, so a signal arriving
    meanwhile sees the old or the new mapping, never an empty one.
    """
    global _targets, _through
    receivers = _receivers()
    targets = _senders(tables)
    through = {m: t for m, t in tables.items() if m._meta.auto_created or _is_through(m)}
    wanted = {
        (sender, name)
        for sender in targets
        if not sender._meta.auto_created  # Django sends no save/delete signals for these
        for name in ("pre_save", "post_save", "pre_delete", "post_delete")
    }
    wanted |= {(model, "m2m_changed") for model in through}
    with _lock:
        for sender, name in wanted - _connected:
            signal, receiver = receivers[name]
            signal.connect(receiver, sender=sender, weak=False, dispatch_uid=_uid(name))
        _targets, _through = targets, through
        for sender, name in _connected - wanted:
            receivers[name][0].disconnect(sender=sender, dispatch_uid=_uid(name))
        _connected.clear()
        _connected.update(wanted)
        _m2m_cache.clear()


def _receivers() -> dict[str, tuple[Any, Any]]:
    from django.db.models import signals

    return {
        "pre_save": (signals.pre_save, _pre_save),
        "post_save": (signals.post_save, _post_save),
        "pre_delete": (signals.pre_delete, _pre_delete),
        "post_delete": (signals.post_delete, _post_delete),
        "m2m_changed": (signals.m2m_changed, _m2m_changed),
    }


def _uid(name: str) -> str:
    return f"cachesync.contrib.django.{name}"


def _is_through(model: Any) -> bool:
    from django.apps import apps

    for other in apps.get_models():
        for m2m in other._meta.local_many_to_many:
            if m2m.remote_field.through is model:
                return True
    return False


def disconnect() -> None:
    """Disconnect every receiver this module connected."""
    global _targets, _through
    receivers = _receivers()
    with _lock:
        for sender, name in _connected:
            receivers[name][0].disconnect(sender=sender, dispatch_uid=_uid(name))
        _connected.clear()
        _targets, _through = {}, {}
        _m2m_cache.clear()
