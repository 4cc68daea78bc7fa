"""The narrated cachesync demo; ``scripts/demo`` runs it after setting up the machine.

It uses the example blog (Django) on a fresh database of the private MariaDB,
a Redis of its own (so stopping it disturbs nobody, and it saves to disk on
shutdown: it comes back with the OLD cached values, which is exactly what
loses invalidations in a plain cache-aside setup), the shared Elasticsearch-API
server, and the real ``manage.py cachesync_listen`` and ``cachesync_retry``
processes.

By default it runs on the embedded retry path, as a team without Kafka would:
no ``kafka_bootstrap``, so failures wait in the outbox table of the blog's own
database and ``cachesync_retry`` retries them from there. With
``CACHESYNC_DEMO_KAFKA=1`` it configures the shared Kafka broker and the same
failures go through the Kafka retry topic instead. The variable is explicit on
purpose: ``scripts/demo`` exports every private service's URL, Kafka's included,
so "Kafka is in the environment" would always be true.

One chapter makes one document permanently unindexable (a mapping that the
document breaks): it must end as exactly one dead letter while every other
change keeps flowing, and the demo fails on any other stale key or document.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"
sys.path[:0] = [str(ROOT), str(EXAMPLE)]

from tests.support import services  # noqa: E402  (the project's own service manager)

RUN = time.strftime("%H%M%S")
#: ``CACHESYNC_DEMO_KAFKA=1``: the retry path is Kafka; otherwise the outbox table.
USE_KAFKA = os.environ.get("CACHESYNC_DEMO_KAFKA", "") == "1"
#: A user id above a ``short``'s 32767: the demo's mapping types ``author_id`` as one,
#: so the article this user takes over is refused by Elasticsearch for good.
POISON_AUTHOR = 40000
DATABASE = "cachesync_demo"
LOGS = services.SERVICES_DIR / "demo"


def say(text: str = "") -> None:
    print(text, flush=True)


def chapter(title: str) -> None:
    say(f"\n\033[1m== {title}\033[0m")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
    """Poll *check* until true; the seconds it took. Fails the demo on timeout."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


