"""``manage.py cachesync_*``: the standalone CLI with Django's settings and models; clean SIGTERM stops.

Each command runs in a child ``python -m django`` process, as an operator would
run it, with no ``CACHESYNC_*`` variables and no ``--models``: the settings
come from ``settings.CACHESYNC`` / ``CACHES`` / ``DATABASES`` and the models
from the app registry. The pipeline name, server id and Kafka topics are unique
per run so that nothing here meets another suite's sidecar.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection

from tests.contrib.django.conftest import ROOT, django_env, run_django
from tests.contrib.django.testapp.models import Article

pytestmark = pytest.mark.services

RUN = uuid.uuid4().hex[:8]
NAME = f"csdj-{RUN}"
SERVER_ID = str(30_000 + int(RUN, 16) % 20_000)
TOPICS = ["--retry-topic", f"csdj.{RUN}.retry", "--dead-letter-topic", f"csdj.{RUN}.dead"]


class Child:
    """A long-running ``python -m django`` command whose output goes to a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / f"{args[0]}.log"
        self._out = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=django_env(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen; output:\n{self.output()}")

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._out.close()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Any]:
    started: list[Child] = []

    def start(*args: str) -> Child:
        started.append(Child(tmp_path, *args))
        return started[-1]

    yield start
    for c in started:
        c.close()


def test_listen_streams_raw_sql_changes_and_stops_cleanly_on_sigterm(
    clean: Any, child: Any, es_url: str
) -> None:
    listen = child("cachesync_listen", "--es-url", es_url, "--server-id", SERVER_ID, "--name", NAME)
    listen.wait_for("streaming binlog")
    assert "csdj_tag" in listen.output() and "auth_user" in listen.output()
    clean.set("tag:by-name:from-raw-sql", "cached")
    with connection.cursor() as cursor:  # no ORM signal: only the sidecar can see this
        cursor.execute("INSERT INTO csdj_tag (name) VALUES ('from-raw-sql')")
    deadline = time.monotonic() + 20
    while clean.exists("tag:by-name:from-raw-sql") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not clean.exists("tag:by-name:from-raw-sql"), listen.output()
    assert listen.terminate() == 0, listen.output()
    out = listen.output()
    assert "SIGTERM received" in out and "stopped after" in out
    assert "Traceback" not in out


def test_status_reports_the_checkpoint_of_the_pipeline(django_db: str) -> None:
    result = run_django("cachesync_status", "--name", NAME, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == NAME


def test_status_in_process_with_call_command(
    django_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("cachesync_status", cli_args=["--name", NAME, "--json"], verbosity=0)
    assert json.loads(capsys.readouterr().out)["name"] == NAME


def test_reindex_builds_the_projection_without_models_flag(clean: Any, es_url: str) -> None:
    from elasticsearch import Elasticsearch

    es = Elasticsearch(es_url)
    es.options(ignore_status=404).indices.delete(index="csdj-articles")
    author = User.objects.create(username="ada")
    Article.objects.create(title="shown", slug="a", author=author, status=1)
    Article.objects.create(title="draft", slug="b", author=author, status=0)
    result = run_django("cachesync_reindex", "csdj.Article", "--es-url", es_url, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    es.indices.refresh(index="csdj-articles")
    hits = es.search(index="csdj-articles", query={"match_all": {}})["hits"]["hits"]
    assert [h["_source"] for h in hits] == [{"title": "shown", "author": author.pk}]
    verified = run_django("cachesync_verify", "csdj.Article", "--es-url", es_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 rows, 1 documents, 0 missing, 0 stale, 0 orphans" in verified.stdout


def test_retry_consumer_starts_and_stops_cleanly_on_sigterm(
    django_db: str, child: Any, kafka_bootstrap: str
) -> None:
    retry = child("cachesync_retry", "--kafka-bootstrap", kafka_bootstrap, "--name", NAME, *TOPICS)
    retry.wait_for("cachesync retry: consuming", timeout=60)
    assert retry.terminate() == 0, retry.output()
    assert "Traceback" not in retry.output()


def test_dlq_list_with_a_nested_subcommand(django_db: str, kafka_bootstrap: str) -> None:
    result = run_django(
        "cachesync_dlq", "list", "--kafka-bootstrap", kafka_bootstrap, "--name", NAME, *TOPICS
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"0 dead letter(s) in csdj.{RUN}.dead" in result.stdout


def test_help_shows_django_and_cli_options() -> None:
    result = run_django("cachesync_reindex", "--help")
    assert result.returncode == 0, result.stderr
    assert "--settings" in result.stdout  # Django's
    assert "--batch-size" in result.stdout and "MODEL" in result.stdout  # cachesync reindex's
    assert "--redis-url" in result.stdout  # every setting, as on the standalone command


def test_invalid_settings_stop_the_command_before_it_starts() -> None:
    result = run_django("cachesync_status", settings_module="tests.contrib.django.settings_bad")
    assert result.returncode != 0
    assert "cachesync.E001" in result.stderr and "cachesync.E002" in result.stderr


def test_relay_once_applies_the_outbox_intents(clean: Any) -> None:
    author = User.objects.create(username="ada")
    Article.objects.create(title="T", slug="t", author=author)  # writes one intent row
    clean.set(f"author:{author.pk}:articles", "cached again after the fast path")
    result = run_django("cachesync_relay", "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "relayed 1 outbox row(s); pending: 0" in result.stdout
    assert not clean.exists(f"author:{author.pk}:articles")
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM cachesync_outbox")
        assert cursor.fetchall() == (("done",),)
