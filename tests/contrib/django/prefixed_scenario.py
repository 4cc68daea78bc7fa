"""Run by ``test_reads.py`` in a child process with ``settings_prefixed`` (default key function).

``python -m tests.contrib.django.prefixed_scenario`` writes through the ORM, a
``QuerySet.update()`` and raw SQL while a ``manage.py cachesync_listen`` child
runs, and checks after each that both a ``cache.set`` entry and a read-API
entry are gone. Prints one line per step; exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys
import time

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.contrib.django.settings_prefixed"

import django

django.setup()

from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402

from tests.contrib.django.testapp.models import Tag  # noqa: E402


def gone(*keys: str, timeout: float = 30.0) -> bool:
    """Wait until none of the Redis keys exists (the sidecar may take a moment)."""
    client = cache._cache.get_client(write=False)  # Django's own redis-py client
    deadline = time.monotonic() + timeout
    while any(client.exists(k) for k in keys):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def populate(tag: Tag) -> list[str]:
    """A read-API entry (tag:{pk}) and an application cache.set entry (tag:by-name:{name})."""
    assert Tag.cache.get(tag.pk).name == tag.name
    cache.set(f"tag:by-name:{tag.name}", "set by the application")
    read_api, app = cache.make_key(f"tag:{tag.pk}"), cache.make_key(f"tag:by-name:{tag.name}")
    assert read_api == f"shop:3:tag:{tag.pk}", read_api
    # The read API's entry is readable through Django's cache API, in its format.
    from_cache = cache.get(f"tag:{tag.pk}")
    assert isinstance(from_cache, Tag) and from_cache.name == tag.name, from_cache
    assert cache.get(f"tag:by-name:{tag.name}") == "set by the application"
    return [read_api, app]


def main() -> int:
    Tag.objects.filter(name__startswith="px-").delete()
    tag = Tag.objects.create(name="px-1")
    steps = []

    keys = populate(tag)
    tag.name = "px-2"
    tag.save()  # the fast path deletes both at commit (autocommit)
    steps.append(("save", gone(*keys, timeout=0.5), keys))

    tag.refresh_from_db()
    keys = populate(tag)
    Tag.objects.filter(pk=tag.pk).update(name="px-3")  # no signal: the sidecar's job
    steps.append(("QuerySet.update", gone(*keys), keys))

    tag.refresh_from_db()
    keys = populate(tag)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE csdj_tag SET name = 'px-4' WHERE id = %s", [tag.pk])
    steps.append(("raw SQL", gone(*keys), keys))

    ok = True
    for name, passed, step_keys in steps:
        print(f"{name}: {'both gone' if passed else 'STILL THERE'} {step_keys}")
        ok = ok and passed
    tag.refresh_from_db()
    print(f"after all: Tag.cache.get -> {Tag.cache.get(tag.pk).name}")
    return 0 if ok and Tag.cache.get(tag.pk).name == "px-4" else 1


if __name__ == "__main__":
    sys.exit(main())
