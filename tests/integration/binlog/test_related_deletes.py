"""A deleted related row: every foreign-key behaviour leaves the embedding rows consistent.

Products embed their category (``related=`` fields and a ``depends_on`` key,
SQLAlchemy declarations of :mod:`.shop`). "Another service" deletes a category
with raw SQL from its own connection; the products' foreign key decides what
happens, and the sidecar must follow:

* ``ON DELETE CASCADE``: the products go with it, inside InnoDB, invisible to the
  binlog (:mod:`cachesync.binlog.cascades` follows them): their documents are
  deleted and every key of theirs is gone; the other products are untouched.
* ``ON DELETE SET NULL``: the products stay with no category: their documents
  are re-rendered with empty related fields, their keys are gone.
* ``ON DELETE RESTRICT``: the delete is refused; nothing changes anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pymysql
import pytest

from tests.integration.binlog.harness import BinlogEnv, running
from tests.integration.binlog.models import key_prefix
from tests.integration.binlog.shop import DDL, card_key, index_name
from tests.integration.binlog.shop import declare as declare_shop
from tests.integration.binlog.test_fanout import assert_documents_right, documents, fill

pytestmark = pytest.mark.services

PRODUCTS = range(1, 31)
#: fill(): product i is in category 1 + i % 3.
IN_ONE = {i for i in PRODUCTS if 1 + i % 3 == 1}


def all_keys(env: BinlogEnv, ids: Iterable[int] = PRODUCTS) -> list[str]:
    """Both keys of each product: its own and the card that embeds its category."""
    prefix = key_prefix(env.schema)
    return [k for i in ids for k in (f"{prefix}product:{i}", card_key(env.schema, i))]


@pytest.fixture(params=["CASCADE", "SET NULL", "RESTRICT"])
def shop(request: pytest.FixtureRequest, binlog_env: BinlogEnv) -> Iterator[tuple[BinlogEnv, str]]:
    action = str(request.param)
    for statement in DDL:
        binlog_env.sql(statement.replace("ON DELETE SET NULL", f"ON DELETE {action}"))
    yield binlog_env, action
    binlog_env.es.indices.delete(index=index_name(binlog_env.schema), ignore_unavailable=True)


def test_a_deleted_category_follows_the_foreign_key(shop: tuple[BinlogEnv, str]) -> None:
    env, action = shop
    (create,) = [r[1] for r in env.sql("SHOW CREATE TABLE products")]
    assert f"ON DELETE {action}" in create or (action == "RESTRICT" and "ON DELETE" not in create)
    with running(env.sidecar(registry=declare_shop(env.schema, env.registry()))):
        fill(env)
        env.sync_point()
        assert_documents_right(env)
        before = documents(env)
        assert len(before) == len(PRODUCTS) and before["3"]["category_name"] == "Tools"
        env.set_keys(all_keys(env))
        other = env.connect()  # another service's connection, raw SQL
        try:
            with other.cursor() as cur:
                if action == "RESTRICT":
                    with pytest.raises(pymysql.err.IntegrityError) as refused:
                        cur.execute("DELETE FROM categories WHERE id = 1")
                    assert refused.value.args[0] == 1451  # a foreign key constraint fails
                else:
                    cur.execute("DELETE FROM categories WHERE id = 1")
        finally:
            other.close()
        env.sync_point()
        after = documents(env)
        assert_documents_right(env)  # equal to a fresh joined SELECT, no orphans
        left = set(env.existing(all_keys(env)))
        untouched = set(all_keys(env, [i for i in PRODUCTS if i not in IN_ONE]))
        if action == "CASCADE":
            assert env.sql("SELECT COUNT(*) FROM products WHERE category_id = 1")[0][0] == 0
            assert set(after) == {str(i) for i in PRODUCTS if i not in IN_ONE}
            assert left == untouched, "a cascaded product's key survived, or another's was lost"
        elif action == "SET NULL":
            assert set(after) == {str(i) for i in PRODUCTS}
            for i in IN_ONE:
                assert after[str(i)]["category_id"] is None
                assert after[str(i)]["category_name"] is None
                assert after[str(i)]["department_name"] is None
            assert left == untouched, "a SET NULL product kept a key, or another's was lost"
        else:
            assert env.sql("SELECT COUNT(*) FROM categories WHERE id = 1")[0][0] == 1
            assert after == before, "a refused delete changed documents"
            assert left == set(all_keys(env)), "a refused delete dropped keys"
        # Untouched products keep their documents exactly.
        assert all(after[str(i)] == before[str(i)] for i in PRODUCTS if i not in IN_ONE)
