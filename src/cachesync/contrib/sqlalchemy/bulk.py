"""ORM ``update()`` / ``delete()`` statements: the keys of the rows they touch.

``session.execute(update(User).where(User.karma < 0).values(banned=True))``
writes rows the session never loaded, so no flush event reports them. The
hooks learn them the plain way, on the statement's own connection, in the same
transaction:

1. ``SELECT <key columns> ... WHERE <the statement's criteria> FOR UPDATE`` (bulk
   "update by primary key" executemany: ``WHERE pk IN (<the parameters' keys>)``).
   The locking read sees what the statement will see (a plain read may see an
   older snapshot under REPEATABLE READ) and keeps those rows from changing
   before it runs;
2. the statement itself;
3. for an UPDATE, the same rows re-read by primary key: their AFTER images,
   whatever SQL expressions the statement used.

Where: the Core ``before_execute`` / ``after_execute`` events of every
``Engine``, for ORM-enabled UPDATE/DELETE statements on a connection an
installed session began a transaction on (:func:`session_began`, from the
session's ``after_begin``). Not ``do_orm_execute``: with a listener for it,
SQLAlchemy builds an ``ORMExecuteState`` and runs ``orm_pre_session_exec``
twice for EVERY ORM statement, SELECTs and the refresh of each expired instance
included (10-20 us each, measured on a refresh), while the Core events cost a
dispatch and one ``isinstance`` per statement. The flush's own UPDATEs are Core
statements (no ORM entity) and pass untouched, as do Core ``update(table)``
statements (no entity to name the model), as before.

Whatever cannot be known cheaply and exactly is left to the binlog path with a
DEBUG log line: statements over several tables, more than ``max_bulk_rows``
rows, an UPDATE that may change a primary key (no after image; the before keys
are still collected), an UPDATE whose ``RETURNING`` rows stream from a
server-side cursor (the re-read would need the busy connection).
Extra criteria SQLAlchemy adds at compile time (``with_loader_criteria``,
a single-table-inheritance discriminator) are not in the pre-select, which can
only make it select MORE rows: more keys deleted, never fewer.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Delete, Update
from sqlalchemy.sql.elements import BinaryExpression, BindParameter

from ...fastpath import sync_enabled
from ...transactions import Collected
from .declare import Declared, declared_for
from .images import collect_change, session_zone

__all__ = ["after_execute", "before_execute", "session_began"]

log = logging.getLogger("cachesync.contrib.sqlalchemy")

_PK = tuple[Any, ...]
_UNKNOWN = object()


def _left_to_binlog(declared: Declared | None, what: str, why: str) -> None:
    model = declared.spec.model if declared is not None else "?"
    log.debug("cachesync: %s on %s: %s; its keys are left to the binlog path", what, model, why)


def _set_names(statement: Update, parameters: Any, executemany: bool) -> set[str] | None:
    """Names (attribute, column key or column name) the UPDATE assigns; None if unknowable."""
    values: Any = getattr(statement, "_values", _UNKNOWN)  # no public accessor exists
    if values is _UNKNOWN:
        return None
    names: set[str] = set()
    for target in values or ():
        if isinstance(target, str):
            names.add(target)
        elif isinstance(target, ColumnElement):
            found = {n for n in (target.key, getattr(target, "name", None)) if isinstance(n, str)}
            if not found:
                return None
            names.update(found)
        else:
            return None
    if isinstance(parameters, Mapping) and not executemany:
        names.update(str(k) for k in parameters)
    return names




#: Connection -> (the installed session whose transaction began on it, its level lookup,
#: max_bulk_rows). Weak: an entry lives as long as the Connection the session checked out.
_sessions: weakref.WeakKeyDictionary[
    Connection, tuple[weakref.ref[Session], Callable[[Session], Collected], int]
] = weakref.WeakKeyDictionary()
#: Connection -> statements between their before_execute and after_execute (re-entrant:
#: the pre-read runs on the same connection).
_running: weakref.WeakKeyDictionary[Connection, list[_Pending]] = weakref.WeakKeyDictionary()


def session_began(
    session: Session,
    connection: Connection,
    level_of: Callable[[Session], Collected],
    max_rows: int,
) -> None:
    """*session*'s transaction runs on *connection*: track its ORM statements there."""
    _sessions[connection] = (weakref.ref(session), level_of, max_rows)


