"""Declarations resolved against a model into ORM-neutral :class:`TableSpec` objects.

The ORM integrations (SQLAlchemy, Django) read a model's metadata into
``(schema, table, attribute -> column, primary key)`` and call :func:`resolve`;
everything downstream (planning, the binlog sidecar, the retry consumer) speaks
only :class:`TableSpec`, keyed by ``(schema, table)`` in a :class:`Registry`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DeclarationError, TemplateError
from .keys import KeyTemplate
from .spec import Invalidates, Projection, Row, Sync
from .values import json_value

__all__ = ["Registry", "ResolvedProjection", "TableSpec", "default_registry", "resolve"]


@dataclass(frozen=True)
class ResolvedProjection:
    """A :class:`~cachesync.spec.Projection` checked against its model."""

    declared: Projection
    id_template: KeyTemplate

    @property
    def index(self) -> str:
        return self.declared.index

    def matches(self, row: Row) -> bool:
        """True when *row* should have a document (its ``when`` holds, or there is none)."""
        when = self.declared.when
        return True if when is None else bool(when(row))

    def doc_id(self, row: Row) -> str | None:
        """The document id of *row*; ``None`` when an id field is NULL."""
        return self.id_template.render(row)

    def document(self, row: Row) -> dict[str, Any]:
        """The JSON-ready document body of *row* (pure; no I/O)."""
        if self.declared.to_document is not None:
            body = dict(self.declared.to_document(row))
        else:
            body = {name: row[name] for name in self.declared.fields or ()}
        return {str(k): json_value(v) for k, v in body.items()}


@dataclass(frozen=True)
class TableSpec:
    """Everything cachesync needs to know about one watched table.

    ``columns`` maps attribute name to column name (they differ for
    ``mapped_column("user_name")`` or Django's ``db_column``); ``primary_key``
    lists attribute names. Several attributes may name one column (Django's
    ``pk``, or a foreign key's ``author`` and ``author_id``): the first one listed
    is the column's canonical attribute, the others are aliases that
    :meth:`row_from_columns` fills with the same value, so a template may use
    any of them on every path.
    """

    model: str
    schema: str | None
    table: str
    columns: Mapping[str, str]
    primary_key: tuple[str, ...]
    key_templates: tuple[KeyTemplate, ...]
    projections: tuple[ResolvedProjection, ...]
    invalidates: Invalidates | None = None
    attributes_by_column: Mapping[str, str] = field(init=False, repr=False, compare=False)
    aliases: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_column: dict[str, str] = {}
        aliases: list[tuple[str, str]] = []
        for attr, column in self.columns.items():
            if column in by_column:
                aliases.append((attr, by_column[column]))
            else:
                by_column[column] = attr
        object.__setattr__(self, "attributes_by_column", by_column)
        object.__setattr__(self, "aliases", tuple(aliases))

    def row_from_columns(self, image: Mapping[str, Any]) -> dict[str, Any]:
        """Translate a row image keyed by column (binlog, SQL) into one keyed by attribute.

        Columns the model does not map are dropped; mapped columns missing from the
        image (a column added by ``ALTER TABLE`` later) are absent, not ``None``.
        """
        by_column = self.attributes_by_column
        row = {by_column[c]: v for c, v in image.items() if c in by_column}
        for alias, attr in self.aliases:
            if attr in row:
                row[alias] = row[attr]
        return row

    def columns_from_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Translate a row keyed by attribute into one keyed by column."""
        return {self.columns[a]: v for a, v in row.items() if a in self.columns}

    @property
    def column_names(self) -> tuple[str, ...]:
        """Each mapped column once, in declaration order (aliases share a column)."""
        return tuple(self.attributes_by_column)

    def primary_key_columns(self) -> tuple[str, ...]:
        """The primary key as column names, in declaration order."""
        return tuple(self.columns[a] for a in self.primary_key)

    @property
    def key_columns(self) -> frozenset[str]:
        """Columns that key templates and projection ids read (a DROP of one must stop the sidecar)."""
        names = {f for t in self.key_templates for f in t.fields}
        names.update(f for p in self.projections for f in p.id_template.fields)
        return frozenset(self.columns[n] for n in names)


def _parse(model: str, text: Any, what: str, attributes: Mapping[str, str]) -> KeyTemplate:
    try:
        template = KeyTemplate.parse(text)
    except TemplateError as exc:
        raise DeclarationError(f"{model}: {what}: {exc}", model=model) from None
    for name in template.fields:
        if name not in attributes:
            raise DeclarationError(
                f"{model}: {what} {text!r} uses unknown attribute {name!r} "
                f"(attributes: {', '.join(sorted(attributes))})",
                model=model,
            )
    return template


def _resolve_projection(
    model: str, p: Any, attributes: Mapping[str, str], primary_key: Sequence[str]
) -> ResolvedProjection:
    if not isinstance(p, Projection):
        raise DeclarationError(f"{model}: search= expects Projection objects, got {p!r}")
    where = f"Projection(index={p.index!r})"
    if not isinstance(p.index, str) or not p.index or p.index != p.index.lower():
        raise DeclarationError(f"{model}: {where}: index must be a non-empty lowercase name")
    if (p.fields is None) == (p.to_document is None):
        raise DeclarationError(
            f"{model}: {where} needs exactly one of fields=[...] or to_document=callable"
        )
    if p.fields is not None:
        if isinstance(p.fields, str) or not p.fields:
            raise DeclarationError(f"{model}: {where}: fields must be a non-empty list of names")
        for name in p.fields:
            if name not in attributes:
                raise DeclarationError(
                    f"{model}: {where} field {name!r} is not an attribute of the model "
                    f"(attributes: {', '.join(sorted(attributes))})"
                )
    for label, fn in (("to_document", p.to_document), ("when", p.when)):
        if fn is not None and not callable(fn):
            raise DeclarationError(f"{model}: {where}: {label} must be callable")
    id_text = p.id if p.id is not None else ":".join(f"{{{a}}}" for a in primary_key)
    return ResolvedProjection(
        declared=p, id_template=_parse(model, id_text, f"{where} id", attributes)
    )


def resolve(
    model: str,
    sync: Any,
    *,
    table: str,
    columns: Mapping[str, str],
    primary_key: Sequence[str],
    schema: str | None = None,
) -> TableSpec:
    """Check *sync* against a model's metadata and build its :class:`TableSpec`.

    Raises :class:`DeclarationError` naming *model* and the bad template or field.
    """
    if not isinstance(sync, Sync):
        raise DeclarationError(
            f"{model}: __cachesync__ must be a cachesync.Sync(...), got {type(sync).__name__}",
            model=model,
        )
    if not primary_key:
        raise DeclarationError(f"{model}: the model has no primary key", model=model)
    if isinstance(sync.keys, str):
        raise DeclarationError(
            f"{model}: keys={sync.keys!r} must be a list of templates, not a string", model=model
        )
    templates = tuple(_parse(model, k, "key", columns) for k in sync.keys)
    projections = tuple(
        _resolve_projection(model, p, columns, primary_key) for p in sync.projections
    )
    if sync.invalidates is not None and not callable(sync.invalidates):
        raise DeclarationError(f"{model}: invalidates must be callable(before, after) -> keys")
    if not templates and not projections and sync.invalidates is None:
        raise DeclarationError(
            f"{model}: Sync() declares nothing; give keys=[...], search=Projection(...) "
            "or invalidates=",
            model=model,
        )
    return TableSpec(
        model=model,
        schema=schema,
        table=table,
        columns=dict(columns),
        primary_key=tuple(primary_key),
        key_templates=templates,
        projections=projections,
        invalidates=sync.invalidates,
    )


class Registry:
    """``(schema, table) -> TableSpec``. A spec registered without a schema matches any schema."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str | None, str], TableSpec] = {}
        self._lock = threading.Lock()

    def add(self, spec: TableSpec) -> TableSpec:
        """Register *spec*; re-registering the same model replaces it, another model is an error."""
        key = (spec.schema, spec.table)
        with self._lock:
            existing = self._specs.get(key)
            if existing is not None and existing.model != spec.model:
                raise DeclarationError(
                    f"{spec.model}: table {spec.table!r} is already declared by {existing.model}",
                    model=spec.model,
                )
            self._specs[key] = spec
        return spec

    def remove(self, spec: TableSpec) -> None:
        """Forget *spec* (tests, hot reload)."""
        with self._lock:
            self._specs.pop((spec.schema, spec.table), None)

    def get(self, schema: str | None, table: str) -> TableSpec | None:
        """The spec of ``schema.table``, or of ``table`` declared without schema, or ``None``."""
        specs = self._specs
        return specs.get((schema, table)) or specs.get((None, table))

    def for_model(self, model: str) -> TableSpec:
        """The spec of a model by its name (``"User"`` or ``"app.User"``)."""
        for spec in self._specs.values():
            if spec.model == model or spec.model.rsplit(".", 1)[-1] == model:
                return spec
        known = ", ".join(sorted(s.model for s in self._specs.values())) or "none"
        raise DeclarationError(f"no model named {model!r} is declared (declared: {known})")

    def for_index(self, index: str) -> list[tuple[TableSpec, ResolvedProjection]]:
        """Every (spec, projection) pair that writes to *index*."""
        return [(s, p) for s in self._specs.values() for p in s.projections if p.index == index]

    def tables(self) -> list[TableSpec]:
        return list(self._specs.values())

    def __iter__(self) -> Iterator[TableSpec]:
        return iter(self.tables())

    def __len__(self) -> int:
        return len(self._specs)


#: The process-wide registry the mixins, decorators and ``register()`` write to.
default_registry = Registry()
