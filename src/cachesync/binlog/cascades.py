"""Following foreign-key cascades that the binlog does not show.

``ON DELETE CASCADE``, ``ON DELETE SET NULL`` and ``ON UPDATE CASCADE`` change
child rows inside the storage engine; only the parent's change reaches the
binlog (:mod:`.foreignkeys`). For each batch, :meth:`Cascades.plan` finds the
parent changes that act on a watched child table and plans the child rows as
if their own events had arrived:

1. **Which children.** The reverse index (:mod:`.reverseindex`) lists the child
   rows under each parent value, with their keys and document ids as last
   rendered. The sidecar keeps it from the child rows it streams (insert, update
   of the foreign key or of a key column, delete) and from the cascades it
   follows; a table scan builds it once per constraint (and again when the
   declaration's keys or ids change).
2. **Gone or surviving.** The candidates are re-read by primary key, one
   ``IN (...)`` query per child table and batch (:class:`~cachesync.reread.SqlRowReader`).
   A row that is gone (DELETE CASCADE) gets its remembered keys deleted and its
   remembered documents deleted, versioned with the parent's position. A row
   that survives (SET NULL, UPDATE CASCADE) is planned as an UPDATE from a
   *before* image to its current row: the before image is the current row with
   the foreign-key columns set back to the parent's before values (what it
   looked like before the cascade), and its remembered keys are deleted too.
3. **Deeper.** A deleted child is a deleted parent for constraints below it, a
   surviving child whose referenced columns changed an updated parent: the same
   steps repeat, level by level (MariaDB and MySQL stop cascading at 15 levels).

Which keys this knows: for DELETE CASCADE, every template key and document id
the row had when the sidecar last saw it (exact, also for templates over
columns the cascade did not touch); ``invalidates=`` intents of deleted rows
cannot be computed (no whole before image) and are named at start-up. For SET
NULL and UPDATE CASCADE, keys of the reconstructed before image (exact unless
the row changed again later, whose own events then delete those keys) plus the
remembered ones; a template over columns the cascade did not touch renders the
same before and after.

Crash safety: entries of rows a cascade removed are dropped from the index only
once the checkpoint has passed the cascade (:meth:`Cascades.plan` gets the saved
point), so a batch replayed after a crash finds them again. Everything else in
the index is idempotent under replay, and a stale entry costs only a re-read.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..actions import Action, DeleteDoc, DeleteKeys, RowRef
from ..changes import Op, Position, RowChange
from ..deadletters import PoisonChange, is_poison, salvage_keys
from ..planning import plan
from ..registry import Registry, TableSpec
from ..reread import SqlRowReader
from . import foreignkeys as fkeys
from . import server
from .checkpoint import ResumePoint
from .foreignkeys import ACTING, Coverage, ForeignKey
from .reverseindex import (
    MemoryReverseIndex,
    RedisReverseIndex,
    ReverseIndex,
    Session,
    Slot,
    Write,
    covered,
    decode,
    decode_entry,
    encode,
    encode_entry,
)

__all__ = ["Cascades"]

log = logging.getLogger("cachesync.cascades")

#: InnoDB refuses cascades deeper than 15 levels; one more catches a bug, not a schema.
MAX_DEPTH = 16
_SCAN_CHUNK = 1000
_FORMAT = "1"


@dataclass
class _Item:
    """One child row a parent change acts on."""

    fk: ForeignKey
    pk: str  # child primary key JSON
    entry: Mapping[str, Any]
    parent_before: tuple[Any, ...]
    parent_after: tuple[Any, ...] | None  # None: the parent row was deleted
    position: Position | None


class Cascades:
    """Plans the child rows of parent changes that act through foreign keys (module docstring).

    Built by :meth:`start` when the sidecar starts leading. :meth:`plan` raises
    :class:`~cachesync.errors.TransientError` when the index store or the database
    cannot be reached (the sidecar then retries the batch from its checkpoint) and
    :class:`~cachesync.errors.SchemaError` when a declared column is gone.
    """

    def __init__(
        self,
        mysql: Mapping[str, Any],
        registry: Registry,
        index: ReverseIndex,
        *,
        default_schema: str | None,
    ) -> None:
        self._mysql = dict(mysql)
        self.registry = registry
        self.index = index
        self._default = default_schema
        self.foreign_keys: dict[str, ForeignKey] = {}
        self.coverage = Coverage()
        self._parents: list[TableSpec] = []
        self._dirty = False
        self._removals: dict[tuple[Slot, str], Position | None] = {}
        self._reader: SqlRowReader | None = None
        self._columns: dict[str, tuple[str, ...]] = {}
        self.followed = 0  #: child rows planned so far (for tests and logs)

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        conn: Any,
        mysql: Mapping[str, Any],
        registry: Registry,
        *,
        index: ReverseIndex | None,
        default_schema: str | None,
    ) -> Cascades:
        """Read the foreign keys over *conn*, name what is not covered, build missing indexes."""
        cascades = cls(
            mysql, registry, index or MemoryReverseIndex(), default_schema=default_schema
        )
        cascades._load(conn)
        return cascades

    def schema_changed(self, schema: object = None, query: object = "") -> None:
        """A DDL statement passed in the binlog: read the foreign keys again before the next
        batch, if it may touch a watched schema (its default schema is one, or its text names
        one). DDL elsewhere on the server (other applications, other pipelines) is ignored:
        each re-read costs a connection and catalogue queries on the reading thread, and a
        busy server runs DDL all day. A false match only costs one re-read."""
        schemas = {s.lower() for s in self._schemas()}
        text = str(query).lower()
        if not schemas or str(schema or "").lower() in schemas or any(s in text for s in schemas):
            self._dirty = True

    @property
    def source_registry(self) -> Registry:
        """The declared tables plus unwatched parents (streamed for their referenced columns)."""
        if not self._parents:
            return self.registry
        return fkeys.source_registry(self.registry.tables(), self._parents)

    def _schemas(self) -> set[str]:
        return {s for s in (spec.schema or self._default for spec in self.registry) if s}

    def _load(self, conn: Any) -> None:
        # Constraints seen earlier in this run are kept: a batch read after a DROP
        # FOREIGN KEY may still hold changes from before it; following one too many
        # constraint costs a re-read, missing one loses a cascade.
        for fk in fkeys.read_foreign_keys(conn, self._schemas()):
            self.foreign_keys[fk.id] = fk
        before = {fk.id for fk in self.coverage.covered}
        self.coverage = fkeys.analyse(
            self.registry, list(self.foreign_keys.values()), self._default
        )
        self._parents = fkeys.parent_specs(self.registry, self.coverage, self._default)
        self._columns = {}
        for reason in self.coverage.uncovered:
            log.warning("cachesync: foreign-key cascade not covered: %s", reason)
        for fk in self.coverage.covered:
            if fk.id not in before:
                log.info("cachesync: following %s", fk.describe())
            self._build(conn, fk)
        if self.coverage.covered and not self.index.persistent:
            log.warning(
                "cachesync: the cascade index lives in memory (no Redis sink): rows deleted by "
                "a cascade while the sidecar was down are not in it when it starts again; "
                "their documents become orphans (`cachesync verify --repair` removes them)"
            )

    def _fingerprint(self, fk: ForeignKey, spec: TableSpec) -> str:
        text = "|".join(
            [
                _FORMAT,
                fk.describe(),
                *(t.text for t in spec.key_templates),
                *(f"{p.index}/{p.id_template.text}" for p in spec.projections),
                *self._downstream(fk.schema, fk.child),
                *spec.primary_key_columns(),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _build(self, conn: Any, fk: ForeignKey) -> None:
        """Scan the child table into the index, unless this declaration's index is there."""
        spec = self._spec(fk.schema, fk.child)
        fingerprint = self._fingerprint(fk, spec)
        if self.index.fingerprint(fk.id) == fingerprint:
            return
        columns = list(self._tracked(spec, self.coverage.by_child[(fk.schema, fk.child)]))
        started, rows = time.monotonic(), 0
        sql = f"SELECT {', '.join(_q(c) for c in columns)} FROM {_q(fk.schema)}.{_q(fk.child)}"
        import pymysql.cursors

        what = f"building the cascade index of {fk.id}"
        with server.translate_errors(what), conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(sql)
            while chunk := cur.fetchmany(_SCAN_CHUNK):
                writes: list[Write] = []
                for values in chunk:
                    image = dict(zip(columns, values, strict=True))
                    parent = fkeys.index_of(image, fk.columns)
                    if parent is not None:
                        writes.append(
                            (
                                "set",
                                (fk.id, encode(parent)),
                                self._pk(spec, image),
                                self._entry(spec, image),
                            )
                        )
                self.index.write(writes)
                rows += len(chunk)
        self.index.mark_built(fk.id, fingerprint)
        log.info(
            "cachesync: cascade index of %s built from %d row(s) in %.2fs",
            fk.id,
            rows,
            time.monotonic() - started,
        )

    def close(self) -> None:
        if self._reader is not None:
            self._reader.engine.dispose()
            self._reader = None

    # -- rendering --------------------------------------------------------------------------

    def _spec(self, schema: str, table: str) -> TableSpec:
        spec = self.registry.get(schema, table)
        assert spec is not None, f"{schema}.{table} is covered, so it is declared"
        return spec

    def _downstream(self, schema: str, table: str) -> tuple[str, ...]:
        return self.coverage.referenced_columns(schema, table)

    @staticmethod
    def _pk(spec: TableSpec, image: Mapping[str, Any]) -> str:
        return encode({c: image.get(c) for c in spec.primary_key_columns()})

    def _entry(self, spec: TableSpec, image: Mapping[str, Any]) -> str:
        """What the index remembers of a child row: its keys, document ids, referenced values."""
        row = spec.row_from_columns(image)
        keys = []
        for template in spec.key_templates:
            try:
                key = template.render(row)
            except Exception:  # planning this row reports it; the index keeps what renders
                key = None
            if key is not None:
                keys.append(key)
        docs = []
        for projection in spec.projections:
            try:
                doc_id = projection.doc_id(row)
            except Exception:
                doc_id = None
            if doc_id is not None:
                docs.append([projection.index, doc_id])
        ref = {
            c: image.get(c)
            for c in self._downstream(spec.schema or self._default or "", spec.table)
        }
        return encode_entry(keys, docs, ref)

    # -- planning ---------------------------------------------------------------------------

    def plan(
        self, batch: Sequence[RowChange], saved: ResumePoint | None
    ) -> tuple[list[Action], list[PoisonChange]]:
        """The actions for the child rows *batch*'s parent changes act on, and their poison.

        Also keeps the reverse index in step with the child rows of *batch*.
        *saved* is the last saved checkpoint: removals older than it are final now.
        """
        self._drop_removals(saved)
        if self._dirty:
            self._dirty = False
            conn = server.connect(self._mysql, what="MySQL")
            try:
                self._load(conn)
            finally:
                conn.close()
        if not self.coverage.covered:
            return [], []
        session = Session(self.index)
        session.preload(
            [
                (fk.id, encode(p))
                for change in batch
                for fk, p, _ in self._triggers(
                    self._schema(change), change.table, change.before, change.after
                )
            ]
        )
        items: list[_Item] = []
        for change in batch:
            triggers = self._triggers(
                self._schema(change), change.table, change.before, change.after
            )
            for fk, before, after in triggers:
                items += self._collect(session, fk, before, after, change.position)
            self._track(session, change)
        actions: list[Action] = []
        poison: list[PoisonChange] = []
        depth = 0
        while items:
            depth += 1
            if depth > MAX_DEPTH:
                log.warning("cachesync: cascade deeper than %d levels not followed", MAX_DEPTH)
                break
            items = self._resolve(session, items, actions, poison)
        session.flush()
        return actions, poison

    def _schema(self, change: RowChange) -> str:
        return change.schema or self._default or ""

    def _triggers(
        self,
        schema: str,
        table: str,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
    ) -> list[tuple[ForeignKey, tuple[Any, ...], tuple[Any, ...] | None]]:
        """``(constraint, parent before value, parent after value)`` for each referential
        action a parent row going from *old* to *new* (``None``: deleted) sets off."""
        fks = self.coverage.by_parent.get((schema, table))
        if not fks or old is None:
            return []
        out: list[tuple[ForeignKey, tuple[Any, ...], tuple[Any, ...] | None]] = []
        for fk in fks:
            before = fkeys.index_of(old, fk.referenced)
            if before is None:
                continue
            if new is None:
                if fk.on_delete in ACTING:
                    out.append((fk, before, None))
                continue
            after = tuple(new.get(c) for c in fk.referenced)
            if after != before and fk.on_update in ACTING:
                out.append((fk, before, after))
        return out

    def _collect(
        self,
        session: Session,
        fk: ForeignKey,
        before: tuple[Any, ...],
        after: tuple[Any, ...] | None,
        position: Position | None,
    ) -> list[_Item]:
        slot = (fk.id, encode(before))
        rule = fk.on_delete if after is None else fk.on_update
        items = []
        for pk, entry in session.members(slot).items():
            items.append(_Item(fk, pk, decode_entry(entry), before, after, position))
            self._removals[(slot, pk)] = position  # dropped once the checkpoint passes it
            if rule == "CASCADE" and after is not None and None not in after:
                # Moved now, so a later change of the new parent in this batch finds it.
                self._set(session, (fk.id, encode(after)), pk, entry)
        return items

    def _set(self, session: Session, slot: Slot, pk: str, entry: str) -> None:
        self._removals.pop((slot, pk), None)
        session.set(slot, pk, entry)

    def _tracked(self, spec: TableSpec, fks: Sequence[ForeignKey]) -> tuple[str, ...]:
        """The columns an index entry of *spec*'s rows depends on."""
        cached = self._columns.get(spec.table)
        if cached is None:
            schema = spec.schema or self._default or ""
            cached = tuple(
                dict.fromkeys(
                    [
                        *spec.primary_key_columns(),
                        *(c for fk in fks for c in fk.columns),
                        *spec.key_columns,
                        *self._downstream(schema, spec.table),
                    ]
                )
            )
            self._columns[spec.table] = cached
        return cached

    def _track(self, session: Session, change: RowChange) -> None:
        """Keep the index in step with a streamed change of a child table."""
        fks = self.coverage.by_child.get((self._schema(change), change.table))
        if not fks:
            return
        spec = self._spec(self._schema(change), change.table)
        if change.before is not None and change.after is not None:
            # The common update (a column no key, id or foreign key reads): nothing to do.
            before, after = change.before, change.after
            if all(before.get(c) == after.get(c) for c in self._tracked(spec, fks)):
                return
        old_pk = self._pk(spec, change.before) if change.before is not None else None
        new_pk = self._pk(spec, change.after) if change.after is not None else None
        new_entry = self._entry(spec, change.after) if change.after is not None else None
        old_entry = self._entry(spec, change.before) if change.before is not None else None
        for fk in fks:
            old = fkeys.index_of(change.before, fk.columns) if change.before else None
            new = fkeys.index_of(change.after, fk.columns) if change.after else None
            if old == new and old_pk == new_pk and old_entry == new_entry:
                continue
            if old is not None and old_pk is not None:
                session.delete((fk.id, encode(old)), old_pk)
            if new is not None and new_pk is not None and new_entry is not None:
                self._set(session, (fk.id, encode(new)), new_pk, new_entry)

    def _resolve(
        self,
        session: Session,
        items: Sequence[_Item],
        actions: list[Action],
        poison: list[PoisonChange],
    ) -> list[_Item]:
        """Plan one level of child rows; return the next level (their own children)."""
        by_table: dict[tuple[str, str], list[_Item]] = {}
        for item in items:
            by_table.setdefault((item.fk.schema, item.fk.child), []).append(item)
        deeper: list[_Item] = []
        for (schema, table), group in by_table.items():
            spec = self._spec(schema, table)
            refs = {item.pk: RowRef(spec.schema, table, decode(item.pk)) for item in group}
            current = self._read(spec, list(dict.fromkeys(refs.values())))
            for item in group:
                self.followed += 1
                ref = refs[item.pk]
                row = current.get(ref)
                remembered = [str(k) for k in item.entry.get("keys", ())]
                if remembered:
                    actions.append(DeleteKeys(tuple(remembered), item.position))
                before_ref = {c: v for c, v in item.entry.get("ref", {}).items()}
                if row is None:
                    if item.position is not None:
                        actions += [
                            DeleteDoc(str(i), str(d), item.position, ref)
                            for i, d in item.entry.get("docs", ())
                        ]
                    for fk, p, _ in self._triggers(schema, table, before_ref, None):
                        deeper += self._collect(session, fk, p, None, item.position)
                    continue
                before = dict(row)
                if item.parent_after is not None or item.fk.on_delete == "SET NULL":
                    for column, value in zip(item.fk.columns, item.parent_before, strict=True):
                        before[column] = value
                change = RowChange(Op.UPDATE, schema, table, before, row, item.position)
                try:
                    actions += plan(change, spec)
                except Exception as exc:
                    if not is_poison(exc):
                        raise
                    poison.append(
                        PoisonChange.of(change, spec.model, spec.primary_key_columns(), exc)
                    )
                    actions += salvage_keys(change, spec)
                # Its entry under the new parent value, with the keys it renders now (the
                # old parent's entry goes once the checkpoint passes the cascade).
                new_parent = fkeys.index_of(row, item.fk.columns)
                if new_parent is not None:
                    slot = (item.fk.id, encode(new_parent))
                    self._set(session, slot, item.pk, self._entry(spec, row))
                old_row = {**row, **before_ref}
                for fk, p, after in self._triggers(schema, table, old_row, row):
                    deeper += self._collect(session, fk, p, after, item.position)
        return deeper

    def _read(
        self, spec: TableSpec, refs: Sequence[RowRef]
    ) -> dict[RowRef, Mapping[str, Any] | None]:
        if self._reader is None:
            import pymysql
            import sqlalchemy as sa

            params = self._mysql
            self._reader = SqlRowReader(
                sa.create_engine(
                    "mysql+pymysql://",
                    creator=lambda: pymysql.connect(**params, connect_timeout=5, read_timeout=30),
                    pool_pre_ping=True,
                    pool_size=1,
                )
            )
        return self._reader.fetch(spec, refs)

    def _drop_removals(self, saved: ResumePoint | None) -> None:
        final = [key for key, position in self._removals.items() if covered(saved, position)]
        if final:
            self.index.write([("del", slot, pk, "") for slot, pk in final])
            for key in final:
                del self._removals[key]


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def cascade_index(applier: Any, pipeline: str) -> ReverseIndex | None:
    """The reverse index in the applier's Redis (``None``: no Redis sink, keep it in memory)."""
    from ..sinks import RedisSink

    keys = getattr(applier, "keys", None)
    if isinstance(keys, RedisSink):
        return RedisReverseIndex(keys.client, pipeline)
    return None