@dataclass
class _Pending:
    """A tracked statement between its two events: what the pre-read found."""

    statement: Update | Delete
    declared: Declared
    session: Session
    level_of: Callable[[Session], Collected]
    before: list[dict[str, Any]]
    executemany: bool
    parameters: Any
    #: What the pre-read selected (primary key first, labelled by attribute) and the
    #: primary key's columns: the after-image re-read selects the same.
    columns: list[Any]
    pk_columns: list[Any]


def before_execute(
    conn: Connection,
    clauseelement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
) -> None:
    """``before_execute`` of every engine: pre-read the rows of a tracked UPDATE/DELETE.

    Never raises: a failure leaves the statement's keys to the binlog path.
    """
    if not isinstance(clauseelement, (Update, Delete)):
        return  # every SELECT, INSERT and DDL: one isinstance
    try:
        pending = _prepare(conn, clauseelement, multiparams, params)
    except Exception:  # never stand in the way of the statement
        log.exception("cachesync: could not pre-read an ORM statement; the binlog path covers it")
        return
    if pending is not None:
        _running.setdefault(conn, []).append(pending)


def after_execute(
    conn: Connection,
    clauseelement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    result: Any,
) -> None:
    """``after_execute`` of every engine: collect the keys of a tracked statement that ran."""
    if not isinstance(clauseelement, (Update, Delete)):
        return
    running = _running.get(conn)
    if not running:
        return
    # The innermost tracked statement; entries above it belong to statements that
    # raised (no after_execute for them) and are dropped with their pre-reads.
    while running:
        pending = running.pop()
        if pending.statement is clauseelement:
            break
    else:
        return
    try:
        _finish(conn, pending, execution_options)
    except Exception:
        log.exception(
            "cachesync: could not collect the keys of an ORM statement on %s; the binlog "
            "path will delete them",
            pending.declared.spec.model,
        )


def _prepare(
    conn: Connection, statement: Update | Delete, multiparams: Any, params: Any
) -> _Pending | None:
    entry = _sessions.get(conn)
    if entry is None:
        return None
    mapper = statement._propagate_attrs.get("plugin_subject")
    if mapper is None:
        return None  # a Core statement: the flush's own UPDATEs, or update(table)
    session = entry[0]()
    if session is None or not sync_enabled() or session.get_transaction() is None:
        return None
    level_of, max_rows = entry[1], entry[2]
    what = "UPDATE" if isinstance(statement, Update) else "DELETE"
    declared = declared_for(mapper.class_)
    if declared is None or not declared.needed:
        return None
    table = declared.table
    if mapper.persist_selectable is not table:
        _left_to_binlog(declared, what, "the mapping spans several tables")
        return None
    spec = declared.spec
    pk_attrs = spec.primary_key
    read = list(dict.fromkeys([*pk_attrs, *declared.needed]))
    columns = [declared.columns[a].label(a) for a in read]
    pk_columns = [declared.columns[a] for a in pk_attrs]
    criteria: list[Any] = []
    executemany = bool(multiparams) and len(multiparams) > 1
    if executemany:
        # "Update by primary key": one WHERE pk = :bind, a parameter set per row.
        keys = _executemany_keys(statement, pk_columns, multiparams)
        if keys is None:
            _left_to_binlog(declared, what, "executemany parameters without the primary key")
            return None
        criteria.append(_pk_in(pk_columns, keys))
    elif statement.whereclause is not None:
        criteria.append(statement.whereclause)
    query = select(*columns).where(*criteria).with_for_update().limit(max_rows + 1)
    if set(query.get_final_froms()) != {table}:
        _left_to_binlog(declared, what, "its criteria read other tables")
        return None
    parameters = multiparams[0] if multiparams and not executemany else params
    bind_params = parameters if isinstance(parameters, Mapping) and not executemany else None
    try:
        before = [dict(r) for r in conn.execute(query, bind_params or {}).mappings()]
        # Ask the session time zone (TIMESTAMP columns) now: after the statement a
        # streaming result may hold the connection.
        session_zone(declared, conn)
    except Exception as exc:  # never stand in the way of the statement
        _left_to_binlog(declared, what, f"the pre-read failed ({type(exc).__name__}: {exc})")
        return None
    if len(before) > max_rows:
        _left_to_binlog(declared, what, f"it touches more than max_bulk_rows={max_rows} rows")
        return None
    return _Pending(
        statement, declared, session, level_of, before, executemany, parameters, columns, pk_columns
    )


