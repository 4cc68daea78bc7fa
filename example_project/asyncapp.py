"""The example blog as an asyncio API: Starlette, SQLAlchemy ``AsyncSession``, cachesync's read API.

The models are those of ``sqlalchemy_app.py`` (the Django project's tables); the
sessions are asyncio ones (aiomysql), installed with
``install(async_sessionmaker(...))``, and reads go through
``await Article.cache.aget_by(...)`` on ``redis.asyncio``. Nothing cachesync does
blocks the event loop: the after-commit delete runs on a worker thread.

    GET  /articles/by-slug/{slug}     the article, read through article:by-slug:{slug}
    POST /articles/{id}/title         {"title": "..."}: rename it (the commit invalidates)

Run it with any ASGI server (``uvicorn asyncapp:app``), configured by the same
``CACHESYNC_*`` variables as the rest of the example. (The Django pages cache
``article:{id}`` in their own format, a pickled dict; this API reads through
the by-slug key, so the two never read each other's values.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy_app import DEFAULT_MYSQL_URL, OUTBOX, Article

from cachesync.contrib.sqlalchemy import install

engine = create_async_engine(
    os.environ.get("CACHESYNC_MYSQL_URL", DEFAULT_MYSQL_URL).replace(
        "mysql://", "mysql+aiomysql://", 1
    )
)
Sessions = async_sessionmaker(engine, expire_on_commit=False)
install(Sessions, outbox=OUTBOX)


def _article(a: Any) -> dict[str, Any]:
    return {"id": a.id, "title": a.title, "slug": a.slug, "status": a.status}


async def by_slug(request: Request) -> JSONResponse:
    found = await Article.cache.aget_by(slug=request.path_params["slug"], session=Sessions)
    if found is None:
        return JSONResponse({"error": "no such article"}, status_code=404)
    return JSONResponse(_article(found))


async def rename(request: Request) -> JSONResponse:
    body = await request.json()
    title = body.get("title") if isinstance(body, dict) else None
    if not isinstance(title, str) or not title:
        return JSONResponse({"error": 'expected {"title": "..."}'}, status_code=400)
    async with Sessions() as session:
        article = await session.get(Article, request.path_params["id"])
        if article is None:
            return JSONResponse({"error": "no such article"}, status_code=404)
        article.title = title
        await session.commit()
    return JSONResponse(_article(article))


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await engine.dispose()


app = Starlette(
    routes=[
        Route("/articles/by-slug/{slug}", by_slug),
        Route("/articles/{id:int}/title", rename, methods=["POST"]),
    ],
    lifespan=lifespan,
)
