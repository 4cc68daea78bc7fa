"""ORM ``update()`` / ``delete()`` statements: the keys of the rows they touch.

``session.execute(update(User).where(User.karma < 0).values(banned=True))``
writes rows the session never loaded, so no flush event reports them. Through
``do_orm_execute`` the hooks learn them the plain way, in the same transaction:

1. ``SELECT <key columns> ... WHERE <the statement's criteria> FOR UPDATE`` (bulk
   "update by primary key" executemany: ``WHERE pk IN (<the parameters' keys>)``).
   The locking read sees what the statement will see (a plain read may see an
   older snapshot under REPEATABLE READ) and keeps those rows from changing
   before it runs;
2. the statement itself;
3. for an UPDATE, the same rows re-read by primary key: their AFTER images,
   whatever SQL expressions the statement used.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select, tuple_
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.dml import Delete, Update

from ...transactions import Collected
from .declare import Declared, declared_for
from .images import collect_change, session_zone

__all__ = ["execute_tracked"]

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


def execute_tracked(
    state: ORMExecuteState,
    level_of: Callable[[Session], Collected],
    max_rows: int,
) -> Result[Any] | None:
    """Run an ORM UPDATE/DELETE with its affected rows' keys collected; None if not handled.

    Returning None lets SQLAlchemy run the statement as usual (not handled).
    Errors of the statement itself propagate unchanged.
    """
    statement = state.statement
    what = "UPDATE" if state.is_update else "DELETE"
    if not isinstance(statement, (Update, Delete)):
        return None
    mapper = state.bind_mapper
    declared = declared_for(mapper.class_) if mapper is not None else None
    if declared is None or not declared.needed or mapper is None:
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
    if statement.whereclause is not None:
        criteria.append(statement.whereclause)
    params: Any = state.parameters
    executemany = state.is_executemany
    if executemany:
        try:
            keys = [tuple(p[a] for a in pk_attrs) for p in params]
        except (KeyError, TypeError):
            _left_to_binlog(declared, what, "executemany parameters without the primary key")
            return None
        criteria.append(_pk_in(pk_columns, keys))
    query = select(*columns).where(*criteria).with_for_update().limit(max_rows + 1)
    if set(query.get_final_froms()) != {table}:
        _left_to_binlog(declared, what, "its criteria read other tables")
        return None
    session = state.session
    bind_params = params if isinstance(params, Mapping) else None
    try:
        connection = session.connection(bind_arguments=state.bind_arguments)
        before = [dict(r) for r in connection.execute(query, bind_params).mappings()]
        # Ask the session time zone (TIMESTAMP columns) now: after the statement a
        # streaming result may hold the connection.
        session_zone(declared, connection)
    except Exception as exc:  # never stand in the way of the statement
        _left_to_binlog(declared, what, f"the pre-read failed ({type(exc).__name__}: {exc})")
        return None
    if len(before) > max_rows:
        _left_to_binlog(declared, what, f"it touches more than max_bulk_rows={max_rows} rows")
        return None

    result = state.invoke_statement()

    level = level_of(session)
    dialect = connection.dialect
    if isinstance(statement, Delete):
        for row in before:
            collect_change(level, declared, row, None, dialect=dialect, connection=connection)
        return result
    after: dict[_PK, dict[str, Any]] = {}
    options = state.execution_options
    # A server-side cursor (stream_results / yield_per) still holds the connection:
    # a second query on it now would break the caller's RETURNING rows.
    streaming = bool(options.get("stream_results") or options.get("yield_per"))
    set_names = _set_names(statement, params, executemany)
    pk_names = {*pk_attrs, *(c.key for c in pk_columns), *(c.name for c in pk_columns)}
    if set_names is None or set_names & pk_names:
        _left_to_binlog(declared, what, "it may change primary keys, so after images are unknown")
    elif streaming:
        _left_to_binlog(declared, what, "its result streams from the server; no re-read")
    elif before:
        keys = [tuple(r[a] for a in pk_attrs) for r in before]
        reread = select(*columns).where(_pk_in(pk_columns, keys))
        try:
            for r in connection.execute(reread).mappings():
                row = dict(r)
                after[tuple(row[a] for a in pk_attrs)] = row
        except Exception as exc:  # the before keys are still collected
            _left_to_binlog(declared, what, f"the re-read failed ({type(exc).__name__}: {exc})")
    for row in before:
        new = after.get(tuple(row[a] for a in pk_attrs))
        if new is None:
            # Only the old keys are known; invalidates() must not mistake this for a delete.
            collect_change(
                level, declared, row, None, dialect=dialect, connection=connection, intents=False
            )
        else:
            collect_change(level, declared, row, new, dialect=dialect, connection=connection)
    return result


def _pk_in(pk_columns: Sequence[Any], keys: Sequence[_PK]) -> Any:
    if not keys:
        return false()
    if len(pk_columns) == 1:
        return pk_columns[0].in_([k[0] for k in keys])
    if len(keys) <= 50:
        return or_(*(and_(*(c == v for c, v in zip(pk_columns, k, strict=True))) for k in keys))
    return tuple_(*pk_columns).in_(keys)
