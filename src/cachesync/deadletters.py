"""Poison row changes: a change that cannot be planned becomes a dead letter, not a stopped stream.

A row change is *poison* when planning it raises for reasons that belong to that
row alone: a user callable (``when=``, ``to_document=``, ``invalidates=``) that
raises on an odd row, a value no key template can be rendered from (``{id:08d}``
over a string), a row image that lacks what a declaration needs and cannot be
completed. Stopping the sidecar for it would leave every OTHER change stale
until a human intervenes (and the restart would stop at the same row again);
dropping it silently would lose its invalidation. So it is buried: a
:class:`PoisonChange` carries the whole context (model, table, primary key,
position, the error, both row images with binary and temporal values encoded
losslessly) to a :class:`DeadLetterStore`, the sidecar logs one ERROR line and
counts ``poison_changes_total``, and the stream goes on.

What is wrong for the whole pipeline is not poison: a declared column that the
table no longer has (:class:`~cachesync.errors.SchemaError`) or a missing setting
(:class:`~cachesync.errors.ConfigurationError`) still stops the sidecar with its
message, because every later change of that table would fail the same way.

Redriving a poison change (``cachesync dlq redrive``, after fixing the cause)
plans it again with the current declarations; see
:mod:`cachesync.outbox.dead_letters`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import metrics
from .actions import Action, DeleteKeys
from .changes import Op, Position, RowChange
from .errors import (
    ConfigurationError,
    DecodeError,
    HandOffError,
    SchemaError,
    TransientError,
)
from .valuetags import tag_column_value, untag_column_value

if TYPE_CHECKING:
    from .tables import TableSpec

__all__ = [
    "DeadLetterStore",
    "LoggingDeadLetterStore",
    "PoisonChange",
    "decode_change",
    "encode_change",
    "is_poison",
    "report_poison",
    "salvage_keys",
]

log = logging.getLogger("cachesync.deadletters")

CHANGE_FORMAT_VERSION = 1


def _image(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if image is None else {str(c): tag_column_value(v) for c, v in image.items()}


def encode_change(change: RowChange) -> dict[str, Any]:
    """The JSON-ready, lossless form of *change* (values tagged: ``{"$bytes": "<base64>"}``...)."""
    return {
        "v": CHANGE_FORMAT_VERSION,
        "op": change.op.value,
        "schema": change.schema,
        "table": change.table,
        "before": _image(change.before),
        "after": _image(change.after),
        "position": change.position.encode() if change.position is not None else None,
        "commit_time": change.commit_time,
    }


def decode_change(obj: Mapping[str, Any]) -> RowChange:
    """Inverse of :func:`encode_change`; :class:`DecodeError` on anything unexpected."""
    try:
        if obj.get("v") != CHANGE_FORMAT_VERSION:
            raise DecodeError(f"unsupported change format version {obj.get('v')!r}")

        def image(key: str) -> dict[str, Any] | None:
            raw = obj.get(key)
            return None if raw is None else {str(c): untag_column_value(v) for c, v in raw.items()}

        position = obj.get("position")
        return RowChange(
            Op(obj["op"]),
            obj.get("schema"),
            str(obj["table"]),
            image("before"),
            image("after"),
            Position.decode(position) if position is not None else None,
            obj.get("commit_time"),
        )
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(
            f"malformed row change {obj!r:.200}: {type(exc).__name__}: {exc}"
        ) from None


@dataclass(frozen=True)
class PoisonChange:
    """A row change that could not be planned, and why (see the module docstring)."""

    change: RowChange
    model: str
    error: str
    primary_key: Mapping[str, Any]

    @classmethod
    def of(
        cls, change: RowChange, model: str, pk_columns: Sequence[str], exc: BaseException
    ) -> PoisonChange:
        image = change.after if change.after is not None else change.before
        pk = {c: (image or {}).get(c) for c in pk_columns}
        return cls(change, model, f"{type(exc).__name__}: {exc}", pk)

    def describe(self) -> str:
        """One line for the log: model, operation, table, primary key, position, error."""
        change = self.change
        where = f"{change.schema}.{change.table}" if change.schema else change.table
        return (
            f"{self.model}: {change.op.value} of {where} {json.dumps(_image(self.primary_key))} "
            f"at {change.position} cannot be planned: {self.error}"
        )

    def encode(self) -> dict[str, Any]:
        """The dead letter's JSON body: the change and its context."""
        return {
            "model": self.model,
            "error": self.error,
            "primary_key": _image(self.primary_key),
            "change": encode_change(self.change),
        }


class DeadLetterStore(ABC):
    """Where poison changes wait for a human.

    Contract: :meth:`bury` returns only once every letter is durable (a committed
    row). It raises :class:`~cachesync.errors.HandOffError` when it cannot store
    them; the sidecar then keeps its checkpoint and tries the batch again, which
    finds the same poison and buries it then: a poison change is never lost,
    only delayed. It may block for one database round trip.
    """

    @abstractmethod
    def bury(self, letters: Sequence[PoisonChange]) -> None: ...

    def describe(self) -> str:
        return type(self).__name__


class LoggingDeadLetterStore(DeadLetterStore):
    """No durable store configured: each letter is logged at ERROR with its full encoded context.

    The stream goes on; the log line holds everything needed to redo the change by
    hand. Configure ``outbox_url`` (or give the sidecar's ``mysql_url`` user INSERT
    on the outbox table) to keep them in the database instead.
    """

    def bury(self, letters: Sequence[PoisonChange]) -> None:
        for letter in letters:
            log.error(
                "cachesync: dead letter (no dead-letter store configured): %s",
                json.dumps(letter.encode(), separators=(",", ":")),
            )


def report_poison(letters: Sequence[PoisonChange]) -> None:
    """The ERROR line and the metric every poison change gets, whatever store holds it."""
    for letter in letters:
        log.error("cachesync: %s; dead-lettered, the stream goes on", letter.describe())
    metrics.inc("poison_changes_total", len(letters))


def salvage_keys(change: RowChange, spec: TableSpec) -> list[Action]:
    """The key deletes of a poison change that its templates can still render.

    When a projection's callable raised, the row's cache keys are usually fine:
    deleting them now keeps the cache right while the document waits in the
    dead-letter store. Whatever raised again is left to the dead letter.
    """
    keys: dict[str, None] = {}
    for image in (change.before, change.after):
        if image is None:
            continue
        row = spec.row_from_columns(image)
        for template in spec.key_templates:
            try:
                key = template.render(row)
            except Exception:  # the template itself is the poison: the dead letter says so
                continue
            if key is not None:
                keys[key] = None
    return [DeleteKeys(tuple(keys), change.position)] if keys else []


def is_poison(exc: BaseException) -> bool:
    """True when *exc* belongs to one row, not to the whole pipeline (module docstring).

    Schema and configuration errors stop the stream; transient trouble and a
    refused hand-off are waited out; anything else raised while planning one
    change (a user callable's own exception included) is that change's poison.
    """
    pipeline = (SchemaError, ConfigurationError, TransientError, HandOffError)
    return isinstance(exc, Exception) and not isinstance(exc, pipeline)
