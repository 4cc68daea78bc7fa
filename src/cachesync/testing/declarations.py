"""Test your own declarations without any service.

Two questions an application's test suite asks, answered in memory:

* "what does this row change invalidate and index?" -- :func:`plan_for` runs the
  same pure :func:`~cachesync.planning.plan` the binlog sidecar runs, from rows
  written as attribute dicts; :func:`keys_for` renders one row's keys.
* "what does my code's commit delete right away?" -- :func:`capture_invalidations`
  swaps the after-commit fast path's Redis for a :class:`MemoryKeySink` for the
  duration of a ``with`` block, on either ORM, with any database (SQLite too).

Keys here are rendered exactly as the sidecar renders them from the binlog, so
an assertion that holds here holds in production (for values in their stored
form: a ``Decimal`` with the column's scale, a naive UTC ``datetime``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..actions import Action, DeleteDoc, DeleteKeys, IndexDoc
from ..apply import Applier
from ..changes import Op, OutboxPosition, RowChange
from ..errors import DeclarationError
from ..planning import plan, template_keys
from ..registry import Registry, TableSpec, default_registry
from .twins import MemoryKeySink, RecordingFailureHandler

__all__ = [
    "Invalidations",
    "capture_invalidations",
    "documents_of",
    "keys_for",
    "keys_of",
    "plan_for",
    "spec_of",
]

_positions = itertools.count(1)


def spec_of(model: Any, registry: Registry | None = None) -> TableSpec:
    """The :class:`TableSpec` of a declared model class (SQLAlchemy or Django), or of a spec.

    Raises :class:`DeclarationError` naming the model when it declares nothing.
    """
    if isinstance(model, TableSpec):
        return model
    with contextlib.suppress(ImportError):
        from ..contrib.sqlalchemy import spec_for

        spec = spec_for(model)
        if spec is not None:
            return spec
    if hasattr(model, "_meta"):
        with contextlib.suppress(ImportError):
            from ..contrib.django.declarations import table_for

            table = table_for(model)
            if table is not None:
                return table.spec
    name = getattr(model, "__name__", str(model))
    with contextlib.suppress(DeclarationError):
        return (registry or default_registry).for_model(name)
    raise DeclarationError(f"{name} declares nothing to keep in sync (no Sync, no register())")


def plan_for(
    model: Any,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> list[Action]:
    """The actions the sidecar plans for a row going from *before* to *after*.

    Rows are dicts by model ATTRIBUTE name (as in your templates), ``None`` for
    "no row": ``before=None`` is an insert, ``after=None`` a delete. Document
    actions carry a synthetic, increasing position.
    """
    if before is None and after is None:
        raise ValueError("plan_for needs a before row, an after row, or both")
    spec = spec_of(model)
    op = Op.INSERT if before is None else Op.DELETE if after is None else Op.UPDATE
    change = RowChange(
        op,
        spec.schema or "",
        spec.table,
        spec.columns_from_row(before) if before is not None else None,
        spec.columns_from_row(after) if after is not None else None,
        OutboxPosition(next(_positions)),
    )
    return plan(change, spec)


def keys_for(model: Any, row: Mapping[str, Any]) -> list[str]:
    """The keys the declared templates render for one row (by attribute name)."""
    return template_keys(spec_of(model), dict(row), None)


def keys_of(actions: Iterable[Action]) -> set[str]:
    """Every cache key the :class:`DeleteKeys` among *actions* delete."""
    return {k for a in actions if isinstance(a, DeleteKeys) for k in a.keys}


def documents_of(actions: Iterable[Action]) -> dict[tuple[str, str], dict[str, Any] | None]:
    """``(index, id) -> body`` for every document written, ``None`` for every document deleted."""
    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    for action in actions:
        if isinstance(action, IndexDoc):
            out[(action.index, action.doc_id)] = dict(action.document)
        elif isinstance(action, DeleteDoc):
            out[(action.index, action.doc_id)] = None
    return out


@dataclass
class Invalidations:
    """What the fast path deleted inside :func:`capture_invalidations`."""

    sink: MemoryKeySink = field(default_factory=MemoryKeySink)
    handler: RecordingFailureHandler = field(default_factory=RecordingFailureHandler)

    @property
    def keys(self) -> set[str]:
        """Every key deleted after a commit."""
        return set(self.sink.deleted)

    @property
    def batches(self) -> list[list[str]]:
        """One list per delivery (normally one per committed transaction)."""
        return [list(c) for c in self.sink.calls]

    def clear(self) -> None:
        self.sink.deleted.clear()
        self.sink.calls.clear()


@contextlib.contextmanager
def capture_invalidations() -> Iterator[Invalidations]:
    """Record the after-commit fast path's deletes instead of sending them to Redis.

    Works with the hooks of both ORMs (``install()`` for SQLAlchemy, the Django
    app) as long as they use the process-wide fast path (the default) and the
    ``fast_path`` setting is on (the default). Not thread-safe with respect to
    other tests swapping the fast path at the same time.
    """
    from ..fastpath import fast_path

    captured = Invalidations()
    with fast_path.replaced(Applier(captured.sink, None), captured.handler):
        yield captured
