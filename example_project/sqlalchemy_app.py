"""The example blog's tables seen from SQLAlchemy, kept in sync by ``cachesync.contrib.sqlalchemy``.

Side by side with the Django project in this folder: the SAME tables (created
by ``python manage.py migrate``) and the SAME declarations (the objects in
``blog/declarations.py``), so a write from either application - or raw SQL,
through the binlog sidecar - deletes the same keys::

    Django                                   SQLAlchemy
    class Article(CacheSyncModel,            class Article(CacheSyncMixin, Base):
                  models.Model):                 __tablename__ = "blog_article"
        slug = models.SlugField(                 slug = mapped_column("url_slug", ...)
            db_column="url_slug")
        __cachesync__ = ARTICLE                  __cachesync__ = ARTICLE
    INSTALLED_APPS += [                      install(SessionLocal, outbox=OUTBOX)
        "cachesync.contrib.django"]

Run it as a script to rename an article through SQLAlchemy (configured by the
same ``CACHESYNC_*`` variables as the Django project)::

    python example_project/sqlalchemy_app.py article-1 "A new title"
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    SmallInteger,
    String,
    Text,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))  # blog.declarations, run as a script

from blog.declarations import ARTICLE, ARTICLE_TAG, TAG, USER

from cachesync.connections import sql_engine
from cachesync.contrib.sqlalchemy import CacheSyncMixin, install, outbox_table, spec_for
from cachesync.planning import plan_keys

DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:33061/cachesync"


def _utcnow() -> dt.datetime:
    # Django (USE_TZ) stores naive UTC in MySQL DATETIME columns; do the same.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(CacheSyncMixin, Base):
    """Django's ``auth_user`` table (only the columns this script uses are required)."""

    __tablename__ = "auth_user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    first_name: Mapped[str] = mapped_column(String(150), default="")
    last_name: Mapped[str] = mapped_column(String(150), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password: Mapped[str] = mapped_column(String(128), default="!")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_staff: Mapped[bool] = mapped_column(Boolean, default=False)
    is_superuser: Mapped[bool] = mapped_column(Boolean, default=False)
    last_login: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    date_joined: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow)

    __cachesync__ = USER


class Tag(CacheSyncMixin, Base):
    __tablename__ = "blog_tag"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)

    __cachesync__ = TAG


class Article(CacheSyncMixin, Base):
    __tablename__ = "blog_article"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column("url_slug", String(200), unique=True)  # attr != column
    author_id: Mapped[int] = mapped_column(ForeignKey("auth_user.id"))
    body: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(SmallInteger, default=0)
    views: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow)

    __cachesync__ = ARTICLE


class ArticleTag(CacheSyncMixin, Base):
    """The link table Django's ``Article.tags`` created; tags are part of the cached article."""

    __tablename__ = "blog_article_tags"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("blog_article.id"))
    tag_id: Mapped[int] = mapped_column(ForeignKey("blog_tag.id"))

    __cachesync__ = ARTICLE_TAG


#: The shared outbox table (created by the Django migration ``cachesync 0001``).
OUTBOX = outbox_table(Base.metadata)

engine = sql_engine(os.environ.get("CACHESYNC_MYSQL_URL", DEFAULT_MYSQL_URL))
SessionLocal = sessionmaker(engine, expire_on_commit=False)
install(SessionLocal, outbox=OUTBOX)


def rename(slug: str, title: str) -> list[str]:
    """Rename an article through the ORM; returns the keys its commit deletes."""
    with SessionLocal.begin() as session:
        article = session.scalars(select(Article).where(Article.slug == slug)).one()
        before = {"id": article.id, "slug": article.slug, "author_id": article.author_id}
        article.title = title
    spec = spec_for(Article)
    assert spec is not None
    return plan_keys(spec, before, {**before, "title": title})


def main(argv: list[str]) -> int:
    slug = argv[0] if argv else "article-1"
    title = argv[1] if len(argv) > 1 else f"Renamed by SQLAlchemy at {_utcnow():%H:%M:%S}"
    keys = rename(slug, title)
    print(f"{slug}: title is now {title!r}; deleted after commit: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
