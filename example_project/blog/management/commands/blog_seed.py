"""``manage.py blog_seed``: sample users, tags and articles (idempotent; ``--reset`` starts over)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from blog.models import DRAFT, PUBLISHED, Article, Tag


class Command(BaseCommand):
    help = "Create sample users, tags and articles for the example blog."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--articles", type=int, default=20, help="articles to have (default 20)"
        )
        parser.add_argument("--reset", action="store_true", help="delete blog data first")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        if options["reset"]:
            Article.objects.all().delete()
            Tag.objects.all().delete()
            User.objects.filter(username__in=["alice", "bob"]).delete()
        alice, _ = User.objects.get_or_create(username="alice", defaults={"first_name": "Alice"})
        bob, _ = User.objects.get_or_create(username="bob", defaults={"first_name": "Bob"})
        tags = [Tag.objects.get_or_create(name=n)[0] for n in ("python", "django", "redis")]
        for i in range(1, options["articles"] + 1):
            article, created = Article.objects.get_or_create(
                slug=f"article-{i}",
                defaults={
                    "title": f"Article {i}",
                    "author": alice if i % 2 else bob,
                    "body": f"Body of article {i}.",
                    "status": PUBLISHED if i % 3 else DRAFT,
                },
            )
            if created:
                article.tags.set(tags[: 1 + i % 3])
        self.stdout.write(
            f"{User.objects.count()} users, {Tag.objects.count()} tags, "
            f"{Article.objects.count()} articles "
            f"({Article.objects.filter(status=PUBLISHED).count()} published)"
        )
