"""The read path renders every column type as the binlog path does.

Generated rows of every type (:mod:`tests.support.typed_rows`, FLOAT with all
of float32's digits this time) are written in a +08:00 session and read back
from the binlog with :class:`BinlogSource`. For the same rows, every reader of
the read path, each on a connection whose session zone is +08:00:

* the retry path's and the cascades' :class:`SqlRowReader` (through :class:`Refresher`),
* the sidecar's :class:`MySQLRowReader` (partial row images),
* ``reindex`` (documents in the ES-API server) and ``verify`` (nothing stale),

yields keys and documents equal to those planned from the binlog, and leaves
the connection's own session zone as it found it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Double,
    Engine,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import UserDefinedType

from cachesync import Projection, Settings, Sync, resolve
from cachesync.actions import DeleteKeys, IndexDoc
from cachesync.binlog import server
from cachesync.binlog.reindex import reindex
from cachesync.binlog.rowreader import MySQLRowReader
from cachesync.changes import Op, RowChange
from cachesync.connections import elasticsearch_client, mysql_params, sqlalchemy_url
from cachesync.planning import plan
from cachesync.registry import Registry
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import SearchSink
from cachesync.verify import table_rows, verify_index
from tests.support import typed_rows

pytestmark = pytest.mark.services

ZONE_INIT = f"SET SESSION time_zone = '{typed_rows.SESSION_ZONE}'"


class Raw(UserDefinedType[Any]):
    """A column type SQLAlchemy passes through untouched (TIME beyond a day, INET6, UUID)."""

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **kw: Any) -> str:
        return self.spec


def typed_table(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("f", Float),
        Column("d", Double),
        Column("dec", Numeric(40, 20)),
        Column("j", JSON),
        Column("b", mysql.BIT(8)),
        Column("s", mysql.SET("x", "a", "c")),
        Column("e", mysql.ENUM("x", "a", "c")),
        Column("dt6", mysql.DATETIME(fsp=6)),
        Column("ts", mysql.TIMESTAMP(fsp=6)),
        Column("tm", Raw("TIME(6)")),
        Column("zd", Date),
        Column("zdt", DateTime),
        Column("ip6", Raw("INET6")),
        Column("ip4", Raw("INET4")),
        Column("u", Raw("UUID")),
        Column("lat", mysql.VARCHAR(40, charset="latin1")),
        Column("u8", String(40)),
        Column("bin", mysql.VARBINARY(16)),
        Column("bn", mysql.BINARY(4)),
    )


#: Every float32 (not only the 6 digits MariaDB's text protocol prints): the
#: read path must widen FLOAT to see what the binlog carries.
FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@pytest.fixture
def zoned_engine(mysql_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(mysql_url))

    @event.listens_for(engine, "connect")
    def session_zone(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(ZONE_INIT)

    yield engine
    engine.dispose()


class RecordingSink(SearchSink):
    """The real sink, remembering what it was asked to write."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.sent: list[tuple[str, Any]] = []

    def apply(self, actions: Any) -> Any:
        self.sent += [(a.doc_id, a.document) for a in actions if isinstance(a, IndexDoc)]
        return super().apply(actions)


def _close(stored: Any, sent: Any) -> bool:
    """Equal, but for doubles within a relative 1e-15 (the emulator's last-place error)."""
    if isinstance(sent, float) and isinstance(stored, float):
        return bool(stored == pytest.approx(sent, rel=1e-15))
    if isinstance(sent, dict) and isinstance(stored, dict):
        return sent.keys() == stored.keys() and all(_close(stored[k], sent[k]) for k in sent)
    if isinstance(sent, list) and isinstance(stored, list):
        return len(sent) == len(stored) and all(map(_close, stored, sent))
    return bool(stored == sent)


def _zone(cursor: Any) -> str:
    cursor.execute("SELECT @@session.time_zone")
    return str(cursor.fetchone()[0])


