"""Foreign keys whose referential actions change watched rows behind the binlog's back.

``ON DELETE CASCADE``, ``ON DELETE SET NULL`` and ``ON UPDATE CASCADE`` /
``SET NULL`` are carried out inside the storage engine: MySQL and MariaDB write
only the PARENT row to the binlog, never the child rows the action deleted or
changed (MySQL bug #32506). A sidecar that only reads row events therefore
leaves every cached child key and document as it was. This module reads the
constraints from ``information_schema`` (the sidecar's ``SELECT`` grant is
enough) and decides, purely, which of them :mod:`.cascades` can follow and which
it must name as not covered.

Coverage rules (see :func:`analyse`):

* a constraint matters when its child table is watched, or when its child is a
  parent of a constraint that matters and the action reaches it (a cascade
  that deletes an unwatched table's rows may cascade on into a watched one);
* a matter-ing constraint is *covered* when its child table is watched: the
  sidecar keeps a reverse index of that child's rows per parent value
  (:mod:`.cascades`). An unwatched PARENT is fine: its rows are streamed too
  (a spec without keys or projections, :func:`parent_specs`), at the cost of
  decoding them;
* it is *not covered* when the chain passes through an unwatched child table
  (the sidecar never sees those rows, so it cannot know which rows further
  down were attached to them), and a watched child whose ``invalidates=``
  callable needs the whole before image of a row deleted by the cascade gets
  its template keys and documents, not its intents. Both are named at start-up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry, TableSpec
from . import server

__all__ = [
    "Coverage",
    "ForeignKey",
    "analyse",
    "parent_specs",
    "read_foreign_keys",
]

log = logging.getLogger("cachesync.cascades")

#: Referential actions that change child rows without a binlog row event.
ACTING = frozenset({"CASCADE", "SET NULL"})

#: The constraints and their columns. KEY_COLUMN_USAGE is visible with SELECT alone.
_COLUMNS = """SELECT CONSTRAINT_SCHEMA, CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_SCHEMA,
       REFERENCED_TABLE_NAME, COLUMN_NAME, REFERENCED_COLUMN_NAME