class Demo:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.changes = 0
        #: cached keys seen holding a value, then seen deleted by cachesync
        self.invalidated = 0
        self.env: dict[str, str] = {}
        self.retry_topic = ""
        self.converge = 0.0
        self.stale_on_return = 0
        #: the document chapter 7 makes unindexable; the one dead letter the demo expects
        self.poison_id: int | None = None

    # --- set-up ---------------------------------------------------------------------------
    def start(self) -> None:
        chapter("Setting up")
        urls = services.start_all()
        LOGS.mkdir(parents=True, exist_ok=True)
        self.redis = services.start_redis(
            dir=LOGS / f"redis-{RUN}", extra_args=["--save", "3600 1"]
        )
        services.mariadb_sql(f"DROP DATABASE IF EXISTS {DATABASE}; CREATE DATABASE {DATABASE}")
        self.env = {
            **os.environ,
            **urls,
            "CACHESYNC_MYSQL_URL": urls["CACHESYNC_MYSQL_URL"].rsplit("/", 1)[0] + "/" + DATABASE,
            "CACHESYNC_REDIS_URL": self.redis.url,
            # The replica server_id and the retry/dead-letter topics derive from the name.
            "CACHESYNC_NAME": f"demo-{RUN}",
            "DJANGO_SETTINGS_MODULE": "blogsite.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLE), str(ROOT)]),
        }
        if not USE_KAFKA:
            # The embedded default: no kafka_bootstrap anywhere, this process's fast path included.
            self.env.pop("CACHESYNC_KAFKA_BOOTSTRAP", None)
            os.environ.pop("CACHESYNC_KAFKA_BOOTSTRAP", None)
        os.environ.update(self.env)
        self.retry_topic = f"cachesync.demo-{RUN}.retry"  # Settings.resolved_retry_topic
        say(f"  database {DATABASE}, cache Redis {self.redis.url} (its own, saves on shutdown)")
        say(
            f"  retry path: Kafka topic {self.retry_topic} (CACHESYNC_DEMO_KAFKA=1)"
            if USE_KAFKA
            else "  retry path: the outbox table cachesync_outbox in the same database "
            "(no Kafka; CACHESYNC_DEMO_KAFKA=1 uses Kafka)"
        )
        self.manage("migrate", "-v0")
        self.manage("blog_seed", "--articles", "30")
        import django

        django.setup()
        # The narration says what the fast path's warnings would (Redis is stopped on purpose).
        logging.getLogger("cachesync").setLevel(logging.CRITICAL)
        from elasticsearch import Elasticsearch

        self.es = Elasticsearch(urls["CACHESYNC_ES_URL"], request_timeout=10)
        for index in ("blog-articles", "blog-users"):
            self.es.indices.delete(index=index, ignore_unavailable=True)
        # Created before anything writes to it, as a team with an explicit mapping would:
        # every real author id fits a short; chapter 7's guest author does not.
        self.es.indices.create(
            index="blog-articles", mappings={"properties": {"author_id": {"type": "short"}}}
        )
        self.cache = __import__("redis").Redis.from_url(self.redis.url, socket_timeout=1)

        listen = self.spawn("listen", "cachesync_listen")
        wait_for("the sidecar to start", lambda: b"leading pipeline" in listen.read_bytes(), 30)
        self.spawn("retry", "cachesync_retry", "--retry-policy", "fast")
        say("  sidecar (manage.py cachesync_listen) and retry consumer (cachesync_retry) running")
        for model in ("blog.Article", "auth.User"):
            self.manage("cachesync_reindex", model, "--quiet")
        say("  initial search index built (manage.py cachesync_reindex)")

    def manage(self, *args: str) -> None:
        """Run a management command; its output goes to the demo's log folder."""
        with (LOGS / f"manage-{RUN}.log").open("ab") as out:
            subprocess.run(
                [sys.executable, str(EXAMPLE / "manage.py"), *args],
                env=self.env,
                check=True,
                cwd=EXAMPLE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def dead_letters(self) -> list[dict[str, Any]]:
        """``manage.py cachesync_dlq list --json``: what a user would look at, wherever the
        dead letters live (the outbox table, or the Kafka dead-letter topic as well)."""
        import json

        done = subprocess.run(
            [sys.executable, str(EXAMPLE / "manage.py"), "cachesync_dlq", "list", "--json"],
            env=self.env,
            check=True,
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def spawn(self, name: str, *args: str) -> Path:
        log = LOGS / f"{name}-{RUN}.log"
        out = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "manage.py"), *args],
            env=self.env,
            cwd=EXAMPLE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return log

    def stop(self) -> bool:
        """SIGTERM the sidecar and the retry consumer; True when both exited cleanly."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        clean = True
        for proc in self.procs:
            try:
                clean &= proc.wait(30) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                clean = False
        self.redis.stop()
        return clean

    # --- helpers --------------------------------------------------------------------------
    def articles(self) -> list[Any]:
        from blog.models import Article

        return list(Article.objects.order_by("id"))

    def cache_all(self) -> None:
        """Read every article through the cache (a miss loads and fills it)."""
        from blog import reads

        for a in self.articles():
            reads.article(a.pk)

    def stale_keys(self) -> list[str]:
        """Cached articles whose value differs from what the database says now."""
        from blog import reads

        from cachesync.reads import current_store

        serializer = current_store().serializer  # the format the read API writes in
        stale = []
        for a in self.articles():
            raw = self.cache.get(f"article:{a.pk}")
            if raw is None or raw.startswith(serializer.marker):
                continue
            if serializer.loads(raw) != reads._article_dict(a):
                stale.append(f"article:{a.pk}")
        return stale

    # --- the scenario ---------------------------------------------------------------------
    def run(self) -> None:
        from blog import reads
        from blog.models import Article
        from django.db import connection, transaction

        chapter("1. Cached reads")
        first = self.articles()[0]
        t = time.perf_counter()
        reads.article(first.pk)
        miss = time.perf_counter() - t
        t = time.perf_counter()
        reads.article(first.pk)
        hit = time.perf_counter() - t
        say(
            f"  article:{first.pk} miss (database + fill) {miss * 1000:.1f} ms, hit {hit * 1000:.2f} ms"
        )

        chapter("2. A write through the ORM: the after-commit fast path")
        with transaction.atomic():
            first.title = "Caches that never lie"
            first.save()
        deleted = not self.cache.exists(f"article:{first.pk}")
        self.invalidated += deleted
        self.changes += 1
        say(f"  article:{first.pk} deleted right after COMMIT: {deleted} (no sidecar involved)")

        chapter("3. Raw SQL bulk UPDATE: only the binlog sees it")
        self.cache_all()
        with connection.cursor() as cursor:
            bulk = cursor.execute(
                "UPDATE blog_article SET views = views + 1, title = CONCAT(title, ' [bulk]') "
                "WHERE status = 1"
            )
        self.changes += bulk
        self.invalidated += bulk
        took = wait_for(
            "the sidecar to delete the bulk-updated keys",
            lambda: all(
                not self.cache.exists(f"article:{a.pk}") for a in Article.objects.filter(status=1)
            ),
        )
        say(
            f"  {bulk} rows changed by one statement the ORM never saw; the sidecar "
            f"deleted their keys within {took * 1000:.0f} ms of the commit"
        )
        self.cache_all()

        chapter("4. Redis stops; the application keeps writing")
        self.redis.stop()  # SIGTERM: Redis saves its data, the cached articles included
        say("  Redis stopped (it saved its data: it will come back with these cached articles)")
        slowest = 0.0
        drafts = self.articles()[1:4]
        for a in drafts:
            t = time.perf_counter()
            with transaction.atomic():
                a.status = 0  # back to draft: must leave the search index
                a.save()
            slowest = max(slowest, time.perf_counter() - t)
        with connection.cursor() as cursor:
            touched = cursor.execute("UPDATE blog_article SET title = CONCAT('Outage: ', title)")
        self.changes += len(drafts) + touched
        say(
            f"  {len(drafts)} ORM commits (slowest {slowest * 1000:.0f} ms: the fast path gives up "
            f"quickly) and a raw UPDATE of {touched} rows, all committed while Redis was down"
        )
        time.sleep(3)  # the sidecar retries briefly, then hands the deletes to the retry path
        if not USE_KAFKA:
            parked = self.outbox_counts()
            say(
                f"  the sidecar parked the deletes it could not apply in the outbox table: "
                f"{parked['pending']} row(s) pending there, nothing blocked"
            )

        chapter(
            "5. Redis is back: the retry consumer converges"
            + ("" if USE_KAFKA else " (manage.py cachesync_retry, from the outbox table)")
        )
        self.redis.start()
        stale_on_return = len(self.stale_keys())
        say(
            f"  Redis restarted with {stale_on_return} stale cached articles from before the outage"
        )
        self.converge = wait_for(
            "the retry consumer to delete every stale key", lambda: not self.stale_keys(), 90
        )
        say(f"  converged {self.converge:.2f} s after Redis returned: 0 stale keys")
        self.stale_on_return = stale_on_return
        self.invalidated += stale_on_return

        chapter("6. Search reflects the database")
        from cachesync.registry import default_registry
        from cachesync.verify import verify_index

        spec = default_registry.for_model("Article")

        def index_matches() -> bool:
            report = verify_index(connection.connection, self.es, spec, spec.projections[0])
            return report.ok

        wait_for("Elasticsearch to match the table", index_matches, 60)
        hits = self.es.search(index="blog-articles", query={"match": {"title": "outage"}}, size=100)
        found = {int(h["_id"]) for h in hits["hits"]["hits"]}
        published = set(Article.objects.filter(status=1).values_list("id", flat=True))
        say(
            f"  search 'outage' finds {len(found)} articles = the {len(published)} published ones: "
            f"{found == published}; the {len(drafts)} turned into drafts are gone: "
            f"{not (found & {a.pk for a in drafts})}"
        )

        self.dead_letter_chapter()

    def outbox_counts(self) -> dict[str, int]:
        """Rows of the outbox table per state, and ``parked``: the failures handed to it."""
        from cachesync.outbox.schema import KIND_FAILED
        from cachesync.outbox.store import OutboxStore

        store = OutboxStore.from_url(self.env["CACHESYNC_MYSQL_URL"])
        rows = [r for r in store.rows() if r["kind"] == KIND_FAILED]
        counts = {
            state: sum(1 for r in rows if r["state"] == state)
            for state in ("pending", "done", "dead")
        }
        store.engine.dispose()
        return {**counts, "parked": len(rows)}

    def dead_letter_chapter(self) -> None:
        from blog.models import Article
        from django.contrib.auth.models import User
        from django.db import connection, transaction

        chapter("7. A document Elasticsearch refuses for good: one dead letter, nothing blocked")
        poison, other = list(Article.objects.filter(status=1).order_by("id"))[:2]
        self.poison_id = poison.pk
        with transaction.atomic():
            guest = User.objects.create(id=POISON_AUTHOR, username="guest-author", is_active=True)
            poison.author = guest
            poison.title = "Written by a guest"
            poison.save()
        self.changes += 2
        say(
            f"  article {poison.pk} now has author_id {POISON_AUTHOR}; the index maps author_id "
            "as a short (max 32767), so Elasticsearch rejects its document (HTTP 400)"
        )
        # The change right after it must not wait for it: a write to another article.
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE blog_article SET title = 'Still flowing' WHERE id = %s", [other.pk]
            )
        self.changes += 1

        def other_indexed() -> bool:
            found = self.es.options(ignore_status=404).get(index="blog-articles", id=str(other.pk))
            body = found.body
            return bool(body.get("found")) and body["_source"]["title"] == "Still flowing"

        took = wait_for("the next change to reach Elasticsearch", other_indexed, 60)
        say(
            f"  the next change (article {other.pk}) was indexed {took:.2f} s later: stream flowing"
        )

        expected = f"blog-articles/{poison.pk}"
        letters: list[dict[str, Any]] = []

        def dead_letter_listed() -> bool:
            letters[:] = self.dead_letters()
            return any(expected in (line["key"] or "").split() for line in letters)

        took = wait_for("the rejected document to become a dead letter", dead_letter_listed, 90)
        say(f"  manage.py cachesync_dlq list, {took:.1f} s later (retries exhausted or refused):")
        for line in letters:
            error = " ".join(str(line["error"]).split())
            say(
                f"    {line['key']}  {line['reason']}  attempts={line['attempts']}  "
                f"[{line['dlq']}]\n      error: {error[:400]}"
            )

    def summary(self) -> None:
        from django.db import connection

        from cachesync.registry import default_registry
        from cachesync.verify import verify_index

        letters = self.dead_letters()
        expected = f"blog-articles/{self.poison_id}"
        unexpected = [line for line in letters if (line["key"] or "") != expected]
        spec = default_registry.for_model("Article")
        index = verify_index(connection.connection, self.es, spec, spec.projections[0])
        # The refused document keeps its old content in the index: that one is expected.
        drift = sorted(set(index.missing + index.stale + index.orphans) - {str(self.poison_id)})
        stale = self.stale_keys()
        chapter("Summary")
        say(f"  row changes            {self.changes}")
        say(f"  cached keys invalidated  {self.invalidated} (seen cached, then seen deleted)")
        say(f"  stale after Redis came back  {self.stale_on_return}")
        if USE_KAFKA:
            from cachesync.kafka.client import read_topic

            retries = sum(
                1
                for _ in read_topic(
                    self.env["CACHESYNC_KAFKA_BOOTSTRAP"], self.retry_topic, timeout=5
                )
            )
            say(f"  retry records          {retries} (Kafka topic {self.retry_topic})")
        else:
            outbox = self.outbox_counts()
            say(
                f"  parked in the outbox   {outbox['parked']} row(s): {outbox['done']} relayed, "
                f"{outbox['pending']} pending, {outbox['dead']} dead (table cachesync_outbox)"
            )
        say(f"  dead letters           {len(letters)} (expected 1: {expected})")
        say(f"  time to converge       {self.converge:.2f} s")
        say(f"  stale documents now    {len(drift)} (besides the refused one)")
        say(f"  stale keys now         {len(stale)}")
        if stale or drift or len(letters) != 1 or unexpected:
            raise SystemExit(
                "demo: FAILED: stale keys or documents remain, or the dead letters are not "
                f"exactly {expected} (got {[line['key'] for line in letters]})"
            )


def main() -> int:
    started = time.monotonic()
    demo = Demo()
    try:
        demo.start()
        demo.run()
        demo.summary()
    finally:
        clean = demo.stop()
    say(
        f"\nsidecar and retry consumer stopped {'cleanly' if clean else 'WITH ERRORS'}; "
        f"demo finished in {time.monotonic() - started:.0f} s; logs in {LOGS}"
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