def test_every_type_reads_back_as_the_binlog_renders_it(
    zoned_engine: Engine, mysql_url: str, es_url: str
) -> None:
    params = mysql_params(mysql_url)
    run = uuid.uuid4().hex[:8]
    name = f"readpath_{run}"
    index = f"readpath-{run}"
    table = typed_table(name)
    registry = Registry()
    spec = registry.add(
        resolve(
            "ReadPath",
            Sync(
                keys=typed_rows.key_templates(f"rp:{run}"),
                search=Projection(index=index, fields=list(typed_rows.COLUMNS)),
            ),
            table=name,
            columns={c: c for c in ["id", *typed_rows.COLUMNS]},
            primary_key=["id"],
        )
    )
    with zoned_engine.begin() as conn:
        conn.execute(text(typed_rows.ddl(name)))
    admin = server.connect(params)
    start = server.master_status(admin)
    ids = iter(range(1, 10**6))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(row=typed_rows.row_values(), f=st.none() | FLOAT32)
    def write(row: dict[str, Any], f: float | None) -> None:
        with zoned_engine.begin() as conn:
            conn.execute(table.insert(), [{**row, "f": f, "id": next(ids)}])

    es = elasticsearch_client(Settings(es_url=es_url))
    reader = pymysql.connect(**params, autocommit=True, init_command=ZONE_INIT)
    partial = MySQLRowReader({**params, "init_command": ZONE_INIT})
    try:
        write()
        with reader.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{name}`")
            count = int(cur.fetchone()[0])
        changes = typed_rows.binlog_changes(params, registry, name, start, count)
        assert len(changes) == count and {c.op for c in changes} == {Op.INSERT}
        planned = {c.after["id"]: plan(c, spec) for c in changes if c.after}
        position = {c.after["id"]: c.position for c in changes if c.after}
        refs = [spec.row_ref(c.after) for c in changes if c.after]

        def keys(actions: list[Any]) -> list[str]:
            return sorted(k for a in actions if isinstance(a, DeleteKeys) for k in a.keys)

        def docs(actions: list[Any]) -> list[Any]:
            return [(a.doc_id, a.document) for a in actions if isinstance(a, IndexDoc)]

        # 1. Both row readers: the re-read image plans the binlog's keys and documents.
        for row_reader in (SqlRowReader(zoned_engine), partial):
            images = row_reader.fetch(spec, refs)
            for ref in refs:
                image = images[ref]
                assert image is not None, ref
                id = ref.primary_key["id"]
                again = plan(RowChange(Op.INSERT, None, name, None, image, position[id]), spec)
                assert keys(again) == keys(planned[id]), (type(row_reader).__name__, image)
                assert docs(again) == docs(planned[id]), (type(row_reader).__name__, image)
        # The retry path's Refresher turns a document action into the binlog's document.
        binlog_docs = [a for acts in planned.values() for a in acts if isinstance(a, IndexDoc)]
        refreshed = Refresher(SqlRowReader(zoned_engine), registry).refresh(binlog_docs)
        assert [(a.doc_id, a.document) for a in refreshed] == [  # type: ignore[union-attr]
            (a.doc_id, a.document) for a in binlog_docs
        ]
        with zoned_engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+08:00"

        # 2. reindex writes the binlog's documents; verify finds nothing stale. Documents
        # are kept, not indexed (a generated JSON column changes type from row to row).
        es.indices.create(index=index, mappings={"dynamic": False})
        sink = RecordingSink(es)
        report = reindex(spec, connection=reader, search=sink, registry=registry)
        assert report.documents == count
        assert sorted(sink.sent) == sorted(docs(binlog_docs))
        # verify renders each row as the binlog does: a document is stale only where the
        # ES-API emulator itself stored a double one unit in the last place off (its JSON
        # parser; Elasticsearch keeps _source as sent).
        es.indices.refresh(index=index)
        found = es.mget(index=index, ids=[d for d, _doc in docs(binlog_docs)])["docs"]
        stored = {d["_id"]: d["_source"] for d in found}
        sent = dict(docs(binlog_docs))
        assert set(stored) == set(sent)
        mangled = {i for i in sent if stored[i] != sent[i]}
        for i in mangled:
            assert _close(stored[i], sent[i]), (stored[i], sent[i])
        checked = verify_index(reader, es, spec, spec.projections[0])
        assert (checked.missing, set(checked.stale), checked.orphans) == ([], mangled, [])
        assert len(list(table_rows(reader, spec))) == count
        with reader.cursor() as cur:
            assert _zone(cur) == "+08:00"
        floats = [c.after["f"] for c in changes if c.after and c.after["f"] is not None]
        widened = sum(1 for f in floats if len(repr(f).rstrip("0").strip("-.e+")) > 7)
        print(
            f"\nread path: {count} rows, {len(refs)} re-read by 2 readers, {len(binlog_docs)} "
            f"documents reindexed and verified ({len(mangled)} with a double the emulator "
            f"stored off by an ulp); {widened} FLOATs beyond 6 digits"
        )
        assert widened > 0, "no FLOAT needed the widening: the test would not notice it"
    finally:
        partial.close()
        reader.close()
        admin.close()
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
        with zoned_engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS `{name}`"))