FROM information_schema.KEY_COLUMN_USAGE
WHERE CONSTRAINT_SCHEMA IN ({schemas}) AND REFERENCED_TABLE_NAME IS NOT NULL
ORDER BY CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION"""

#: The rules. MariaDB (10.11 verified) shows no REFERENTIAL_CONSTRAINTS row to a user
#: with only SELECT on the child table; :func:`_rules_from_ddl` then reads them.
_RULES = """SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE
FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA IN ({schemas})"""

_CONSTRAINT = re.compile(
    r"CONSTRAINT\s+`(?P<name>(?:[^`]|``)+)`\s+FOREIGN KEY\s*\([^)]*\)\s*REFERENCES\s+"
    r"[^(]+\([^)]*\)(?P<rest>[^\n]*)"
)
_RULE = re.compile(r"ON (DELETE|UPDATE) (CASCADE|SET NULL|SET DEFAULT|RESTRICT|NO ACTION)")


def _rules_from_ddl(conn: Any, schema: str, table: str) -> dict[str, tuple[str, str]]:
    """``constraint -> (update rule, delete rule)`` from ``SHOW CREATE TABLE`` (SELECT suffices)."""
    with conn.cursor() as cur:
        cur.execute(f"SHOW CREATE TABLE `{schema.replace('`', '``')}`.`{table.replace('`', '``')}`")
        ddl = str(cur.fetchone()[1])
    rules = {}
    for match in _CONSTRAINT.finditer(ddl):
        found = dict(_RULE.findall(match["rest"]))
        name = match["name"].replace("``", "`")
        rules[name] = (found.get("UPDATE", "RESTRICT"), found.get("DELETE", "RESTRICT"))
    return rules


@dataclass(frozen=True)
class ForeignKey:
    """One constraint: ``child(columns) REFERENCES parent(referenced)`` with its two rules."""

    schema: str  # the child's (and the constraint's) schema
    name: str
    child: str
    columns: tuple[str, ...]
    parent_schema: str
    parent: str
    referenced: tuple[str, ...]
    on_update: str = "RESTRICT"
    on_delete: str = "RESTRICT"

    @property
    def id(self) -> str:
        """``schema.child.constraint``: unique per server, used in index names and logs."""
        return f"{self.schema}.{self.child}.{self.name}"

    @property
    def acts(self) -> bool:
        """True when a parent DELETE or UPDATE changes child rows without a row event."""
        return self.on_delete in ACTING or self.on_update in ACTING

    def describe(self) -> str:
        rules = []
        if self.on_delete in ACTING:
            rules.append(f"ON DELETE {self.on_delete}")
        if self.on_update in ACTING:
            rules.append(f"ON UPDATE {self.on_update}")
        return (
            f"{self.schema}.{self.child}({', '.join(self.columns)}) -> "
            f"{self.parent_schema}.{self.parent}({', '.join(self.referenced)}) "
            f"constraint {self.name!r} {' '.join(rules)}"
        )


def read_foreign_keys(conn: Any, schemas: Iterable[str]) -> list[ForeignKey]:
    """Every foreign key whose child lives in one of *schemas*.

    Two queries, plus one ``SHOW CREATE TABLE`` per child table whose rules
    ``information_schema`` hides. Raises what
    :func:`cachesync.binlog.server.translate` makes of a PyMySQL error.
    """
    wanted = sorted(set(schemas))
    if not wanted:
        return []
    marks = ", ".join(["%s"] * len(wanted))
    columns: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    parents: dict[tuple[str, str, str], tuple[str, str]] = {}
    rules: dict[tuple[str, str, str], tuple[str, str]] = {}
    what = "reading foreign keys from information_schema"
    with server.translate_errors(what):
        with conn.cursor() as cur:
            cur.execute(_COLUMNS.format(schemas=marks), wanted)
            for schema, name, child, pschema, parent, col, ref in cur.fetchall():
                key = (str(schema), str(child), str(name))
                parents[key] = (str(pschema), str(parent))
                columns.setdefault(key, []).append((str(col), str(ref)))
            cur.execute(_RULES.format(schemas=marks), wanted)
            for schema, child, name, upd, dele in cur.fetchall():
                rules[(str(schema), str(child), str(name))] = (str(upd), str(dele))
        hidden = sorted({(k[0], k[1]) for k in columns if k not in rules})
        for schema, child in hidden:
            for name, found in _rules_from_ddl(conn, schema, child).items():
                rules[(schema, child, name)] = found
    found_keys = []
    for key, pairs in columns.items():
        upd, dele = rules.get(key, ("RESTRICT", "RESTRICT"))
        found_keys.append(
            ForeignKey(
                schema=key[0],
                name=key[2],
                child=key[1],
                columns=tuple(c for c, _ in pairs),
                parent_schema=parents[key][0],
                parent=parents[key][1],
                referenced=tuple(r for _, r in pairs),
                on_update=upd.upper(),
                on_delete=dele.upper(),
            )
        )
    return found_keys


@dataclass
class Coverage:
    """What :func:`analyse` decided: the constraints to follow and what is named as not covered."""

    #: Constraints into a watched child, by parent ``(schema, table)``.
    by_parent: dict[tuple[str, str], list[ForeignKey]] = field(default_factory=dict)
    #: Constraints into a watched child, by child ``(schema, table)``.
    by_child: dict[tuple[str, str], list[ForeignKey]] = field(default_factory=dict)
    #: Human-readable reasons, one per constraint the sidecar cannot follow.
    uncovered: list[str] = field(default_factory=list)

    @property
    def covered(self) -> list[ForeignKey]:
        return [fk for fks in self.by_child.values() for fk in fks]

    def referenced_columns(self, schema: str, table: str) -> tuple[str, ...]:
        """Columns of ``schema.table`` that covered constraints reference (as a parent)."""
        names: dict[str, None] = {}
        for fk in self.by_parent.get((schema, table), ()):
            names.update(dict.fromkeys(fk.referenced))
        return tuple(names)


def _watched(registry: Registry, default_schema: str | None) -> dict[tuple[str, str], TableSpec]:
    out: dict[tuple[str, str], TableSpec] = {}
    for spec in registry.tables():
        schema = spec.schema or default_schema
        if schema is not None:
            out[(schema, spec.table)] = spec
    return out


def analyse(registry: Registry, fks: Sequence[ForeignKey], default_schema: str | None) -> Coverage:
    """Split *fks* into the constraints :mod:`.cascades` follows and those it names (pure)."""
    watched = _watched(registry, default_schema)
    coverage = Coverage()
    acting = [fk for fk in fks if fk.acts]
    for fk in acting:
        child = (fk.schema, fk.child)
        spec = watched.get(child)
        if spec is None:
            continue
        coverage.by_child.setdefault(child, []).append(fk)
        coverage.by_parent.setdefault((fk.parent_schema, fk.parent), []).append(fk)
        if spec.invalidates is not None and fk.on_delete == "CASCADE":
            coverage.uncovered.append(
                f"{fk.describe()}: {spec.model} declares invalidates=, which needs the whole "
                "row; for rows this constraint deletes only the template keys and documents "
                "are removed"
            )
    # A chain through an unwatched child: P -> C (not watched) -> ... -> a watched table.
    reaches: set[tuple[str, str]] = set(coverage.by_child)
    changed = True
    while changed:
        changed = False
        for fk in acting:
            child = (fk.schema, fk.child)
            if child in watched or child in reaches:
                continue
            if any(
                (d.parent_schema, d.parent) == child
                for d in acting
                if (d.schema, d.child) in reaches
            ):
                reaches.add(child)
                changed = True
    for fk in acting:
        child = (fk.schema, fk.child)
        if child in reaches and child not in watched:
            coverage.uncovered.append(
                f"{fk.describe()}: {fk.schema}.{fk.child} is not watched, so the sidecar never "
                "sees its rows and cannot follow this cascade into the watched tables below it; "
                "declare a model for it (any key template will do) to cover the chain"
            )
    return coverage


def parent_specs(
    registry: Registry, coverage: Coverage, default_schema: str | None
) -> list[TableSpec]:
    """Specs without keys or projections for unwatched parents, so their rows are streamed.

    :func:`cachesync.planning.plan` gives them no actions; :mod:`.cascades` reads
    their changes for the referenced columns.
    """
    watched = _watched(registry, default_schema)
    specs = []
    for (schema, table), fks in sorted(coverage.by_parent.items()):
        if (schema, table) in watched:
            continue
        columns = coverage.referenced_columns(schema, table)
        specs.append(
            TableSpec(
                model=f"<parent of {', '.join(sorted({fk.id for fk in fks}))}>",
                schema=schema,
                table=table,
                columns={c: c for c in columns},
                primary_key=columns,
                key_templates=(),
                projections=(),
            )
        )
    return specs


def source_registry(specs: Iterable[TableSpec], extra: Iterable[TableSpec]) -> Registry:
    """A registry with *specs* plus *extra* (what the binlog source streams)."""
    registry = Registry()
    for spec in [*specs, *extra]:
        registry.add(spec)
    return registry


def describe_all(fks: Iterable[ForeignKey]) -> str:
    return "; ".join(fk.describe() for fk in fks) or "none"


def index_of(mapping: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...] | None:
    """The values of *columns* in a row image, ``None`` when any is NULL (no parent)."""
    values = tuple(mapping.get(c) for c in columns)
    return None if any(v is None for v in values) else values
