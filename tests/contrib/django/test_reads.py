"""The read API on Django models, on the private MariaDB and Redis.

In process (the suite's settings: ``raw_key``): ``Model.cache.get``/``get_by``,
values readable with ``cache.get`` of the alias, invalidation by the signal
hooks, async views (``aget``, ``asave``, ``adelete``). In child processes
(``settings_prefixed``: Django's DEFAULT key function with ``KEY_PREFIX`` and
``VERSION``, and a ``manage.py cachesync_listen``): a ``cache.set`` entry and a
read-API entry are both gone after a save, a ``QuerySet.update()`` and raw SQL.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache

from cachesync.errors import DeclarationError
from tests.contrib.django.conftest import ROOT, django_env
from tests.contrib.django.test_commands import Child
from tests.contrib.django.testapp.models import Article, Tag

pytestmark = pytest.mark.services


def test_get_and_get_by_read_through_and_cache_get_reads_the_same_entry(clean: Any) -> None:
    author = User.objects.create(username="ada")
    article = Article.objects.create(title="Hello", slug="hello", author=author, status=1)
    first = Article.cache.get(article.pk)
    assert first.title == "Hello"
    assert clean.exists(f"article:{article.pk}")
    # Django's cache API of the alias reads what the read API wrote (same key, same format).
    from_cache = cache.get(f"article:{article.pk}")
    assert isinstance(from_cache, Article) and from_cache.title == "Hello"
    assert Article.cache.get_by(slug="hello").pk == article.pk
    assert clean.exists("article:by-slug:hello")
    assert Article.cache.key(slug="hello") == "article:by-slug:hello"
    assert Article.cache.get(10_000) is None and clean.exists("article:10000")
    with pytest.raises(DeclarationError, match="no declared key is rendered from exactly"):
        Article.cache.get_by(title="Hello")


def test_a_save_invalidates_the_read_api_entries(clean: Any) -> None:
    tag = Tag.objects.create(name="old")
    assert Tag.cache.get(tag.pk).name == "old"
    assert Tag.cache.get_by(name="old").pk == tag.pk
    tag.name = "new"
    tag.save()
    assert not clean.exists(f"tag:{tag.pk}") and not clean.exists("tag:by-name:old")
    assert Tag.cache.get(tag.pk).name == "new"


def test_a_transaction_never_caches_its_own_uncommitted_write(clean: Any) -> None:
    from django.db import transaction

    tag = Tag.objects.create(name="committed")
    with pytest.raises(RuntimeError), transaction.atomic():
        tag.name = "never committed"
        tag.save()
        assert Tag.cache.get(tag.pk).name == "never committed"  # its own view...
        assert not clean.exists(f"tag:{tag.pk}"), "...must not be cached"
        raise RuntimeError("roll back")
    assert Tag.cache.get(tag.pk).name == "committed"
    from cachesync.contrib.django import cached

    @cached("tag:by-name:{name}")
    def tag_id(name: str) -> int:
        return int(Tag.objects.get(name=name).pk)

    with transaction.atomic():  # @cached follows the same rule
        tag.name = "saved"
        tag.save()
        assert tag_id("saved") == tag.pk
        assert not clean.exists("tag:by-name:saved")
        transaction.set_rollback(True)
    clean.delete(f"tag:{tag.pk}")
    with transaction.atomic():  # reading a row it did not write: READ COMMITTED, cached
        assert Tag.cache.get(tag.pk).name == "committed"
        assert clean.exists(f"tag:{tag.pk}")


def test_async_views_aget_asave_adelete(clean: Any) -> None:
    tag = Tag.objects.create(name="async-1")

    async def view() -> list[Any]:
        seen = [(await Tag.cache.aget(tag.pk)).name]
        seen.append((await Tag.cache.aget_by(name="async-1")).pk)
        assert clean.exists(f"tag:{tag.pk}")
        loaded = await Tag.objects.aget(pk=tag.pk)
        loaded.name = "async-2"
        await loaded.asave()  # the fast path runs in Django's sync thread, after commit
        seen.append(clean.exists(f"tag:{tag.pk}"))
        seen.append((await Tag.cache.aget(tag.pk)).name)
        await loaded.adelete()
        seen.append(clean.exists(f"tag:{tag.pk}"))
        seen.append(await Tag.cache.aget(tag.pk))
        return seen

    assert asyncio.run(view()) == ["async-1", tag.pk, 0, "async-2", 0, None]


def test_default_key_function_with_prefix_and_version_save_update_and_raw_sql(
    clean: Any, tmp_path: Path, es_url: str
) -> None:
    import redis

    from tests.contrib.django.settings_prefixed import PREFIXED_REDIS_URL

    redis.Redis.from_url(PREFIXED_REDIS_URL).flushdb()
    run = uuid.uuid4().hex[:8]
    env = django_env("tests.contrib.django.settings_prefixed")
    listen = Child.__new__(Child)
    listen.log = tmp_path / "listen.log"
    listen._out = listen.log.open("w")
    listen.process = subprocess.Popen(
        [sys.executable, "-m", "django", "cachesync_listen", "--es-url", es_url,
         "--server-id", str(50_000 + int(run, 16) % 10_000), "--name", f"csdj-px-{run}"],
        cwd=ROOT, env=env, stdout=listen._out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        listen.wait_for("streaming binlog", timeout=60)
        scenario = subprocess.run(
            [sys.executable, "-m", "tests.contrib.django.prefixed_scenario"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        print(scenario.stdout)
        assert scenario.returncode == 0, scenario.stdout + scenario.stderr + listen.output()
        for step in ("save: both gone", "QuerySet.update: both gone", "raw SQL: both gone"):
            assert step in scenario.stdout
    finally:
        listen.close()


def test_json_serializer_round_trips_django_instances_and_fk_lookups(clean: Any) -> None:
    from cachesync.contrib.django import Reads, cache_for
    from cachesync.serializers import JsonSerializer

    author = User.objects.create(username="bo")
    article = Article.objects.create(title="T", slug="t-json", author=author, status=1)
    reads = cache_for(Article, Reads(ttl=30, serializer=JsonSerializer()))
    try:
        assert reads.get(article.pk).title == "T"
        assert clean.get(f"article:{article.pk}").startswith(b'{"__cachesync__":"model"')
        hit = reads.get(article.pk)
        assert type(hit) is Article and hit.author_id == author.pk and hit.slug == "t-json"
        assert not hit._state.adding  # from_db: saving it updates the row
        assert 0 < clean.pttl(f"article:{article.pk}") <= 30_000
        # A related instance is accepted for a foreign key, as in a QuerySet filter.
        key = reads.key(author=author, id=article.pk)
        assert key == f"author:{author.pk}:article:{article.pk}"
        assert reads.get_by(author=author, id=article.pk).pk == article.pk
    finally:
        cache_for(Article, Reads())
