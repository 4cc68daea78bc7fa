"""Foreign-key cascades, which the binlog does not show, against the private MariaDB.

``ON DELETE CASCADE``, ``ON DELETE SET NULL`` and ``ON UPDATE CASCADE`` change
child rows inside InnoDB; only the parent row is logged. Raw SQL changes the
parents while the sidecar runs; every cached child key must be gone and every
child index must equal its table (no orphans, nothing stale).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from elasticsearch import helpers

from cachesync import Projection, Sync, resolve
from cachesync.registry import Registry, TableSpec
from tests.integration.binlog import models
from tests.integration.binlog.harness import BinlogEnv, running

pytestmark = pytest.mark.services

DDL = [
    """CREATE TABLE authors (
        id INT NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL) ENGINE=InnoDB""",
    """CREATE TABLE folders (id INT NOT NULL PRIMARY KEY) ENGINE=InnoDB""",  # not watched
    """CREATE TABLE posts (
        id INT NOT NULL PRIMARY KEY, author_id INT NOT NULL, slug VARCHAR(64) NOT NULL,
        title VARCHAR(64) NOT NULL,
        CONSTRAINT posts_author FOREIGN KEY (author_id) REFERENCES authors (id)
            ON DELETE CASCADE ON UPDATE CASCADE) ENGINE=InnoDB""",
    """CREATE TABLE comments (
        id INT NOT NULL PRIMARY KEY, post_id INT NOT NULL, body VARCHAR(64) NOT NULL,
        CONSTRAINT comments_post FOREIGN KEY (post_id) REFERENCES posts (id)
            ON DELETE CASCADE) ENGINE=InnoDB""",
    """CREATE TABLE notes (
        id INT NOT NULL PRIMARY KEY, author_id INT NULL, folder_id INT NULL,
        text VARCHAR(64) NOT NULL,
        CONSTRAINT notes_author FOREIGN KEY (author_id) REFERENCES authors (id)
            ON DELETE SET NULL ON UPDATE CASCADE,
        CONSTRAINT notes_folder FOREIGN KEY (folder_id) REFERENCES folders (id)
            ON DELETE SET NULL) ENGINE=InnoDB""",
]

TABLES: dict[str, dict[str, Any]] = {
    "authors": {"columns": ["id", "name"], "keys": ["author:{id}"], "fields": ["name"]},
    "posts": {
        "columns": ["id", "author_id", "slug", "title"],
        # by-author renders differently before and after an UPDATE CASCADE; by-slug does not.
        "keys": ["post:{id}", "post:by-author:{author_id}:{id}", "post:by-slug:{slug}"],
        "fields": ["author_id", "title"],
    },
    "comments": {
        "columns": ["id", "post_id", "body"],
        "keys": ["comment:{id}", "comment:of-post:{post_id}:{id}"],
        "fields": ["post_id", "body"],
    },
    "notes": {
        "columns": ["id", "author_id", "folder_id", "text"],
        "keys": ["note:{id}", "note:by-author:{author_id}:{id}", "note:in:{folder_id}:{id}"],
        "fields": ["author_id", "folder_id", "text"],
    },
}


def _index(env: BinlogEnv, table: str) -> str:
    return f"{env.schema.lower()}-{table}"


def _spec(env: BinlogEnv, table: str) -> TableSpec:
    decl = TABLES[table]
    prefix = models.key_prefix(env.schema)
    return resolve(
        f"tests.cascades.{table}",
        Sync(
            keys=[prefix + k for k in decl["keys"]],
            search=Projection(index=_index(env, table), fields=list(decl["fields"])),
        ),
        table=table,
        schema=env.schema,
        columns={c: c for c in decl["columns"]},
        primary_key=["id"],
    )


def _registry(env: BinlogEnv) -> Registry:
    registry = env.registry()  # users: the sync point's sentinel
    for table in TABLES:
        registry.add(_spec(env, table))
    return registry


def _rows(env: BinlogEnv, table: str) -> list[dict[str, Any]]:
    cols = TABLES[table]["columns"]
    return [
        dict(zip(cols, r, strict=True)) for r in env.sql(f"SELECT {', '.join(cols)} FROM {table}")
    ]


def _keys_of(env: BinlogEnv, table: str, row: dict[str, Any]) -> list[str]:
    prefix = models.key_prefix(env.schema)
    # A template over a NULL column renders no key (and a reader cannot have filled one).
    keys = [k for k in TABLES[table]["keys"] if "None" not in k.format(**row)]
    return [prefix + k.format(**row) for k in keys]


def _assert_index_equals_table(env: BinlogEnv, table: str) -> None:
    index = _index(env, table)
    env.es.indices.refresh(index=index, ignore_unavailable=True)
    actual = {
        hit["_id"]: hit["_source"]
        for hit in helpers.scan(
            env.es, index=index, query={"query": {"match_all": {}}}, ignore_unavailable=True
        )
    }
    expected = {str(r["id"]): {f: r[f] for f in TABLES[table]["fields"]} for r in _rows(env, table)}
    orphans = sorted(set(actual) - set(expected), key=int)
    missing = sorted(set(expected) - set(actual), key=int)
    stale = sorted((i for i in expected if i in actual and actual[i] != expected[i]), key=int)
    assert not (orphans or missing or stale), (
        f"{index}: {len(orphans)} orphans {orphans[:10]}, {len(missing)} missing {missing[:10]}, "
        f"{len(stale)} stale {[(i, actual[i], expected[i]) for i in stale[:5]]}"
    )


@pytest.fixture
def world(binlog_env: BinlogEnv) -> Iterator[BinlogEnv]:
    """The five tables, created before any sidecar starts."""
    for statement in DDL:
        binlog_env.sql(statement)
    yield binlog_env
    for table in TABLES:
        binlog_env.es.indices.delete(index=_index(binlog_env, table), ignore_unavailable=True)
    index_keys = list(binlog_env.redis.scan_iter(match=f"cachesync:cascade:{binlog_env.schema}:*"))
    if index_keys:
        binlog_env.redis.unlink(*index_keys)


def _fill(env: BinlogEnv, authors: int = 10, posts_per_author: int = 11) -> None:
    env.sql(
        "INSERT INTO authors VALUES " + ", ".join(f"({a}, 'a{a}')" for a in range(1, authors + 1))
    )
    env.sql("INSERT INTO folders VALUES (1), (2)")
    posts = [(a * 100 + p, a) for a in range(1, authors + 1) for p in range(posts_per_author)]
    env.sql(
        "INSERT INTO posts VALUES " + ", ".join(f"({i}, {a}, 's{i}', 't{i}')" for i, a in posts)
    )
    # Two comments under the first post of every author: grandchildren of the author.
    env.sql(
        "INSERT INTO comments VALUES "
        + ", ".join(
            f"({a * 1000 + c}, {a * 100}, 'b{c}')" for a in range(1, authors + 1) for c in range(2)
        )
    )
    env.sql(
        "INSERT INTO notes VALUES "
        + ", ".join(
            f"({a * 10 + n}, {a}, {1 + n % 2}, 'n{n}')"
            for a in range(1, authors + 1)
            for n in range(3)
        )
    )


def _check(env: BinlogEnv, seeded: list[str]) -> None:
    stale = env.existing(seeded)
    assert stale == [], f"{len(stale)} of {len(seeded)} child keys stale: {stale[:8]}"
    for table in TABLES:
        _assert_index_equals_table(env, table)


def _child_keys(env: BinlogEnv, where: Callable[[str, dict[str, Any]], bool]) -> list[str]:
    return [
        k
        for t in ("posts", "comments", "notes")
        for row in _rows(env, t)
        if where(t, row)
        for k in _keys_of(env, t, row)
    ]


def test_delete_cascade_set_null_and_grandchildren(world: BinlogEnv) -> None:
    env = world
    with running(env.sidecar(registry=_registry(env))):
        _fill(env)
        env.sync_point()
        for table in TABLES:
            _assert_index_equals_table(env, table)
        # Keys of every row that hangs under authors 1..10, as a reader would have filled them.
        doomed = _child_keys(env, lambda t, r: True)
        assert len(doomed) == 110 * 3 + 20 * 2 + 30 * 3
        env.set_keys(doomed)
        env.sql("DELETE FROM authors WHERE id BETWEEN 1 AND 10")  # raw SQL: cascades in InnoDB
        env.sync_point()
        assert env.sql("SELECT COUNT(*) FROM posts")[0][0] == 0
        assert env.sql("SELECT COUNT(*) FROM notes WHERE author_id IS NULL")[0][0] == 30
        _check(env, doomed)

        # SET NULL from a parent the sidecar does not watch (folders has no declaration).
        in_folder = _child_keys(env, lambda t, r: t == "notes" and r["folder_id"] == 1)
        assert len(in_folder) == 20 * 2  # author_id is NULL now
        env.set_keys(in_folder)
        env.sql("DELETE FROM folders WHERE id = 1")
        env.sync_point()
        _check(env, in_folder)


def test_update_cascade_of_a_parent_key(world: BinlogEnv) -> None:
    env = world
    with running(env.sidecar(registry=_registry(env))):
        _fill(env, authors=2, posts_per_author=6)
        env.sync_point()
        before = _child_keys(env, lambda t, r: t == "posts")
        assert len(before) == 12 * 3
        env.set_keys(before)
        env.sql("UPDATE authors SET id = id + 50")  # posts.author_id follows: ON UPDATE CASCADE
        env.sync_point()
        after = _child_keys(env, lambda t, r: t == "posts")
        assert {r["author_id"] for r in _rows(env, "posts")} == {51, 52}
        env.set_keys(after)  # the new by-author keys may have been filled meanwhile, too
        env.sql("UPDATE authors SET id = id - 50")
        env.sync_point()
        _check(env, before + after)


def test_cascades_while_the_sidecar_was_down(world: BinlogEnv) -> None:
    """The reverse index lives in Redis: a cascade during downtime is followed on restart."""
    env = world
    _fill(env, authors=3, posts_per_author=4)  # before any sidecar: the index is built by a scan
    with running(env.sidecar(registry=_registry(env))):
        env.sync_point()
        env.sql("INSERT INTO posts VALUES (9001, 1, 'late', 'late')")  # seen in the stream
        env.sync_point()
    posts = {r["id"] for r in _rows(env, "posts") if r["author_id"] == 1}
    doomed = _child_keys(
        env,
        lambda t, r: (
            (t == "posts" and r["id"] in posts) or (t == "comments" and r["post_id"] in posts)
        ),
    )
    assert len(doomed) == 5 * 3 + 2 * 2
    env.set_keys(doomed)
    env.sql("DELETE FROM authors WHERE id = 1")  # nobody is streaming
    with running(env.sidecar(registry=_registry(env))):
        env.sync_point()
    stale = env.existing(doomed)
    assert stale == [], f"{len(stale)} of {len(doomed)} keys stale: {stale[:8]}"
    env.es.indices.refresh(index=_index(env, "posts"))
    remaining = {
        h["_id"]
        for h in helpers.scan(
            env.es, index=_index(env, "posts"), query={"query": {"match_all": {}}}
        )
    }
    assert "9001" not in remaining and not {str(100 + p) for p in range(4)} & remaining


def test_uncovered_cascade_is_named_at_start(
    world: BinlogEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = world
    registry = _registry(env)
    registry.remove(_spec(env, "posts"))  # authors -> posts (unwatched) -> comments (watched)
    caplog.set_level(logging.WARNING, logger="cachesync.cascades")
    with running(env.sidecar(registry=registry)):
        env.sync_point()
    named = [r.getMessage() for r in caplog.records if "not covered" in r.getMessage()]
    assert any("posts_author" in m and f"{env.schema}.posts is not watched" in m for m in named), (
        named
    )


def test_a_foreign_key_added_while_running_is_followed(world: BinlogEnv) -> None:
    env = world
    env.sql("ALTER TABLE comments DROP FOREIGN KEY comments_post")
    with running(env.sidecar(registry=_registry(env))):
        _fill(env, authors=2, posts_per_author=3)
        env.sync_point()
        # DDL in the binlog: the sidecar reads the foreign keys again and scans comments.
        env.sql(
            "ALTER TABLE comments ADD CONSTRAINT comments_post FOREIGN KEY (post_id) "
            "REFERENCES posts (id) ON DELETE CASCADE"
        )
        # Followed from where the sidecar reads the DDL on: the scan sees the table as it is
        # then, so a cascade committed between the DDL and that moment (the lag) is not covered.
        env.sync_point()
        env.sql("INSERT INTO comments VALUES (7, 101, 'after the DDL')")
        seeded = _child_keys(
            env,
            lambda t, r: (t == "posts" and r["id"] in (100, 101))
            or (t == "comments" and r["post_id"] in (100, 101)),
        )
        assert len(seeded) == 2 * 3 + 3 * 2
        env.set_keys(seeded)
        env.sql("DELETE FROM posts WHERE id IN (100, 101)")
        env.sync_point()
        _check(env, seeded)
