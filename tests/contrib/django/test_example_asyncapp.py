"""``example_project/asyncapp.py``: the Starlette + AsyncSession API on the seeded example blog.

Run as its users run it, in a child process configured by ``CACHESYNC_*``
variables only, through Starlette's ``TestClient``: a read through
``Article.cache.aget_by`` is cached under the declared key, a rename committed
by an ``AsyncSession`` deletes it (on cachesync's worker thread), and the next
read shows the new title.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.contrib.django.test_example_project import PROJECT, example_env, seeded

pytestmark = pytest.mark.services

__all__ = ["example_env", "seeded"]  # the module-scoped fixtures of the example project


def test_async_app_reads_through_and_its_commits_invalidate(seeded: dict[str, str]) -> None:
    script = textwrap.dedent(
        """
        import os, time
        import redis
        from starlette.testclient import TestClient
        import asyncapp
        from cachesync.fastpath import fast_path

        r = redis.Redis.from_url(os.environ["CACHESYNC_REDIS_URL"])
        with TestClient(asyncapp.app) as client:
            first = client.get("/articles/by-slug/article-2")
            assert first.status_code == 200, first.text
            pk = first.json()["id"]
            assert r.exists("article:by-slug:article-2"), "the read was not cached"
            again = client.get("/articles/by-slug/article-2").json()
            assert again == first.json()
            renamed = client.post(f"/articles/{pk}/title", json={"title": "Renamed async"})
            assert renamed.status_code == 200, renamed.text
            assert fast_path.wait_idle(10)
            assert not r.exists("article:by-slug:article-2"), "the commit did not invalidate"
            assert client.get("/articles/by-slug/article-2").json()["title"] == "Renamed async"
            assert client.get("/articles/by-slug/nope").status_code == 404
            assert client.post(f"/articles/{pk}/title", json={}).status_code == 400
        print("async app ok", pk)
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
    assert "async app ok" in result.stdout
