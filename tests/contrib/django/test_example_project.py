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
