"""A related field renders exactly as the related model's own row renders it, for every type.

Products embed columns of their category (``related=``); the category's own
document is what the binlog path renders from the category's row. Generated
categories with a column of every type (:mod:`tests.support.typed_rows`: FLOAT
with all of float32's digits, DECIMAL, DATETIME(6), TIMESTAMP written in a
+08:00 session, JSON, latin1 text, BINARY, ...) are written by raw SQL, each
with a product pointing at it. Then, for each product, on connections whose
session zone is +08:00:

* the retry path's re-read (:class:`Refresher` over :class:`SqlRowReader`),
* the fan-out's read shape (``WHERE fk = ? ORDER BY pk LIMIT n`` through
  :func:`~cachesync.related.joined_reads`),
* ``reindex`` (documents sent) and ``verify`` (its expected documents)

give ``p_<column> == <column>`` of the category's own binlog-rendered document,
and the product's own FLOAT the binlog's value too (a joined read must widen
the model's own FLOATs as well as the related ones).
"""

from __future__ import annotations

import uuid
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Float, ForeignKey, Integer, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from cachesync import Projection, Settings, Sync, resolve
from cachesync.actions import IndexDoc
from cachesync.binlog import server
from cachesync.binlog.reindex import reindex
from cachesync.changes import Op
from cachesync.connections import elasticsearch_client, mysql_params
from cachesync.contrib.sqlalchemy import register
from cachesync.planning import plan
from cachesync.registry import Registry
from cachesync.related import joined_reads
from cachesync.reread import Refresher, SqlRowReader
from cachesync.sinks import SearchSink
from cachesync.verify import expected_documents, table_rows
from tests.integration.test_read_path_values import FLOAT32, ZONE_INIT, typed_table, zoned_engine
from tests.support import typed_rows

pytestmark = pytest.mark.services

__all__ = ["zoned_engine"]  # the fixture

COLUMNS = list(typed_rows.COLUMNS)


