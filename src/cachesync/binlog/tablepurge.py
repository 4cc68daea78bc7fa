"""What the sidecar does at a TRUNCATE, DROP or RENAME of a watched table.

Such a statement is one QUERY event with no rows (:mod:`.tabledrops` reads it),
so the keys and documents of the rows it took away cannot be rendered; they
are matched instead:

* **Keys**: every key template becomes a Redis glob (``shop:user:{id}`` ->
  ``shop:user:*``) and the keyspace is walked with ``SCAN MATCH`` (every
  primary of a cluster), deleting each page of matches with a multi-key
  ``UNLINK``. ``SCAN`` is O(keyspace) whatever the pattern. A pattern may also
  match keys of other templates (``user:*`` covers ``user:by-name:x``): those
  are cache entries, so the cost is a miss, never a wrong value. A template
  with no literal text at all (``{id}``) would match every key: it is not
  purged, and is named at start-up and at every such statement.
* **Documents**: every document of each projection's index is deleted with the
  statement's position as its external version (:meth:`DocumentSink.purge`),
  so a document a later change wrote survives. An index several tables write
  to cannot tell their documents apart (ids carry no table), so it is emptied
  the same way and the other tables are read again into it.
* **Re-reads**: a table renamed in (the second half of an ETL swap ``RENAME
  TABLE t TO t_old, t_new TO t``) or changed by partition surgery holds rows
  nobody streamed; after the purge it is read again in primary-key order,
  chunked, through :func:`~cachesync.binlog.reindex.reindex`, with versions
  from the statement's position, so every change streamed after it wins.

Ordering (why it is correct): :class:`~cachesync.binlog.source.BinlogSource`
holds the stream *before* the statement until the purge is done, so every
change before it is applied first and none after it yet; the checkpoint moves
past the statement only after the purge, so a SIGKILL during one redoes it on
restart (it is idempotent). It is never handed to the retry path: a purge run
late, after later changes were applied, would delete the rows those changes
wrote to the cache. While Redis or Elasticsearch is down the stream waits.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import metrics
from ..errors import PermanentError, SchemaError, SourceError, TransientError
from ..keys import KeyTemplate
from ..registry import Registry, TableSpec
from ..sinks.base import DocumentSink, KeySink
from . import server
from .reindex import reindex
from .tabledrops import TableEffect, TableStatement

__all__ = ["PurgeReport", "TablePurge", "key_pattern"]

log = logging.getLogger("cachesync.sidecar")

_FORMATTER = string.Formatter()
_GLOB_SPECIAL = set("*?[]\\")


def key_pattern(template: KeyTemplate) -> str | None:
    """The Redis glob matching every key *template* can render; ``None`` when it has no literal text.

    Literal text is glob-escaped and each field becomes ``*`` (a field's value
    may be any text, ``:`` included).
    """
    parts: list[str] = []
    literal_seen = False
    for literal, name, _spec, _conversion in _FORMATTER.parse(template.text):
        if literal:
            literal_seen = True
            parts.append("".join("\\" + c if c in _GLOB_SPECIAL else c for c in literal))
        if name is not None and (not parts or parts[-1] != "*"):
            parts.append("*")
    return "".join(parts) if literal_seen else None


@dataclass
class PurgeReport:
    """What one statement's purge did, for the log line and the tests."""

    keys: dict[str, int] = field(default_factory=dict)  # pattern -> keys deleted
    documents: dict[str, int] = field(default_factory=dict)  # index -> documents deleted
    reread: dict[str, int] = field(default_factory=dict)  # model -> rows read again
    uncovered: list[str] = field(default_factory=list)  # what could not be purged, and why


