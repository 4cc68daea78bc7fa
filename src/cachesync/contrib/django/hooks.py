"""The Django fast path: model signals -> keys collected per transaction level -> deleted after commit.

How a change travels:

1. ``pre_save`` reads the row's BEFORE image from the database (see below);
   ``post_save``/``post_delete``/``m2m_changed`` hand ``(before, after)`` rows to
   :func:`collect`.
2. :func:`~.levels.collect` puts the keys into the current transaction level
   (:mod:`.levels`: savepoints merge or drop as in the SQLAlchemy hooks, keys go
   after the outermost commit, ``invalidates()`` intents into ONE outbox row per
   transaction), or deletes them right away in autocommit.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...config import get_settings
from ...fastpath import sync_enabled
from .levels import collect
from .tables import DjangoTable

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


def _active(table: DjangoTable, fast_path: bool) -> bool:
    # Intents go to the outbox even with the fast path off: they are a separate guarantee.
    return fast_path or table.needs_full_rows


#: ``django.db.connections``, imported at the first signal (this module loads before Django's
#: settings may exist); an ``import`` statement per signal cost about 2 us.
_connections: Any = None


def _connection(using: str) -> Any:
    global _connections
    if _connections is None:
        from django.db import connections

        _connections = connections
    return _connections[using]


# ----------------------------------------------------------------------------------------
# Signal receivers
# ----------------------------------------------------------------------------------------


def _pk_insert_forced(instance: Any) -> bool:
    # Mirrors Model._save_table: an adding instance whose pk has a default is INSERTed.
    if not instance._state.adding:
        return False  # every save of a loaded instance: no import, no field lookups
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
    fast_path = get_settings().fast_path
    for table in targets:
        if not (fast_path or table.needs_full_rows) or not table.row_attnames:
            continue  # inactive (_active), or nothing to read
        if table.keys_follow_pk:
            continue  # post_save takes the after image as the before image
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
    connection = _connection(using)
    fast_path = get_settings().fast_path
    for table in _targets.get(sender, ()):
        if not (fast_path or table.needs_full_rows):
            continue  # _active(), inline: asked per table per save
        after = table.instance_row(instance, connection)
        if created:
            before = None
        elif table.keys_follow_pk:
            before = after  # an UPDATE cannot change keys that name only the primary key
        else:
            before = befores.get(table.label)
            if before is _SAME:
                before = after
        collect(using, table, before, after, connection=connection)


def _pre_delete(sender: Any, instance: Any, using: str = "default", **kwargs: Any) -> None:
    if not (_enabled and sync_enabled()):
        return
    connection = _connection(using)
    fast_path = get_settings().fast_path
    # Read now: a deferred field cannot be loaded once the row is gone.
    instance.__dict__[_BEFORE_ATTR] = {
        table.label: table.instance_row(instance, connection)
        for table in _targets.get(sender, ())
        if _active(table, fast_path)
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
    if table is None or not _active(table, get_settings().fast_path):
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
        for sender, tables_of in targets.items()
        if not sender._meta.auto_created  # Django sends no save/delete signals for these
        for name in ("pre_save", "post_save", "pre_delete", "post_delete")
        # pre_save reads before images: a sender whose keys all follow its primary key
        # needs none, and a signal with no receiver costs Django almost nothing.
        if name != "pre_save" or not all(t.keys_follow_pk for t in tables_of)
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