class RecordingSink(SearchSink):
    """The real sink, remembering the documents it was asked to write."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.sent: dict[str, Any] = {}

    def apply(self, actions: Any) -> Any:
        self.sent.update({a.doc_id: a.document for a in actions if isinstance(a, IndexDoc)})
        return super().apply(actions)


def _models(categories: str, products: str) -> tuple[Any, Any]:
    """A category model over the typed table and a product embedding it (fresh classes)."""

    class Base(DeclarativeBase):
        pass

    class Category(Base):
        __table__ = typed_table(categories).to_metadata(Base.metadata)

    class Product(Base):
        __tablename__ = products
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        f: Mapped[float | None] = mapped_column(Float)
        category_id: Mapped[int | None] = mapped_column(ForeignKey(f"{categories}.id"))
        category: Mapped[Any] = relationship(Category)

    return Category, Product


def test_related_fields_render_as_the_related_rows_own_document(
    zoned_engine: Engine, mysql_url: str, es_url: str
) -> None:
    params = mysql_params(mysql_url)
    run = uuid.uuid4().hex[:8]
    categories, products, index = f"relcat_{run}", f"relprod_{run}", f"relprod-{run}"
    _category, product = _models(categories, products)
    own = Registry()
    category_spec = own.add(
        resolve(
            "Category",
            Sync(search=Projection(index=f"relcat-{run}", fields=COLUMNS)),
            table=categories,
            columns={c: c for c in ["id", *COLUMNS]},
            primary_key=["id"],
        )
    )
    registry = Registry()
    register(
        product,
        Sync(
            search=Projection(
                index=index,
                fields=["f", "category_id"],
                related={f"p_{c}": f"category.{c}" for c in COLUMNS},
            )
        ),
        registry=registry,
    )
    spec = registry.for_model("Product")
    with zoned_engine.begin() as conn:
        conn.execute(text(typed_rows.ddl(categories)))
        conn.execute(
            text(
                f"CREATE TABLE `{products}` (id INT PRIMARY KEY, f FLOAT NULL, "
                f"category_id INT NULL, KEY (category_id), FOREIGN KEY (category_id) "
                f"REFERENCES `{categories}` (id) ON DELETE SET NULL) ENGINE=InnoDB"
            )
        )
    admin = server.connect(params)
    start = server.master_status(admin)
    ids = iter(range(1, 10**6))
    category_table = typed_table(categories)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(row=typed_rows.row_values(), f=st.none() | FLOAT32)
    def write(row: dict[str, Any], f: float | None) -> None:
        id = next(ids)
        with zoned_engine.begin() as conn:  # raw SQL of "another service", +08:00 session
            conn.execute(category_table.insert(), [{**row, "f": f, "id": id}])
            conn.execute(
                text(f"INSERT INTO `{products}` VALUES (:id, :f, :id)"), {"id": id, "f": f}
            )

    es = elasticsearch_client(Settings(es_url=es_url))
    reader = pymysql.connect(**params, autocommit=True, init_command=ZONE_INIT)
    try:
        write()
        with reader.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM `{categories}`")
            count = int(cur.fetchone()[0])
        changes = typed_rows.binlog_changes(params, own, categories, start, count)
        assert len(changes) == count and {c.op for c in changes} == {Op.INSERT}
        # The category's own document, as the binlog path renders it.
        own_docs: dict[str, dict[str, Any]] = {}
        for change in changes:
            (doc,) = [a for a in plan(change, category_spec) if isinstance(a, IndexDoc)]
            own_docs[doc.doc_id] = doc.document
        want = {
            i: {
                "f": d["f"],
                "category_id": int(i),
                **{f"p_{c}": d[c] for c in COLUMNS},
            }
            for i, d in own_docs.items()
        }

        def wrong(have: dict[str, Any], path: str) -> None:
            assert set(have) == set(want), path
            bad = [
                (i, f, have[i].get(f), want[i][f])
                for i in want
                for f in want[i]
                if have[i].get(f) != want[i][f]
            ]
            assert not bad, f"{path}: {len(bad)} fields differ, e.g. {bad[:4]}"

        # 1. The retry path: a document action re-read as the current joined row.
        position = changes[-1].position
        asked = [
            IndexDoc(index, i, {}, position, spec.row_ref({"id": int(i)})) for i in sorted(want)
        ]
        refreshed = Refresher(SqlRowReader(zoned_engine), registry).refresh(asked)
        wrong({a.doc_id: a.document for a in refreshed if isinstance(a, IndexDoc)}, "re-read")
        with zoned_engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+08:00"

        # 2. The fan-out's read: the rows referencing one category, keyset-chunked.
        (projection,) = spec.projections
        fanned: dict[str, Any] = {}
        with zoned_engine.connect() as conn, joined_reads(conn, spec, None) as query:
            for i in want:
                stmt = (
                    query.select.where(query.t0.c.category_id == int(i))
                    .order_by(query.t0.c.id)
                    .limit(1000)
                )
                for image in query.rows(stmt):
                    row = spec.row_from_columns(image)
                    fanned[str(projection.doc_id(row))] = projection.document(row)
            assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+00:00"
        with zoned_engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @@session.time_zone").scalar() == "+08:00"
        wrong(fanned, "fan-out read")
        # Column types kept by the caller (read once, not per chunk) give the same rows.
        with zoned_engine.connect() as conn, joined_reads(conn, spec, None) as first:
            kept = dict(first.types)
        assert {f"p_{c}" for c in COLUMNS} <= {n.removeprefix("@") for n in kept}
        with zoned_engine.connect() as conn, joined_reads(conn, spec, None, types=kept) as query:
            again = {
                str(image["id"]): projection.document(spec.row_from_columns(image))
                for image in query.rows(query.select.order_by(query.t0.c.id))
            }
        wrong(again, "fan-out read, kept types")
        # The sidecar's own fan-out (binlog/fanout.py), on its own connection.
        from cachesync.binlog.fanjobs import FanoutJob
        from cachesync.binlog.fanout import Fanout
        from cachesync.related import relations_of

        relations = relations_of(spec)
        assert relations is not None
        fanout = Fanout(params, registry, [(spec, relations)], default_schema=params["database"])
        try:
            sidecar_fanned = {
                a.doc_id: a.document
                for i in want
                for a in fanout.read(FanoutJob(spec, ("category",), (int(i),), position)).actions
                if isinstance(a, IndexDoc)
            }
        finally:
            fanout.close()
        wrong(sidecar_fanned, "the sidecar's fan-out")

        # 3. reindex sends them; verify expects them.
        es.indices.create(index=index, mappings={"dynamic": False})
        sink = RecordingSink(es)
        report = reindex(spec, connection=reader, search=sink, registry=registry)
        assert report.documents == count
        wrong(sink.sent, "reindex")
        seen, expected = expected_documents(spec, projection, table_rows(reader, spec))
        assert seen == count
        wrong({i: doc for i, (doc, _ref) in expected.items()}, "verify")
        with reader.cursor() as cur:
            cur.execute("SELECT @@session.time_zone")
            assert cur.fetchone()[0] == "+08:00"
        kinds = {
            category_spec.columns[c]
            for c in COLUMNS
            if any(d[c] is not None for d in own_docs.values())
        }
        print(
            f"\nrelated values: {count} categories x {len(COLUMNS)} column types, each embedded "
            f"by a product: re-read, fan-out read, reindex and verify equal the category's own "
            f"binlog document ({len(kinds)} columns with non-NULL values)"
        )
        assert kinds == set(COLUMNS), "a column type was never generated non-NULL"
    finally:
        reader.close()
        admin.close()
        es.indices.delete(index=index, ignore_unavailable=True)
        es.close()
        with zoned_engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS `{products}`"))
            conn.execute(text(f"DROP TABLE IF EXISTS `{categories}`"))