class TablePurge:
    """Purges the keys and documents of tables a :class:`TableStatement` emptied or replaced.

    :meth:`purge` raises :class:`~cachesync.errors.TransientError` when a
    service could not be reached; it is idempotent, so the caller repeats it
    (holding the stream) until it returns.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        keys: KeySink | None,
        documents: DocumentSink | None,
        mysql: Mapping[str, Any],
        default_schema: str | None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.documents = documents
        self._mysql = dict(mysql)
        self._default_schema = default_schema

    # -- start-up --------------------------------------------------------------------------

    def uncovered(self, spec: TableSpec) -> list[str]:
        """What a TRUNCATE/DROP/RENAME of *spec*'s table cannot purge, one line each."""
        lines = [
            f"key template {str(t)!r} of {spec.model} has no literal text, so no pattern "
            "can find its keys without matching every key: they are NOT purged (they stay "
            "until they expire or are overwritten; give the template a literal prefix)"
            for t in spec.key_templates
            if key_pattern(t) is None
        ]
        if spec.invalidates is not None:
            lines.append(
                f"the invalidates callable of {spec.model} needs row images, which such a "
                "statement does not log: the keys it would return are NOT purged"
            )
        return lines

    def log_notes(self) -> None:
        """Say at start-up what a TRUNCATE/DROP/RENAME would do and what it cannot cover."""
        for spec in self.registry.tables():
            for line in self.uncovered(spec):
                log.warning("cachesync: on TRUNCATE/DROP/RENAME of %s: %s", spec.table, line)
            for projection in spec.projections:
                writers = self.registry.for_index(projection.index)
                if len(writers) > 1:
                    others = ", ".join(sorted({s.table for s, _p in writers if s is not spec}))
                    log.info(
                        "cachesync: index %s is shared: a TRUNCATE/DROP/RENAME of %s empties "
                        "it and reads %s again into it",
                        projection.index,
                        spec.table,
                        others,
                    )

    # -- at a statement --------------------------------------------------------------------

    def purge(self, held: TableStatement) -> PurgeReport:
        """Purge keys, then documents, then re-read the tables that need it; log what was done."""
        report = PurgeReport()
        # A cascade parent the source reads only for its foreign keys has nothing to purge.
        effects = [
            e
            for e in held.effects
            if e.spec.key_templates or e.spec.projections or e.spec.invalidates is not None
        ]
        if not effects:
            return report
        reread: dict[str, TableSpec] = {e.spec.model: e.spec for e in effects if e.reread}
        emptied = {e.spec.model for e in effects if not e.reread}
        for effect in effects:
            self._purge_keys(effect.spec, report)
        for effect in effects:
            for projection in effect.spec.projections:
                if projection.index in report.documents or self.documents is None:
                    continue
                report.documents[projection.index] = self.documents.purge(
                    projection.index, held.position
                )
                for spec, _p in self.registry.for_index(projection.index):
                    if spec.model not in emptied:  # a sharer's documents went too
                        reread.setdefault(spec.model, spec)
        self._reread(held, list(reread.values()), report)
        self._log(held, effects, report)
        return report

    def _purge_keys(self, spec: TableSpec, report: PurgeReport) -> None:
        report.uncovered.extend(self.uncovered(spec))
        if self.keys is None:
            return
        for template in spec.key_templates:
            pattern = key_pattern(template)
            if pattern is not None and pattern not in report.keys:
                report.keys[pattern] = self.keys.purge(pattern)

    def _reread(self, held: TableStatement, specs: list[TableSpec], report: PurgeReport) -> None:
        specs = [s for s in specs if s.projections]
        if not specs or self.documents is None:
            return
        at = replace(held.position, row=1)  # above the purge's deletes, below any later change
        conn = server.connect(self._mysql, what="MySQL (re-reading a renamed-in table)")
        try:
            for spec in specs:
                try:
                    done = reindex(
                        spec,
                        connection=conn,
                        search=self.documents,
                        registry=self.registry,
                        database=self._default_schema,
                        prune=False,
                        at=at,
                    )
                except (SourceError, TransientError) as exc:
                    code = exc.context.get("code")
                    if isinstance(exc, TransientError) and code != 1054:
                        raise  # (PyMySQL calls an unknown column an OperationalError)
                    if code not in (1146, 1814):
                        # A table renamed in without a declared column, say: as for an
                        # ALTER that drops one, stop; the restart after the fix redoes this.
                        raise SchemaError(
                            f"{spec.model}: re-reading {spec.table} after "
                            f"{held.describe(80)!r} at {held.position} failed: {exc}; the "
                            "sidecar stops before the statement and redoes it once fixed",
                            model=spec.model,
                            table=spec.table,
                        ) from None
                    # Gone (or its tablespace discarded) by now: a later statement in
                    # the stream says why, and is handled in its turn.
                    log.info("cachesync: %s not re-read: %s", spec.table, exc)
                    report.reread[spec.model] = 0
                    continue
                except PermanentError as exc:
                    report.uncovered.append(f"documents of {spec.model} rejected: {exc}")
                    continue
                report.reread[spec.model] = done.rows
        finally:
            conn.close()

    def _log(self, held: TableStatement, effects: list[TableEffect], report: PurgeReport) -> None:
        keys = sum(report.keys.values())
        documents = sum(report.documents.values())
        metrics.inc("table_statements_total")
        metrics.inc("purged_keys_total", keys)
        metrics.inc("purged_documents_total", documents)
        level = logging.WARNING if report.uncovered else logging.INFO
        tables = "; ".join(_effect(e) for e in effects)
        log.log(
            level,
            "cachesync: %s at %s (%s): purged %d key(s) [%s], %d document(s) [%s], re-read %s%s",
            tables,
            held.position,
            held.describe(),
            keys,
            ", ".join(f"{p!r}: {n}" for p, n in report.keys.items()) or "no key templates",
            documents,
            ", ".join(f"{i}: {n}" for i, n in report.documents.items()) or "no projections",
            ", ".join(f"{m}: {n} row(s)" for m, n in report.reread.items()) or "nothing",
            "".join(f"; NOT covered: {line}" for line in report.uncovered),
        )


def _effect(effect: TableEffect) -> str:
    spec = effect.spec
    name = f"{spec.schema}.{spec.table}" if spec.schema else spec.table
    return f"{'/'.join(effect.verbs)} of {name}"
