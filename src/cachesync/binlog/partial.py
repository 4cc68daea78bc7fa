"""Partial row images: completed from the database where that is right, reported where not.

A client that runs ``SET SESSION binlog_row_image = MINIMAL`` (or ``NOBLOB``)
writes rows events without every column: MINIMAL before images carry only the
primary key, after images only the columns the statement assigned; NOBLOB
leaves out BLOB/TEXT columns that are not needed to find the row or that an
UPDATE did not assign. Stopping the sidecar for that would leave every other
client's changes stale, so each such change (:class:`PartialChange`, from the
binlog source) is handled on its own:

* a column no declaration reads is ignored, present or not;
* a column an UPDATE did not assign is unchanged, so its value on the other
  side of the change is known;
* what the after image still lacks is re-read by primary key (the CURRENT
  row, one query per table per batch): a document must converge to the table
  anyway, and a later change of the row carries a later version;
* what the before image lacks cannot be re-read (the row has moved on): a key,
  an old document id or an ``invalidates()`` call that needs it is *unknowable*.
  What can be rendered is still applied; the rest is an ERROR line naming the
  table, position, primary key and session setting, the metric
  ``partial_unknowable_total``, and a dead letter (:class:`PartialDeadLetters`).

A column the TABLE no longer has (the event's table map lacks it) is a schema
change, not a partial image: such a change goes to
:func:`~cachesync.planning.plan` as it is, which stops the sidecar with a
:class:`~cachesync.errors.SchemaError` as for full images.

The completion and planning functions are pure (:func:`missing_after`,
:func:`after_ref`, :func:`complete_change`, :func:`plan_completed`);
:class:`PartialImages` adds the re-reads and the reporting, for the sidecar.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..actions import Action, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from ..changes import Op, RowChange
from ..errors import SourceConfigurationError, SourceError
from ..planning import intent_keys, plan
from ..registry import Registry, TableSpec
from ..reread import RowReader

__all__ = [
    "CompletedChange",
    "LoggingPartialDeadLetters",
    "PartialChange",
    "PartialDeadLetters",
    "PartialImages",
    "after_ref",
    "complete_change",
    "missing_after",
    "plan_completed",
]

log = logging.getLogger("cachesync.partial")


@dataclass(frozen=True)
class PartialChange(RowChange):
    """A :class:`RowChange` whose images lack columns (absent keys, never ``None``).

    ``columns`` are the table's columns as the event's table map lists them;
    ``unknown_after`` are columns the after image changed without carrying the
    value (MySQL partial JSON); ``setting`` names the likely session setting.
    """

    columns: frozenset[str] = frozenset()
    unknown_after: frozenset[str] = frozenset()
    setting: str = "binlog_row_image=MINIMAL"


@dataclass(frozen=True)
class CompletedChange(RowChange):
    """A :class:`PartialChange` completed as far as the event and a re-read allow.

    ``unknown_before``/``unknown_after`` are the mapped columns (of the table)
    still missing from each image; ``row_gone`` says the re-read found no row.
    :func:`plan_completed` plans it; ``partial`` is the change as logged.
    """

    partial: PartialChange | None = None
    unknown_before: frozenset[str] = frozenset()
    unknown_after: frozenset[str] = frozenset()
    row_gone: bool = False


class PartialDeadLetters(ABC):
    """Where a change with an unknowable value is recorded (the dead-letter store).

    Contract: :meth:`record` is called once per such change, after the ERROR
    line, from the sidecar's planning step; it may block briefly. When it
    cannot record durably it raises :class:`~cachesync.errors.TransientError`:
    the batch is then not checkpointed and is replayed. Success promises only
    that the record is kept; the keys it names stay undeleted.
    """

    @abstractmethod
    def record(self, change: RowChange, reason: str) -> None:
        """Keep *change* (as logged) with *reason* (what could not be known, and why)."""


class LoggingPartialDeadLetters(PartialDeadLetters):
    """The default until a dead-letter store is wired: the ERROR line is the only record."""

    def record(self, change: RowChange, reason: str) -> None:
        log.warning(
            "cachesync: no dead-letter store is configured; the change at %s is kept only "
            "in the log",
            change.position,
        )


# ---------------------------------------------------------------------------------------------
# What a declaration reads, and what a partial change says
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Needs:
    before: frozenset[str]  # columns plan() reads from a before image
    after: frozenset[str]  # ... from an after image
    declared: frozenset[str]  # key, id and field columns: absent from the TABLE = schema change


def _needs(spec: TableSpec) -> _Needs:
    """Columns :func:`~cachesync.planning.plan` reads; all of them where a callable may read any."""
    projections = spec.projections
    everything = frozenset(spec.column_names)
    fields = {f for t in spec.key_templates for f in t.fields}
    fields.update(f for p in projections for f in p.id_template.fields)
    keyed = frozenset(spec.columns[f] for f in fields)
    declared = keyed | {spec.columns[f] for p in projections for f in p.declared.fields or ()}
    when = any(p.declared.when is not None for p in projections)
    to_document = any(p.declared.to_document is not None for p in projections)
    before = everything if spec.invalidates is not None or when else keyed
    after = everything if spec.invalidates is not None or when or to_document else declared
    return _Needs(before, after, declared)


def _carried(change: PartialChange) -> tuple[dict[str, Any], dict[str, Any]]:
    """The images, with what an UPDATE did not assign carried over from its before image."""
    before = dict(change.before or {})
    after = dict(change.after or {})
    if change.op is Op.UPDATE:
        for column, value in before.items():
            if column not in after and column not in change.unknown_after:
                after[column] = value  # not assigned by the statement: unchanged
    return before, after


def missing_after(change: PartialChange, spec: TableSpec) -> frozenset[str]:
    """Columns of the table plan() needs from the after image that the event does not give."""
    if change.op is Op.DELETE:
        return frozenset()
    _before, after = _carried(change)
    return frozenset((_needs(spec).after & change.columns) - after.keys())


def after_ref(change: PartialChange, spec: TableSpec) -> RowRef | None:
    """The primary key of the row after *change*, to re-read it; ``None`` if not in the event."""
    _before, after = _carried(change)
    pk = spec.primary_key_columns()
    if change.op is Op.DELETE or any(c not in after for c in pk):
        return None
    return RowRef(change.schema, change.table, {c: after[c] for c in pk})


def complete_change(
    change: PartialChange, spec: TableSpec, current: Mapping[str, Any] | None, *, read: bool
) -> RowChange:
    """*change* with what can be known filled in (pure).

    *current* is the row re-read at :func:`after_ref` (``None``: gone) when
    *read*. Returns a plain :class:`RowChange` when the images hold every
    column plan() reads (or when a declared column is absent from the table:
    plan() reports that schema change), else a :class:`CompletedChange`.
    """
    needs = _needs(spec)
    table = change.columns
    before, after = _carried(change)
    if change.op is not Op.DELETE and read and current is not None:
        for column in (needs.after & table) - after.keys():
            if column in current:
                after[column] = current[column]
    if change.op is Op.UPDATE:
        assigned = (change.after or {}).keys() | change.unknown_after
        for column in (needs.before & table) - before.keys():
            if column not in assigned and column in after:
                before[column] = after[column]  # unchanged: the after value is the old one
    old = before if change.op is not Op.INSERT else None
    new = after if change.op is not Op.DELETE else None
    mapped = frozenset(spec.column_names) & table
    unknown_before = frozenset(mapped - before.keys()) if old is not None else frozenset()
    unknown_after = frozenset(mapped - after.keys()) if new is not None else frozenset()
    complete = not (unknown_before & needs.before) and not (unknown_after & needs.after)
    if complete or not needs.declared <= table:
        return RowChange(
            change.op, change.schema, change.table, old, new, change.position, change.commit_time
        )
    return CompletedChange(
        change.op,
        change.schema,
        change.table,
        old,
        new,
        change.position,
        change.commit_time,
        partial=change,
        unknown_before=unknown_before,
        unknown_after=unknown_after,
        row_gone=read and current is None,
    )


# ---------------------------------------------------------------------------------------------
# Planning what can be known
# ---------------------------------------------------------------------------------------------


def _knows(spec: TableSpec, unknown: frozenset[str], fields: Sequence[str]) -> bool:
    return not any(spec.columns[f] in unknown for f in fields)


def plan_completed(change: CompletedChange, spec: TableSpec) -> tuple[list[Action], list[str]]:
    """The actions of *change* that its known values determine, and what is lost (pure).

    Mirrors :func:`~cachesync.planning.plan`, with the same result for complete
    images. A key template or document id needing an unknown value is left out
    and named in the losses; ``invalidates()`` is called only with complete
    images. An unknown ``when`` on the before image counts as met (deleting a
    document that is not there is harmless); a row the re-read found gone has
    no document, so the one its after image names is deleted.
    """
    before = spec.row_from_columns(change.before) if change.before is not None else None
    after = spec.row_from_columns(change.after) if change.after is not None else None
    unknown = {"before": change.unknown_before, "after": change.unknown_after}
    losses: list[str] = []
    keys: dict[str, None] = {}
    for side, row in (("before", before), ("after", after)):
        if row is None:
            continue
        for template in spec.key_templates:
            if not _knows(spec, unknown[side], template.fields):
                losses.append(f"{side} key {template.text!r}")
                continue
            key = template.render(row)
            if key is None:
                nulls = ", ".join(template.null_fields(row))
                log.info("%s: key %r skipped, NULL in %s", spec.model, template.text, nulls)
            else:
                keys[key] = None
    if spec.invalidates is not None:
        if change.unknown_before or change.unknown_after:
            losses.append("invalidates()")
        else:
            keys.update(dict.fromkeys(intent_keys(spec, before, after)))
    actions: list[Action] = []
    if keys:
        actions.append(DeleteKeys(tuple(keys), change.position))
    if change.position is None:
        return actions, losses
    refs = (
        spec.row_ref(change.before) if change.before is not None else None,
        spec.row_ref(change.after) if change.after is not None else None,
    )
    for projection in spec.projections:
        declared = projection.declared
        id_fields = projection.id_template.fields
        new_id: str | None = None
        gone_id: str | None = None
        if after is not None:
            if declared.when is not None or declared.to_document is not None:
                knows_after = not change.unknown_after  # a callable may read any column
            else:
                needed = [*id_fields, *(declared.fields or ())]
                knows_after = _knows(spec, change.unknown_after, needed)
            if knows_after and not change.row_gone:
                new_id = projection.live_id(spec, after)
            elif change.row_gone and _knows(spec, change.unknown_after, id_fields):
                gone_id = projection.doc_id(after)  # no row now: no document either
            else:
                losses.append(f"document of {projection.index!r}")
        if new_id is not None:
            assert after is not None
            document = projection.document(after)
            actions.append(IndexDoc(projection.index, new_id, document, change.position, refs[1]))
        old_id: str | None = None
        if before is not None:
            if _knows(spec, change.unknown_before, id_fields):
                met = projection.matches(before) if not change.unknown_before else True
                old_id = projection.doc_id(before) if met else None
            else:
                losses.append(f"old document id of {projection.index!r}")
        if old_id is not None and old_id != new_id:
            actions.append(DeleteDoc(projection.index, old_id, change.position, refs[0]))
        if gone_id is not None and gone_id != old_id:
            actions.append(DeleteDoc(projection.index, gone_id, change.position, refs[1]))
    return actions, losses


# ---------------------------------------------------------------------------------------------
# The sidecar's step
# ---------------------------------------------------------------------------------------------


class PartialImages:
    """Completes the partial-image changes of a batch and plans them; see the module docstring.

    :meth:`complete` runs once per batch, before planning: it re-reads the rows
    the batch's partial after images need, one query per table (*reader*, a
    :class:`~cachesync.reread.RowReader`). :meth:`plan` then replaces
    :func:`~cachesync.planning.plan` for every change of the batch. A database
    outage during the re-read raises :class:`~cachesync.errors.TransientError`
    (the batch is replayed); a table the re-read cannot read (dropped meanwhile)
    leaves its changes incomplete, hence reported.
    """

    def __init__(
        self,
        registry: Registry,
        reader: RowReader,
        dead_letters: PartialDeadLetters | None = None,
    ) -> None:
        self.registry = registry
        self.reader = reader
        self.dead_letters = dead_letters or LoggingPartialDeadLetters()

    def complete(self, batch: Sequence[RowChange]) -> list[RowChange]:
        """*batch* in order, each :class:`PartialChange` completed (full changes unchanged)."""
        specs: dict[int, TableSpec] = {}
        refs: dict[int, RowRef] = {}
        wanted: dict[tuple[str | None, str], list[int]] = defaultdict(list)
        for i, change in enumerate(batch):
            if not isinstance(change, PartialChange):
                continue
            spec = self.registry.get(change.schema, change.table)
            if spec is None:
                continue
            metrics.inc("partial_images_total")
            specs[i] = spec
            ref = after_ref(change, spec) if missing_after(change, spec) else None
            if ref is not None:
                refs[i] = ref
                wanted[(change.schema, change.table)].append(i)
        current: dict[int, Mapping[str, Any] | None] = {}
        for indexes in wanted.values():
            spec = specs[indexes[0]]
            try:
                rows = self.reader.fetch(spec, [refs[i] for i in indexes])
            except SourceConfigurationError:
                raise  # grants: the sidecar must stop and say so
            except SourceError as exc:
                log.error("cachesync: re-reading %s for partial row images failed: %s",
                          spec.table, exc)  # fmt: skip
                continue
            metrics.inc("partial_rereads_total", len(indexes))
            for i in indexes:
                current[i] = rows.get(refs[i])
        out = list(batch)
        for i, spec in specs.items():
            change = batch[i]
            assert isinstance(change, PartialChange)
            out[i] = complete_change(change, spec, current.get(i), read=i in current)
        return out

    def close(self) -> None:
        """Close the reader's connection, if it holds one."""
        close = getattr(self.reader, "close", None)
        if callable(close):
            close()

    def plan(self, change: RowChange, spec: TableSpec) -> list[Action]:
        """The actions of *change*; for a completed partial change, reports what is lost."""
        if not isinstance(change, CompletedChange):
            return plan(change, spec)
        actions, losses = plan_completed(change, spec)
        if losses:
            self._report(change, spec, losses)
        return actions

    def _report(self, change: CompletedChange, spec: TableSpec, losses: list[str]) -> None:
        logged: RowChange = change.partial or change
        image = change.before if change.before is not None else change.after or {}
        pk = {c: image.get(c) for c in spec.primary_key_columns()}
        setting = change.partial.setting if change.partial else "a partial row image"
        why = "the row was gone when re-read" if change.row_gone else "the event lacks the value"
        reason = (
            f"{change.op.value} of {change.schema}.{change.table} at {change.position} "
            f"(primary key {pk}) was logged with {setting}: cannot know {', '.join(losses)} "
            f"({why}); what could be rendered was applied"
        )
        log.error(
            "cachesync: partial row image: %s. Set binlog_row_image=FULL in the writing "
            "session; the keys left out may hold stale values until they expire",
            reason,
        )
        metrics.inc("partial_unknowable_total")
        self.dead_letters.record(logged, reason)
