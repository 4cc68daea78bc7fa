"""Related-row fan-out against the private MariaDB, Redis and the Elasticsearch API.

Products embed their category's and department's names (SQLAlchemy
relationships, two hops) and a ``product:{id}:card`` key that embeds the
category. "Another service" renames, moves and deletes with raw SQL; every
product document must equal a fresh joined ``SELECT`` and every dependent key
must be gone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from cachesync import Projection, Sync
from cachesync.actions import DocumentAction, IndexDoc
from cachesync.contrib.sqlalchemy import register
from cachesync.errors import DeclarationError
from cachesync.registry import Registry
from cachesync.sinks import SearchSink
from cachesync.sinks.base import DocumentFailure
from tests.integration.binlog.harness import BinlogEnv, running, wait_for
from tests.integration.binlog.shop import DDL, Product, card_key, index_name
from tests.integration.binlog.shop import declare as declare_shop

pytestmark = pytest.mark.services


def index(env: BinlogEnv) -> str:
    return index_name(env.schema)


def card(env: BinlogEnv, pid: int) -> str:
    return card_key(env.schema, pid)


def declare(env: BinlogEnv, registry: Registry | None = None) -> Registry:
    return declare_shop(env.schema, registry or env.registry())


def expected(env: BinlogEnv) -> dict[str, dict[str, Any]]:
    """The product documents as a fresh joined SELECT says they are now."""
    rows = env.sql(
        "SELECT p.id, p.name, p.category_id, c.title, d.name FROM products p "
        "LEFT JOIN categories c ON p.category_id = c.id "
        "LEFT JOIN departments d ON c.department_id = d.id"
    )
    return {
        str(r[0]): {
            "name": r[1],
            "category_id": r[2],
            "category_name": r[3],
            "department_name": r[4],
        }
        for r in rows
    }


def documents(env: BinlogEnv) -> dict[str, dict[str, Any]]:
    from elasticsearch import helpers

    env.es.indices.refresh(index=index(env), ignore_unavailable=True)
    return {
        h["_id"]: h["_source"]
        for h in helpers.scan(
            env.es, index=index(env), query={"query": {"match_all": {}}}, ignore_unavailable=True
        )
    }


def assert_documents_right(env: BinlogEnv) -> None:
    want, have = expected(env), documents(env)
    wrong = sorted((i for i in want if have.get(i) != want[i]), key=int)
    orphans = sorted(set(have) - set(want), key=int)
    assert not wrong and not orphans, (
        f"{len(wrong)} wrong {[(i, have.get(i), want[i]) for i in wrong[:3]]}, orphans {orphans[:5]}"
    )


@pytest.fixture
def shop(binlog_env: BinlogEnv) -> Iterator[BinlogEnv]:
    for statement in DDL:
        binlog_env.sql(statement)
    yield binlog_env
    binlog_env.es.indices.delete(index=index(binlog_env), ignore_unavailable=True)


def fill(env: BinlogEnv, products: int = 30) -> None:
    env.sql("INSERT INTO departments VALUES (1, 'Garden'), (2, 'Kitchen')")
    env.sql("INSERT INTO categories VALUES (1, 'Tools', 1), (2, 'Pots', 2), (3, 'Seeds', 1)")
    env.sql(
        "INSERT INTO products VALUES "
        + ", ".join(f"({i}, 'p{i}', {1 + i % 3})" for i in range(1, products + 1))
    )


class RecordingSearch(SearchSink):
    """The real sink, remembering every document action it was given."""

    def __init__(self, es: Any) -> None:
        super().__init__(es)
        self.seen: list[DocumentAction] = []

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        self.seen.extend(actions)
        return super().apply(actions)


def test_rename_move_two_hops_and_delete_reach_documents_and_keys(shop: BinlogEnv) -> None:
    env = shop
    with running(env.sidecar(registry=declare(env))):
        fill(env)
        env.sync_point()
        assert_documents_right(env)  # inserts rendered from the joined row
        cards = [card(env, i) for i in range(1, 31)]
        env.set_keys(cards)
        env.sql("UPDATE categories SET title = 'Hand tools' WHERE id = 1")  # raw SQL
        env.sync_point()
        assert_documents_right(env)
        in_one = {i for i in range(1, 31) if 1 + i % 3 == 1}
        assert set(env.existing(cards)) == {card(env, i) for i in range(1, 31) if i not in in_one}
        # Move a product: its document follows the new category.
        env.sql("UPDATE products SET category_id = 2 WHERE id = 3")
        env.sync_point()
        assert documents(env)["3"]["category_name"] == "Pots"
        # Two hops: a department rename reaches the products of its categories.
        env.sql("UPDATE departments SET name = 'Outdoor' WHERE id = 1")
        env.sync_point()
        assert_documents_right(env)
        assert documents(env)["6"]["department_name"] == "Outdoor"  # category 1, department 1
        # A category re-parented to another department.
        env.sql("UPDATE categories SET department_id = 2 WHERE id = 3")
        env.sync_point()
        assert_documents_right(env)
        # A column nobody reads changes: no fan-out.
        # Delete with ON DELETE SET NULL: products keep documents, with no category.
        env.set_keys(cards)
        env.sql("DELETE FROM categories WHERE id = 3")
        env.sync_point()
        assert_documents_right(env)
        assert documents(env)["2"]["category_name"] is None
        assert card(env, 2) not in env.existing(cards)


def test_late_fanout_retry_never_overwrites_a_newer_product_change(shop: BinlogEnv) -> None:
    env = shop
    search = RecordingSearch(env.es)
    applier = env.applier()
    applier.documents = search
    with running(env.sidecar(registry=declare(env), applier=applier)):
        fill(env)
        env.sync_point()
        env.sql("UPDATE categories SET title = 'Renamed' WHERE id = 2")
        env.sync_point()
        fanned = [
            a
            for a in search.seen
            if isinstance(a, IndexDoc)
            and a.doc_id == "1"
            and a.document["category_name"] == "Renamed"
        ]
        assert fanned, "the rename fanned out to product 1"
        old = fanned[-1]
        after_rename = env.es.get(index=index(env), id="1")["_version"]
        assert after_rename == old.version  # the fan-out's version: the category change's position
        env.sql("UPDATE products SET name = 'newer' WHERE id = 1")
        env.sync_point()
        newer = env.es.get(index=index(env), id="1")
        assert newer["_version"] > old.version
        # The late retry of the old fan-out, as the retry path would send it.
        assert applier.apply([old]).failures == []
        again = env.es.get(index=index(env), id="1")
        assert again["_version"] == newer["_version"]
        assert again["_source"]["name"] == "newer"
        assert_documents_right(env)


def test_foreign_key_without_index_fails_at_start_naming_the_model(shop: BinlogEnv) -> None:
    env = shop
    env.sql("ALTER TABLE categories DROP INDEX department_id")
    sidecar = env.sidecar(registry=declare(env))
    match = r"Product: relation 'category.department'.*index"
    with pytest.raises(DeclarationError, match=match), running(sidecar):
        pass


def test_unknown_relation_fails_naming_the_model(shop: BinlogEnv) -> None:
    registry = Registry()
    register(
        Product,
        Sync(search=Projection(index="x", fields=["name"], related={"c": "categori.name"})),
        registry=registry,
    )
    from cachesync.related import relations_of

    (spec,) = registry.tables()
    with pytest.raises(DeclarationError, match=r"Product: relation 'categori'.*no to-one"):
        relations_of(spec)


def test_reindex_renders_and_verify_compares_joined_fields(shop: BinlogEnv) -> None:
    from cachesync.binlog.reindex import reindex
    from cachesync.verify import verify_index

    env = shop
    fill(env)
    registry = declare(env)
    spec = registry.for_model("Product")
    conn = env.connect()
    try:
        report = reindex(spec, connection=conn, search=SearchSink(env.es), database=env.schema)
        assert report.documents == 30
        assert_documents_right(env)
        (projection,) = spec.projections
        assert verify_index(conn, env.es, spec, projection).ok
        # No sidecar runs: a rename leaves the joined field stale, and verify sees it.
        env.sql("UPDATE departments SET name = 'Elsewhere' WHERE id = 2")
        conn.commit()
        checked = verify_index(conn, env.es, spec, projection)
        in_two = [str(i) for i in range(1, 31) if 1 + i % 3 == 2]
        assert sorted(checked.stale, key=int) == in_two
    finally:
        conn.close()


def settle(env: BinlogEnv, sidecar: Any) -> None:
    """Everything committed so far applied, background fan-outs included."""
    env.sync_point()
    wait_for(lambda: sidecar.fanout_jobs == 0, 60, "the background fan-outs")


def fanned_rows() -> int:
    from cachesync import metrics

    return metrics.snapshot()["fanout_rows_total"]


def test_a_fanout_bigger_than_a_chunk_runs_beside_the_stream(shop: BinlogEnv) -> None:
    """Chunks of 4: a rename of a 20-product category plans 4 rows with its batch and
    leaves 16 to the background worker, which saves its job next to the checkpoint."""
    from cachesync.policies import FanoutPolicy
    from cachesync.testing import MemoryCheckpointStore

    env = shop
    store = MemoryCheckpointStore()
    sidecar = env.sidecar(registry=declare(env), store=store, fanout=FanoutPolicy(chunk=4))
    with running(sidecar):
        fill(env, products=60)
        settle(env, sidecar)  # the categories' inserts fan out to products inserted since
        cards = [card(env, i) for i in range(1, 61)]
        env.set_keys(cards)
        before = fanned_rows()
        env.sql("UPDATE categories SET title = 'Hand tools' WHERE id = 1")
        env.sql("UPDATE departments SET name = 'Outdoor' WHERE id = 1")  # 40 products, 2 hops
        wait_for(lambda: sidecar.fanout_jobs == 0 and fanned_rows() - before >= 52, 60, "jobs")
        env.sync_point()
        assert_documents_right(env)
        in_one = {i for i in range(1, 61) if 1 + i % 3 == 1}
        assert set(env.existing(cards)) == {card(env, i) for i in range(1, 61) if i not in in_one}
        # 20 + 40 rows fanned out, 4 of each planned inline and the rest by the worker; or
        # 4 inline in all when both changes shared a batch (its budget spent on the first).
        assert fanned_rows() - before in (16 + 36, 16 + 40)
        wait_for(lambda: not store.names(f"{env.schema}#fanout:"), 10, "finished jobs deleted")


def test_a_raising_callable_on_a_fanned_out_row_costs_one_dead_letter(shop: BinlogEnv) -> None:
    """#9's rule for fan-outs: a ``when=`` that raises on one product (inline chunk and
    background chunk alike) buries that product with its joined image; the others are
    re-indexed and the stream goes on."""
    from cachesync.policies import FanoutPolicy
    from cachesync.testing import MemoryDeadLetterStore

    env = shop
    poisoned = {13, 55}

    def when(row: dict[str, Any]) -> bool:
        if row["id"] in poisoned and row.get("category_name") == "Renamed":
            raise ValueError(f"cannot decide product {row['id']}")
        return True

    registry = env.registry()
    register(
        Product,
        Sync(
            keys=[card(env, 0).replace(":0:card", ":{id}:card")],
            depends_on={"category": [card(env, 0).replace(":0:card", ":{id}:card")]},
            search=Projection(
                index=index(env),
                fields=["name", "category_id"],
                related={"category_name": "category.name"},
                when=when,
            ),
        ),
        registry=registry,
    )
    sidecar = env.sidecar(registry=registry, fanout=FanoutPolicy(chunk=5))
    letters = sidecar.dead_letters = MemoryDeadLetterStore()
    with running(sidecar):
        fill(env, products=60)
        settle(env, sidecar)
        cards = [card(env, i) for i in range(1, 61)]
        env.set_keys(cards)
        env.sql("UPDATE categories SET title = 'Renamed' WHERE id = 2")  # 1 + i % 3 == 2
        wait_for(lambda: sidecar.fanout_jobs == 0 and len(letters.buried) == 2, 60, "letters")
        env.sql("UPDATE products SET name = 'still flowing' WHERE id = 3")
        env.sync_point()
        assert sorted(letter.primary_key["id"] for letter in letters.buried) == [13, 55]
        assert all("cannot decide product" in letter.error for letter in letters.buried)
        assert all(letter.model.endswith(".Product") for letter in letters.buried)
        assert all("fan-out of" in letter.error for letter in letters.buried)
        docs = documents(env)
        renamed = [i for i in range(1, 61) if 1 + i % 3 == 2 and i not in poisoned]
        assert all(docs[str(i)]["category_name"] == "Renamed" for i in renamed)
        assert docs["3"]["name"] == "still flowing"
        # Their keys still go: the template renders, only the document waits for a human.
        in_two = {i for i in range(1, 61) if 1 + i % 3 == 2}
        assert not set(env.existing(cards)) & {card(env, i) for i in in_two}


def test_a_bulk_update_of_many_related_rows_leaves_the_rest_to_the_worker(
    shop: BinlogEnv,
) -> None:
    """One statement renames 100 categories: the batch looks up at most INLINE_LOOKUPS of
    them on the reading thread; the worker does the others; every document ends right."""
    from cachesync.binlog.fanout import INLINE_LOOKUPS

    env = shop
    sidecar = env.sidecar(registry=declare(env))
    with running(sidecar):
        env.sql("INSERT INTO departments VALUES (1, 'Garden')")
        env.sql(
            "INSERT INTO categories VALUES "
            + ", ".join(f"({c}, 'c{c}', 1)" for c in range(1, 101))
        )
        env.sql(
            "INSERT INTO products VALUES "
            + ", ".join(f"({i}, 'p{i}', {1 + i % 100})" for i in range(1, 301))
        )
        settle(env, sidecar)
        before = fanned_rows()
        env.sql("UPDATE categories SET title = CONCAT(title, ' renamed')")
        wait_for(lambda: fanned_rows() - before >= 3 * (100 - INLINE_LOOKUPS), 60, "the worker")
        settle(env, sidecar)
        assert_documents_right(env)
        assert fanned_rows() - before == 3 * (100 - INLINE_LOOKUPS)
