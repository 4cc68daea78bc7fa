"""Rows of every column type, shared by the per-ORM "every type renders alike" tests.

One table (:data:`DDL`), one application-side value strategy per column
(:func:`row_values`), one key template per column, and the read path's view of a
row: a fresh ``SELECT`` through PyMySQL in the application's session time zone,
brought to stored forms by :func:`cachesync.values.stored` with the column types
``information_schema`` reports (:func:`select_row`). Both ORM tests write these
rows, read their changes back from the binlog with the sidecar's
:class:`~cachesync.binlog.source.BinlogSource`, and compare keys and documents.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from cachesync import values
from cachesync.values import ColumnType

#: The application's session time zone in these tests (TIMESTAMP wall times).
SESSION_ZONE = "+08:00"
ZONE = dt.timezone(dt.timedelta(hours=8))

#: Column -> SQL type; ``id`` is the primary key. MariaDB 10.11 (INET4/INET6/UUID).
COLUMNS: dict[str, str] = {
    "f": "FLOAT",
    "d": "DOUBLE",
    "dec": "DECIMAL(40,20)",
    "j": "JSON",
    "b": "BIT(8)",
    "s": "SET('x','a','c')",
    "e": "ENUM('x','a','c')",
    "dt6": "DATETIME(6)",
    "ts": "TIMESTAMP(6) NULL DEFAULT NULL",
    "tm": "TIME(6)",
    "zd": "DATE",
    "zdt": "DATETIME",
    "ip6": "INET6",
    "ip4": "INET4",
    "u": "UUID",
    "lat": "VARCHAR(40) CHARACTER SET latin1",
    "u8": "VARCHAR(40) CHARACTER SET utf8mb4",
    "bin": "VARBINARY(16)",
    "bn": "BINARY(4)",
}


def ddl(table: str) -> str:
    body = ", ".join(f"`{c}` {t}{'' if 'NULL' in t else ' NULL'}" for c, t in COLUMNS.items())
    return (
        f"CREATE TABLE `{table}` (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, {body}) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )


def key_templates(prefix: str) -> list[str]:
    """One key per column (a NULL value skips its key on every path), plus the id."""
    return [f"{prefix}:{{id}}", *(f"{prefix}:{c}:{{{c}}}" for c in COLUMNS)]


# ------------------------------------------------------------------------------------------
# Application-side values
# ------------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
#: What MySQL's latin1 can hold: every byte, as MySQL decodes it.
_LATIN1 = values.mysql_latin1(bytes(range(1, 256)))
_TIME_LIMIT = dt.timedelta(hours=838, minutes=59, seconds=59)
_DAY = dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999)


def _float32_literal(mantissa: int, exponent: int) -> float:
    # At most 6 significant digits: MariaDB's text protocol prints FLOAT with 6,
    # so what an ORM loads back is the value it wrote (README: FLOAT).
    return float(f"{mantissa}e{exponent}")


def _wall(utc: dt.datetime) -> dt.datetime:
    """The session's wall time (+08:00) of a UTC instant: what the application holds."""
    return utc.replace(tzinfo=dt.UTC).astimezone(ZONE).replace(tzinfo=None)


def row_values(
    *, timestamps_aware: bool = False, times_of_day: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """Values an application assigns, one per column (None: NULL).

    ``timestamps_aware`` gives TIMESTAMP values as aware UTC datetimes (Django,
    ``USE_TZ=True``) instead of the session's naive wall time (SQLAlchemy);
    ``times_of_day`` keeps TIME within a day (Django cannot load others).
    """

    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.none() | strategy

    instants = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2038, 1, 18))
    if timestamps_aware:
        timestamp = instants.map(lambda t: t.replace(tzinfo=dt.UTC))
    else:
        timestamp = instants.map(_wall) | st.just("0000-00-00 00:00:00")
    address6 = st.ip_addresses(v=6).flatmap(lambda a: st.sampled_from([str(a), a.exploded]))
    return st.fixed_dictionaries(
        {
            "f": maybe(st.builds(_float32_literal, st.integers(-999_999, 999_999), st.integers(-30, 30))),
            "d": maybe(st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)),
            "dec": maybe(
                st.decimals(
                    min_value=Decimal(-(10**19)), max_value=Decimal(10**19), places=22,
                    allow_nan=False, allow_infinity=False,
                )
            ),
            "j": maybe(_JSON),
            "b": maybe(st.integers(0, 255)),
            "s": maybe(st.sets(st.sampled_from(["x", "a", "c"]))),
            "e": maybe(st.sampled_from(["x", "a", "c"])),
            "dt6": maybe(st.datetimes(min_value=dt.datetime(1000, 1, 1))),
            "ts": maybe(timestamp),
            "tm": maybe(
                st.timedeltas(min_value=dt.timedelta(0), max_value=_DAY)
                if times_of_day
                else st.timedeltas(min_value=-_TIME_LIMIT, max_value=_TIME_LIMIT)
            ),
            "zd": maybe(
                st.dates(min_value=dt.date(1000, 1, 1))
                | st.sampled_from(["0000-00-00", "2024-00-00", "2024-05-00"])
            ),
            "zdt": maybe(
                st.datetimes(min_value=dt.datetime(1000, 1, 1))
                | st.sampled_from(["0000-00-00 00:00:00", "2024-00-10 10:11:12"])
            ),
            "ip6": maybe(address6),
            "ip4": maybe(st.ip_addresses(v=4).map(str)),
            "u": maybe((st.uuids(version=1) | st.uuids(version=4)).flatmap(lambda u: st.sampled_from([str(u), str(u).upper()]))),
            "lat": maybe(st.text(st.sampled_from(_LATIN1), max_size=20)),
            "u8": maybe(_TEXT),
            "bin": maybe(st.binary(max_size=16)),
            "bn": maybe(st.binary(max_size=4)),
        }
    )  # fmt: skip


