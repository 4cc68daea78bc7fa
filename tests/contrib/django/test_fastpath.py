"""The Django fast path on the real MariaDB and Redis: keys go after the outermost commit, and only then."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import signals
from django.test.utils import CaptureQueriesContext

from cachesync.codec import decode_actions
from cachesync.contrib.django import no_sync, register, unregister
from cachesync.fastpath import fast_path
from cachesync.outbox.schema import KIND_INTENT, STATE_PENDING
from tests.contrib.django.testapp.models import (
    Article,
    Place,
    Plain,
    PublishedArticle,
    Restaurant,
    Tag,
)

pytestmark = pytest.mark.services


def seed(redis: Any, *keys: str) -> None:
    for key in keys:
        redis.set(key, "cached")


def present(redis: Any, *keys: str) -> set[str]:
    return {k for k in keys if redis.exists(k)}


@pytest.fixture
def author(clean: Any) -> User:
    return User.objects.create(username="ada")


@pytest.fixture
def deliveries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every batch the fast path delivers, still deleting for real."""
    calls: list[list[str]] = []
    deliver = fast_path.deliver

    def spy(keys: Any) -> None:
        batch = list(keys)
        calls.append(batch)
        deliver(batch)

    monkeypatch.setattr(fast_path, "deliver", spy)
    yield calls


def article_keys(article: Article) -> list[str]:
    return [
        f"article:{article.pk}",
        f"article:by-slug:{article.slug}",
        f"author:{article.author_id}:article:{article.pk}",
        f"author:{article.author_id}:articles",
    ]


