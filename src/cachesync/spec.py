"""The declaration a user writes on a model: :class:`Sync` and :class:`Projection`.

These objects only hold what the user wrote. Every check (template syntax,
field names against the model, callables) happens when the declaration is
resolved against a real model in :mod:`cachesync.registry`, so that the error
can name the model: ``DeclarationError: User: key 'user:{idd}' uses unknown
attribute 'idd' (attributes: id, nickname, username)``. Resolution runs at
class-definition time for the mixin and decorator, and in ``register()``.

Rows handed to user callables (``to_document``, ``when``, ``invalidates``) are
mappings keyed by model ATTRIBUTE name on every path (ORM instance, binlog row,
outbox re-read), so one callable serves them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Invalidates", "Projection", "Row", "Sync"]

#: A row keyed by model attribute name.
Row = Mapping[str, Any]
#: ``invalidates(before, after) -> keys``: extra keys that a key template cannot name
#: (a list cache, a count). ``before`` is ``None`` on insert, ``after`` is ``None`` on delete.
Invalidates = Callable[[Row | None, Row | None], Iterable[str]]


@dataclass(frozen=True)
class Projection:
    """How rows of a model become documents of an Elasticsearch index.

    Exactly one of *fields* (attribute names copied into the document) or
    *to_document* (``row -> dict``) is given. *id* is a key template for the
    document id (default: the primary key, several columns joined by ``:``).
    *when* decides whether a row has a document at all; a row that stops meeting
    it has its document deleted.
    """

    index: str
    fields: Sequence[str] | None = None
    to_document: Callable[[Row], Mapping[str, Any]] | None = None
    id: str | None = None
    when: Callable[[Row], bool] | None = None
    #: Document fields taken from related rows: ``{"category_name": "category.name",
    #: "department": "category.department.name"}`` names a to-one relation (the ORM's
    #: relationship or foreign key), hop by hop, then an attribute of the last model.
    #: The sidecar re-renders the document when a related row changes
    #: (:mod:`cachesync.related`, :mod:`cachesync.binlog.fanout`).
    related: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Sync:
    """What to keep in sync for one model: cache keys, search projections, extra invalidations.

    ``Sync(keys=["user:{id}", "user:by-name:{username}"],
    search=Projection(index="users", fields=["username"]))``
    """

    keys: Sequence[str] = ()
    search: Projection | Sequence[Projection] | None = None
    invalidates: Invalidates | None = None
    #: Keys of this model that embed a related row: ``{"category": ["product:{id}:card"]}``
    #: drops ``product:{id}:card`` of every product whose category (or, with
    #: ``"category.department"``, whose category's department) changes.
    depends_on: Mapping[str, Sequence[str]] | None = None

    @property
    def projections(self) -> tuple[Projection, ...]:
        """The projections as a tuple, whether one or several were given."""
        if self.search is None:
            return ()
        if isinstance(self.search, Projection):
            return (self.search,)
        return tuple(self.search)