# ------------------------------------------------------------------------------------------
# The read path: a fresh SELECT
# ------------------------------------------------------------------------------------------


def column_types(cur: Any, schema: str, table: str) -> dict[str, ColumnType]:
    """``{column: ColumnType}`` from information_schema (JSON by its ``json_valid`` check)."""
    cur.execute(
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (schema, table),
    )
    types = {str(c): values.column_type(str(t)) for c, t in cur.fetchall()}
    cur.execute(
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
        (schema, table),
    )
    for (clause,) in cur.fetchall():
        column = str(clause).removeprefix("json_valid(`").removesuffix("`)")
        if column in types:
            types[column] = ColumnType("json")
    return types


def select_row(
    cur: Any, table: str, id: int, types: Mapping[str, ColumnType]
) -> dict[str, Any] | None:
    """The row as a fresh SELECT shows it, in stored forms (``None``: no such row).

    *cur* is a PyMySQL cursor whose session time zone is :data:`SESSION_ZONE`:
    its TIMESTAMPs are wall times of that zone, which :func:`values.stored` turns to UTC.
    """
    cur.execute(f"SELECT * FROM `{table}` WHERE id = %s", (id,))
    row = cur.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cur.description]
    return {
        n: values.stored(types[n], v, zone=ZONE if types[n].kind == "timestamp" else None)
        for n, v in zip(names, row, strict=True)
    }


def document_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The document body of every column, as :func:`projection.document` renders it."""
    return {c: values.json_value(row[c]) for c in COLUMNS}


@dataclass
class Step:
    """One ORM write: its op, the fast-path batches its commit delivered, the row after it."""

    op: Any
    batches: list[list[str]]
    row: dict[str, Any] | None


def compare(
    orm: str,
    steps: list[Step],
    registry: Any,
    types: Mapping[str, ColumnType],
    read: Any,
    params: dict[str, Any],
    table: str,
    start: tuple[str, int],
    spec: Any = None,
) -> None:
    """Keys and documents of every logged step equal those planned from the binlog.

    An UPDATE that leaves the stored row as it was is not logged by MariaDB (and
    plans nothing): it is dropped, whatever the fast path delivered for it.
    """
    from cachesync.actions import DeleteKeys, IndexDoc
    from cachesync.changes import Op
    from cachesync.planning import plan

    logged: list[Step] = []
    for index, step in enumerate(steps):
        if step.op is Op.UPDATE and step.row == steps[index - 1].row:
            continue
        assert len(step.batches) == 1, (step, "one fast-path batch per commit")
        logged.append(step)
    spec = spec or registry.tables()[0]
    changes = read(params, registry, table, start, len(logged))
    assert [c.op for c in changes] == [s.op for s in logged]
    keys = documents = 0
    kinds: set[str] = set()
    for step, change in zip(logged, changes, strict=True):
        actions = plan(change, spec)
        planned = [k for a in actions if isinstance(a, DeleteKeys) for k in a.keys]
        assert sorted(step.batches[0]) == sorted(planned), (change, step.batches[0], planned)
        keys += len(planned)
        for image in (change.before, change.after):
            kinds.update(types[c].kind for c, v in (image or {}).items() if v is not None)
        docs = [a.document for a in actions if isinstance(a, IndexDoc)]
        if step.row is not None:
            assert docs == [document_of(step.row)], (change, docs, step.row)
            documents += 1
    rows = sum(1 for s in steps if s.op is Op.INSERT)
    print(
        f"\n{orm}: {rows} generated rows, {len(changes)} binlog changes, {keys} keys and "
        f"{documents} documents compared over {len(kinds)} column kinds: {sorted(kinds)}"
    )
    assert kinds >= {t.kind for t in types.values()}, "a column type was never generated"


def binlog_changes(
    params: dict[str, Any], registry: Any, table: str, start: tuple[str, int], count: int
) -> list[Any]:
    """The next *count* changes of *table*, read by the sidecar's BinlogSource."""
    from cachesync.binlog.checkpoint import ResumePoint
    from cachesync.binlog.source import BinlogSource

    changes: list[Any] = []
    source = BinlogSource(
        params, registry, server_id=random.randint(90_001, 120_000), start=ResumePoint(*start)
    )
    deadline = time.monotonic() + 90
    try:
        while len(changes) < count and time.monotonic() < deadline:
            changes.extend(c for c in source.poll(500, 1.0) if c.table == table)
    finally:
        source.close()
    return changes
