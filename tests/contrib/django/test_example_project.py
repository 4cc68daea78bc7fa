"""``example_project/``: it checks, migrates, seeds, caches, invalidates, reindexes and runs the sidecar.

It runs as its users run it: ``python manage.py ...`` in ``example_project/``,
configured only by ``CACHESYNC_*`` variables, on its own database
(``cachesync_example_test``) and Redis database 6.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contrib.django.conftest import ROOT
from tests.support.services import HOST, MARIADB_PORT, REDIS_PORT

pytestmark = pytest.mark.services

PROJECT = ROOT / "example_project"
DATABASE = "cachesync_example_test"
REDIS_URL = f"redis://{HOST}:{REDIS_PORT}/6"


@pytest.fixture(scope="module")
def example_env(services: dict[str, str]) -> Iterator[dict[str, str]]:
    import pymysql
    import redis

    admin = pymysql.connect(host=HOST, port=MARIADB_PORT, user="root", autocommit=True)
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        cursor.execute(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4")
    admin.close()
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHESYNC_", "DJANGO_"))}
    env.update(
        CACHESYNC_MYSQL_URL=f"mysql://root@{HOST}:{MARIADB_PORT}/{DATABASE}",
        CACHESYNC_REDIS_URL=REDIS_URL,
        CACHESYNC_ES_URL=services["CACHESYNC_ES_URL"],
        CACHESYNC_NAME="example-test",
        CACHESYNC_SERVER_ID="7699",
    )
    yield env


def manage(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def seeded(example_env: dict[str, str]) -> dict[str, str]:
    manage(example_env, "check", "--fail-level", "WARNING")
    manage(example_env, "migrate", "--verbosity", "0")
    manage(example_env, "makemigrations", "--check", "--dry-run")
    out = manage(example_env, "blog_seed", "--articles", "12").stdout
    assert "12 articles (8 published)" in out
    return example_env


def test_cached_reads_are_invalidated_by_orm_writes(seeded: dict[str, str]) -> None:
    script = textwrap.dedent(
        """
        import redis
        from django.conf import settings
        from django.contrib.auth.models import User
        from blog import reads
        from blog.models import Article, Tag

        r = redis.Redis.from_url(settings.REDIS_URL)
        a = Article.objects.get(slug="article-1")
        assert reads.article(a.pk)["title"] == "Article 1"
        reads.latest()
        assert r.exists(f"article:{a.pk}") and r.exists("articles:latest")

        a.title = "Changed"
        a.save()  # autocommit: the keys go right after the write
        assert not r.exists(f"article:{a.pk}") and not r.exists("articles:latest")
        assert reads.article(a.pk)["title"] == "Changed"

        a.tags.clear()  # the article-tag table is registered: the cached article goes
        assert not r.exists(f"article:{a.pk}")
        assert reads.article(a.pk)["tags"] == []

        alice = User.objects.get(username="alice")
        r.set("user:by-name:alice", "cached")
        alice.username = "alicia"
        alice.save()
        assert not r.exists("user:by-name:alice")
        print("ok")
        """
    )
    assert manage(seeded, "shell", "-c", script).stdout.strip().endswith("ok")


def test_reindex_indexes_the_published_articles(seeded: dict[str, str]) -> None:
    from elasticsearch import Elasticsearch

    es = Elasticsearch(seeded["CACHESYNC_ES_URL"])
    es.options(ignore_status=404).indices.delete(index="blog-articles")
    manage(seeded, "cachesync_reindex", "blog.Article", "--quiet")
    es.indices.refresh(index="blog-articles")
    assert es.count(index="blog-articles")["count"] == 8


def test_the_sidecar_sees_raw_sql_on_the_example_tables(
    seeded: dict[str, str], tmp_path: Any
) -> None:
    import pymysql
    import redis

    log = tmp_path / "listen.log"
    with log.open("w") as out:
        listen = subprocess.Popen(
            [sys.executable, "manage.py", "cachesync_listen"],
            cwd=PROJECT,
            env=seeded,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while "streaming binlog" not in log.read_text() and time.monotonic() < deadline:
                assert listen.poll() is None, log.read_text()
                time.sleep(0.1)
            r = redis.Redis.from_url(REDIS_URL)
            r.set("article:by-slug:article-2", "cached")
            db = pymysql.connect(host=HOST, port=MARIADB_PORT, user="root", database=DATABASE,
                                 autocommit=True)  # fmt: skip
            with db.cursor() as cursor:
                cursor.execute("UPDATE blog_article SET views = views + 1")  # no ORM, no signal
            db.close()
            deadline = time.monotonic() + 20
            while r.exists("article:by-slug:article-2") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not r.exists("article:by-slug:article-2"), log.read_text()
        finally:
            listen.send_signal(signal.SIGTERM)
            code = listen.wait(30)
    assert code == 0, log.read_text()


def test_sqlalchemy_app_renders_the_same_keys_as_django(seeded: dict[str, str]) -> None:
    """Both ORMs' specs of every shared table plan the same keys for generated row images."""
    script = textwrap.dedent(
        """
        import os, random, sys, datetime as dt
        import django
        sys.path.insert(0, os.getcwd())
        from cachesync.contrib.django import declarations
        from cachesync.registry import Registry

        declarations.state.registry = Registry()  # the SQLAlchemy models use the default one
        os.environ["DJANGO_SETTINGS_MODULE"] = "blogsite.settings"
        django.setup()

        from django.contrib.auth.models import User as DjUser
        import sqlalchemy_app as sa
        from blog.models import Article as DjArticle, Tag as DjTag
        from cachesync.changes import BinlogPosition, Op, RowChange
        from cachesync.contrib.sqlalchemy import spec_for
        from cachesync.planning import plan

        pairs = [
            (declarations.table_for(DjArticle).spec, spec_for(sa.Article)),
            (declarations.table_for(DjTag).spec, spec_for(sa.Tag)),
            (declarations.table_for(DjArticle.tags.through).spec, spec_for(sa.ArticleTag)),
            (declarations.table_for(DjUser).spec, spec_for(sa.User)),
        ]
        rng = random.Random(7)

        def value(column):
            if column in ("id", "author_id", "article_id", "tag_id", "views"):
                return rng.randint(1, 10**6)
            if column in ("status", "is_active", "is_staff", "is_superuser"):
                return rng.randint(0, 1)
            if column in ("updated_at", "date_joined", "last_login"):
                return dt.datetime(2024, 1, 1) + dt.timedelta(seconds=rng.randint(0, 10**8))
            return "".join(rng.choice("abcé-_ 1") for _ in range(rng.randint(0, 12)))

        for django_spec, sa_spec in pairs:
            assert django_spec.table == sa_spec.table, (django_spec.table, sa_spec.table)
            columns = sorted(set(django_spec.columns.values()))
            for i in range(200):
                before = {c: value(c) for c in columns}
                after = {c: value(c) for c in columns}
                at = BinlogPosition("mysql-bin.000001", 4 + i)  # documents are planned too
                change = RowChange(Op.UPDATE, None, django_spec.table, before, after, at)
                assert plan(change, django_spec) == plan(change, sa_spec), change
        print("same keys for", ", ".join(d.table for d, _ in pairs))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        env=seeded,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same keys for blog_article, blog_tag, blog_article_tags, auth_user" in result.stdout


def test_sqlalchemy_app_write_invalidates_what_django_cached(seeded: dict[str, str]) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    warm = textwrap.dedent(
        """
        from blog import reads
        from blog.models import Article
        a = Article.objects.get(slug="article-4")
        reads.article(a.pk); reads.latest()
        print(a.pk)
        """
    )
    pk = int(manage(seeded, "shell", "-c", warm).stdout.strip().splitlines()[-1])
    assert r.exists(f"article:{pk}") and r.exists("articles:latest")
    out = subprocess.run(
        [sys.executable, "sqlalchemy_app.py", "article-4", "Renamed by SQLAlchemy"],
        cwd=PROJECT,
        env=seeded,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"article:{pk}" in out.stdout
    assert not r.exists(f"article:{pk}") and not r.exists("articles:latest")
    check = textwrap.dedent(
        f"""
        from blog import reads
        from cachesync.contrib.django.models import Outbox
        assert reads.article({pk})["title"] == "Renamed by SQLAlchemy"
        print(Outbox.objects.filter(payload__contains="articles:latest").count())
        """
    )
    assert int(manage(seeded, "shell", "-c", check).stdout.strip().splitlines()[-1]) >= 1