def outbox_rows() -> list[tuple[str, str, str]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT kind, state, payload FROM cachesync_outbox ORDER BY id")
        return list(cursor.fetchall())


def test_keys_are_deleted_after_the_outermost_commit_not_before(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    with transaction.atomic():
        article = Article.objects.create(title="T", slug="t", author=author)
        seed(clean, *article_keys(article))
        with transaction.atomic():
            article.title = "T2"
            article.save()
        assert present(clean, *article_keys(article)) == set(article_keys(article))
    assert present(clean, *article_keys(article)) == set()
    assert len(deliveries) == 2  # the outer level and the released savepoint


def test_one_transaction_without_savepoints_is_one_redis_call(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    with transaction.atomic():
        articles = [
            Article.objects.create(title=f"T{i}", slug=f"s{i}", author=author) for i in range(3)
        ]
        for a in articles:
            a.status = 1
            a.save()
    assert len(deliveries) == 1
    assert set(deliveries[0]) == {k for a in articles for k in article_keys(a)}


def test_rollback_deletes_nothing_and_leaves_no_outbox_row(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    article = Article.objects.create(title="T", slug="t", author=author)
    clean.flushdb()
    deliveries.clear()
    before = outbox_rows()
    seed(clean, *article_keys(article), "article:by-slug:renamed")
    with pytest.raises(RuntimeError), transaction.atomic():
        article.slug = "renamed"
        article.save()
        Article.objects.create(title="U", slug="u", author=author)
        raise RuntimeError("roll back")
    assert deliveries == []
    assert present(clean, *article_keys(article)) == set(article_keys(article))
    assert outbox_rows() == before


def test_rolled_back_savepoint_drops_only_its_own_keys(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    kept = Article.objects.create(title="K", slug="k", author=author)
    undone = Article.objects.create(title="U", slug="u", author=author)
    undone_keys = article_keys(undone)
    seed(clean, *article_keys(kept), *undone_keys)
    deliveries.clear()
    with transaction.atomic():
        kept.title = "K2"
        kept.save()
        try:
            with transaction.atomic():
                undone.slug = "u2"
                undone.save()
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        with transaction.atomic():  # a later savepoint that commits still counts
            Tag.objects.create(name="python")
    assert present(clean, *article_keys(kept)) == set()
    # undone's keys stay: its change was rolled back (and the author list key it
    # shares with kept is deleted by kept's change)
    shared = f"author:{author.pk}:articles"
    assert present(clean, *undone_keys) == set(undone_keys) - {shared}
    delivered = {k for batch in deliveries for k in batch}
    assert "article:by-slug:u2" not in delivered
    assert "tag:by-name:python" in delivered
    Article.objects.get(slug="u")  # the database agrees


def test_rollback_of_an_outer_savepoint_drops_its_released_children(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    with transaction.atomic():
        try:
            with transaction.atomic():
                with transaction.atomic():
                    Tag.objects.create(name="inner")
                raise RuntimeError("roll back the middle savepoint")
        except RuntimeError:
            pass
        Tag.objects.create(name="outer")
    delivered = {k for batch in deliveries for k in batch}
    assert "tag:by-name:outer" in delivered
    assert "tag:by-name:inner" not in delivered


def test_autocommit_write_deletes_right_after_the_write(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    article = Article.objects.create(title="T", slug="t", author=author)
    assert deliveries and set(deliveries[-1]) == set(article_keys(article))
    seed(clean, *article_keys(article))
    article.title = "again"
    article.save()
    assert present(clean, *article_keys(article)) == set()


def test_a_renamed_db_column_field_drops_the_old_and_the_new_key(clean: Any, author: User) -> None:
    article = Article.objects.create(title="T", slug="old-slug", author=author)
    seed(clean, "article:by-slug:old-slug", "article:by-slug:new-slug")
    # an instance that never saw the old value: the before image comes from the database
    stale = Article(pk=article.pk, title="T", slug="new-slug", author=author)
    stale.save()
    assert present(clean, "article:by-slug:old-slug", "article:by-slug:new-slug") == set()


def test_foreign_key_by_name_and_by_attname_and_a_moved_row(clean: Any, author: User) -> None:
    other = User.objects.create(username="bob")
    article = Article.objects.create(title="T", slug="t", author=author)
    old = [f"author:{author.pk}:article:{article.pk}", f"author:{author.pk}:articles"]
    new = [f"author:{other.pk}:article:{article.pk}", f"author:{other.pk}:articles"]
    seed(clean, *old, *new)
    article.author = other
    article.save()
    assert present(clean, *old, *new) == set()


def test_update_fields_that_touch_no_key_skip_the_before_read(clean: Any, author: User) -> None:
    tag = Tag.objects.create(name="x")
    seed(clean, f"tag:{tag.pk}", "tag:by-name:x")
    with CaptureQueriesContext(connection) as queries:
        tag.save(update_fields=["name"])  # a key field: read the before image
    assert sum("SELECT" in q["sql"] for q in queries.captured_queries) == 1
    place = Place.objects.create(name="p")
    with CaptureQueriesContext(connection) as queries:
        Restaurant.objects.create(name="r", cuisine="x").save(update_fields=["cuisine"])
    assert all(
        "`csdj_place`.`name`" not in q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith("SELECT")
    )
    assert present(clean, f"tag:{tag.pk}", "tag:by-name:x") == set()
    assert place.pk


def test_keys_of_the_primary_key_alone_need_no_before_read(clean: Any) -> None:
    """An update cannot change keys that name only the pk: save() pays no SELECT for them.

    Also when the pk was changed in memory: Django then writes the row of the new
    pk, whose keys are the after image's.
    """
    register(Plain, keys=["plain:{pk}"])
    try:
        one = Plain.objects.create(name="one")
        two = Plain.objects.create(name="two")
        seed(clean, f"plain:{one.pk}", f"plain:{two.pk}")
        one.name = "renamed"
        with CaptureQueriesContext(connection) as queries:
            one.save()
        assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
        assert present(clean, f"plain:{one.pk}", f"plain:{two.pk}") == {f"plain:{two.pk}"}
        one.pk = two.pk  # the UPDATE goes to row two
        one.save()
        assert present(clean, f"plain:{two.pk}") == set()
        assert Plain.objects.get(pk=two.pk).name == "renamed"
        # No before image to read, so no pre_save receiver at all: Django's signal costs
        # nothing for a sender without one. A key naming another field needs it again.
        assert not signals.pre_save.has_listeners(Plain)
        assert signals.post_save.has_listeners(Plain)
        register(Plain, keys=["plain:{pk}", "plain:by-name:{name}"])
        assert signals.pre_save.has_listeners(Plain)
        seed(clean, "plain:by-name:renamed")
        two = Plain.objects.get(pk=two.pk)
        two.name = "again"
        two.save()
        assert present(clean, "plain:by-name:renamed") == set()
    finally:
        unregister(Plain)


def test_delete_and_queryset_delete_and_deferred_fields(clean: Any, author: User) -> None:
    a1 = Article.objects.create(title="1", slug="one", author=author)
    a2 = Article.objects.create(title="2", slug="two", author=author)
    a3 = Article.objects.create(title="3", slug="three", author=author)
    seed(clean, *article_keys(a1), *article_keys(a2), *article_keys(a3))
    a1.delete()
    assert present(clean, *article_keys(a1)) == set()
    Article.objects.only("id").get(pk=a2.pk).delete()  # slug deferred: loaded before the delete
    assert present(clean, *article_keys(a2)) == set()
    Article.objects.filter(pk=a3.pk).delete()
    assert present(clean, *article_keys(a3)) == set()


def test_cascade_delete_of_the_author(clean: Any, author: User) -> None:
    article = Article.objects.create(title="1", slug="one", author=author)
    seed(clean, *article_keys(article), f"user:{author.pk}", "user:by-name:ada")
    author.delete()
    assert present(clean, *article_keys(article), f"user:{author.pk}", "user:by-name:ada") == set()


def test_register_on_auth_user(clean: Any) -> None:
    user = User.objects.create_user(username="grace", password="pw")
    seed(clean, f"user:{user.pk}", "user:by-name:grace", "user:by-name:hopper")
    user.username = "hopper"
    user.save()
    assert present(clean, f"user:{user.pk}", "user:by-name:grace", "user:by-name:hopper") == set()


def test_proxy_and_multi_table_child_saves_are_synced(clean: Any, author: User) -> None:
    article = PublishedArticle.objects.create(title="P", slug="p", author=author)
    seed(clean, *article_keys(article))
    article.title = "P2"
    article.save()
    assert present(clean, *article_keys(article)) == set()

    restaurant = Restaurant.objects.create(name="Chez", cuisine="fr")
    seed(clean, f"place:{restaurant.pk}", "place:by-name:Chez", "place:by-name:Chez Nous")
    restaurant.name = "Chez Nous"
    restaurant.save()
    assert (
        present(clean, f"place:{restaurant.pk}", "place:by-name:Chez", "place:by-name:Chez Nous")
        == set()
    )
    seed(clean, "place:by-name:Chez Nous")
    restaurant.delete()
    assert present(clean, "place:by-name:Chez Nous") == set()


def test_many_to_many_through_registered_model(clean: Any, author: User) -> None:
    article = Article.objects.create(title="T", slug="t", author=author)
    python, django_tag = Tag.objects.create(name="python"), Tag.objects.create(name="django")
    keys = [
        f"article:{article.pk}:tags",
        f"tag:{python.pk}:articles",
        f"tag:{django_tag.pk}:articles",
    ]
    seed(clean, *keys)
    article.tags.add(python, django_tag)
    assert present(clean, *keys) == set()

    seed(clean, *keys)
    article.tags.remove(python)
    assert present(clean, *keys) == {f"tag:{django_tag.pk}:articles"}

    seed(clean, *keys)
    django_tag.articles.clear()  # reverse side, pk_set is None
    assert present(clean, *keys) == {f"tag:{python.pk}:articles"}

    seed(clean, *keys)
    with pytest.raises(RuntimeError), transaction.atomic():
        python.articles.add(article)  # reverse add, rolled back
        raise RuntimeError
    assert present(clean, *keys) == set(keys)


def test_invalidates_writes_one_outbox_row_per_transaction(clean: Any, author: User) -> None:
    other = User.objects.create(username="bob")
    with transaction.atomic():
        a = Article.objects.create(title="1", slug="one", author=author)
        Article.objects.create(title="2", slug="two", author=author)
        a.author = other
        a.save()
        Tag.objects.create(name="no-intents")
    rows = outbox_rows()
    assert len(rows) == 1
    kind, state, payload = rows[0]
    assert (kind, state) == (KIND_INTENT, STATE_PENDING)
    (action,) = decode_actions(payload)
    assert set(action.keys) == {f"author:{author.pk}:articles", f"author:{other.pk}:articles"}


def test_outbox_row_of_a_rolled_back_savepoint_goes_with_it(clean: Any, author: User) -> None:
    other = User.objects.create(username="bob")
    with transaction.atomic():
        Article.objects.create(title="1", slug="one", author=author)
        try:
            with transaction.atomic():
                Article.objects.create(title="2", slug="two", author=other)
                raise RuntimeError
        except RuntimeError:
            pass
    payloads = [decode_actions(p)[0].keys for _, _, p in outbox_rows()]
    assert payloads == [(f"author:{author.pk}:articles",)]


def test_autocommit_delete_writes_its_intent_in_the_delete_transaction(
    clean: Any, author: User
) -> None:
    article = Article.objects.create(title="1", slug="one", author=author)
    assert len(outbox_rows()) == 1
    article.delete()
    assert len(outbox_rows()) == 2


def test_no_sync_collects_nothing(clean: Any, author: User, deliveries: list[list[str]]) -> None:
    with no_sync():
        article = Article.objects.create(title="T", slug="t", author=author)
        seed(clean, *article_keys(article))
        article.title = "T2"
        article.save()
    assert deliveries == []
    assert present(clean, *article_keys(article)) == set(article_keys(article))
    assert outbox_rows() == []


def test_queryset_update_is_left_to_the_binlog_path(clean: Any, author: User) -> None:
    article = Article.objects.create(title="T", slug="t", author=author)
    seed(clean, *article_keys(article))
    Article.objects.filter(pk=article.pk).update(title="bulk")
    assert present(clean, *article_keys(article)) == set(article_keys(article))


def test_unsynced_models_get_no_receivers() -> None:
    for signal in (signals.pre_save, signals.post_save, signals.pre_delete, signals.post_delete):
        assert not signal.has_listeners(Plain)
        assert signal.has_listeners(Article)
    assert signals.m2m_changed.has_listeners(Article.tags.through)


def test_a_dead_redis_never_breaks_the_commit(
    clean: Any, author: User, caplog: pytest.LogCaptureFixture
) -> None:
    from cachesync import config
    from tests.support.services import free_port

    settings = config.get_settings()
    config.configure(
        **{**_settings_dict(settings), "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    fast_path.configure()
    try:
        with transaction.atomic():
            article = Article.objects.create(title="T", slug="t", author=author)
        assert Article.objects.filter(pk=article.pk).exists()
        assert "sidecar will delete them" in caplog.text or "not deleted" in caplog.text
    finally:
        config.configure(**_settings_dict(settings))
        fast_path.configure()


def _settings_dict(settings: Any) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def test_manual_transaction_management_writes_and_commits(clean: Any, author: User) -> None:
    transaction.set_autocommit(False)
    try:
        Article.objects.create(title="T", slug="t", author=author)
        transaction.commit()
    finally:
        transaction.set_autocommit(True)
    assert len(outbox_rows()) == 1  # the intent row was written in that transaction


def test_released_savepoints_write_their_intents_into_the_transaction_row(
    clean: Any, author: User
) -> None:
    # One outbox row per outermost transaction, as the SQLAlchemy hooks write it.
    other, third = User.objects.create(username="bob"), User.objects.create(username="cy")
    with transaction.atomic():
        Article.objects.create(title="1", slug="one", author=author)
        with transaction.atomic():
            Article.objects.create(title="2", slug="two", author=other)
        with transaction.atomic(), transaction.atomic():
            Article.objects.create(title="3", slug="three", author=third)
    rows = outbox_rows()
    assert len(rows) == 1
    (action,) = decode_actions(rows[0][2])
    assert set(action.keys) == {f"author:{u.pk}:articles" for u in (author, other, third)}


def test_an_outbox_row_inserted_in_a_rolled_back_savepoint_is_written_again(
    clean: Any, author: User
) -> None:
    other = User.objects.create(username="bob")
    with transaction.atomic():
        try:
            with transaction.atomic():
                Article.objects.create(title="1", slug="one", author=other)  # inserts the row
                raise RuntimeError
        except RuntimeError:
            pass
        Article.objects.create(title="2", slug="two", author=author)
    payloads = [decode_actions(p)[0].keys for _, _, p in outbox_rows()]
    assert payloads == [(f"author:{author.pk}:articles",)]


def test_a_rolled_back_transaction_leaves_nothing_for_the_next_one(
    clean: Any, author: User, deliveries: list[list[str]]
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        with transaction.atomic():
            Tag.objects.create(name="gone")
        raise RuntimeError
    with transaction.atomic():
        Tag.objects.create(name="kept")
    delivered = [k for batch in deliveries for k in batch]
    assert "tag:by-name:kept" in delivered
    assert "tag:by-name:gone" not in delivered


def test_django_discards_the_on_commit_callbacks_of_a_rolled_back_savepoint_only() -> None:
    """The contract the level markers stand on (Django has no savepoint events)."""
    from cachesync.contrib.django.levels import _pending

    ran: list[str] = []

    def callback(name: str) -> Any:
        def run() -> None:
            ran.append(name)

        return run

    released, rolled_back, outer = callback("released"), callback("rolled back"), callback("outer")
    with transaction.atomic():
        transaction.on_commit(outer)
        with transaction.atomic():
            transaction.on_commit(released)
        try:
            with transaction.atomic():
                transaction.on_commit(rolled_back)
                raise RuntimeError
        except RuntimeError:
            pass
        assert _pending(connection, outer) and _pending(connection, released)
        assert not _pending(connection, rolled_back)
    assert ran == ["outer", "released"]