def _executemany_keys(
    statement: Update | Delete, pk_columns: Sequence[Any], multiparams: Sequence[Any]
) -> list[_PK] | None:
    """The primary keys an executemany by primary key names, or None when unknowable.

    Its WHERE clause compares each primary key column with a bound parameter
    (``users.id = :users_id``); each parameter set holds that parameter's value.
    """
    where = statement.whereclause
    if where is None:
        return None
    binds: dict[Any, str] = {}
    for element in visitors.iterate(where):
        if (
            isinstance(element, BinaryExpression)
            and isinstance(element.right, BindParameter)
            and isinstance(element.left, ColumnElement)
        ):
            for column in pk_columns:
                if element.left.shares_lineage(column):
                    binds[column] = element.right.key
    if len(binds) != len(pk_columns):
        return None
    try:
        return [tuple(p[binds[c]] for c in pk_columns) for p in multiparams]
    except (KeyError, TypeError):
        return None


def _finish(conn: Connection, pending: _Pending, execution_options: Any) -> None:
    """Collect the keys of *pending*, which ran: before images, and re-read after images."""
    declared, statement, before = pending.declared, pending.statement, pending.before
    level = pending.level_of(pending.session)
    dialect = conn.dialect
    if isinstance(statement, Delete):
        for row in before:
            collect_change(level, declared, row, None, dialect=dialect, connection=conn)
        return
    what = "UPDATE"
    pk_attrs = declared.spec.primary_key
    columns, pk_columns = pending.columns, pending.pk_columns
    after: dict[_PK, dict[str, Any]] = {}
    options = execution_options or {}
    # A server-side cursor (stream_results / yield_per) still holds the connection:
    # a second query on it now would break the caller's RETURNING rows.
    streaming = bool(options.get("stream_results") or options.get("yield_per"))
    set_names = _set_names(statement, pending.parameters, pending.executemany)
    pk_names = {*pk_attrs, *(c.key for c in pk_columns), *(c.name for c in pk_columns)}
    if set_names is None or set_names & pk_names:
        _left_to_binlog(declared, what, "it may change primary keys, so after images are unknown")
    elif streaming:
        _left_to_binlog(declared, what, "its result streams from the server; no re-read")
    elif before:
        keys = [tuple(r[a] for a in pk_attrs) for r in before]
        reread = select(*columns).where(_pk_in(pk_columns, keys))
        try:
            for r in conn.execute(reread).mappings():
                row = dict(r)
                after[tuple(row[a] for a in pk_attrs)] = row
        except Exception as exc:  # the before keys are still collected
            _left_to_binlog(declared, what, f"the re-read failed ({type(exc).__name__}: {exc})")
    for row in before:
        new = after.get(tuple(row[a] for a in pk_attrs))
        if new is None:
            # Only the old keys are known; invalidates() must not mistake this for a delete.
            collect_change(
                level, declared, row, None, dialect=dialect, connection=conn, intents=False
            )
        else:
            collect_change(level, declared, row, new, dialect=dialect, connection=conn)


def _pk_in(pk_columns: Sequence[Any], keys: Sequence[_PK]) -> Any:
    if not keys:
        return false()
    if len(pk_columns) == 1:
        return pk_columns[0].in_([k[0] for k in keys])
    if len(keys) <= 50:
        return or_(*(and_(*(c == v for c, v in zip(pk_columns, k, strict=True))) for k in keys))
    return tuple_(*pk_columns).in_(keys)
