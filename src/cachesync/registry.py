"""Declarations resolved against a model, and the :class:`Registry` that holds them.

The ORM integrations (SQLAlchemy, Django) read a model's metadata into
``(schema, table, attribute -> column, primary key)`` and call :func:`resolve`,
which checks the :class:`~cachesync.spec.Sync` declaration and builds a
:class:`~cachesync.tables.TableSpec`; the registry keys specs by ``(schema, table)``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .errors import DeclarationError, TemplateError
from .keys import KeyTemplate
from .projection import ResolvedProjection
from .related import Walker, parse_path
from .spec import Projection, Sync
from .tables import TableSpec

# TableSpec and ResolvedProjection are re-exported: most callers meet them through a registry.
__all__ = ["Registry", "ResolvedProjection", "TableSpec", "default_registry", "resolve"]


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
    if p.id is None:  # the default: the primary key, injective for composite keys too
        return ResolvedProjection(declared=p, id_template=KeyTemplate.composite(primary_key))
    return ResolvedProjection(
        declared=p, id_template=_parse(model, p.id, f"{where} id", attributes)
    )


def resolve(
    model: str,
    sync: Any,
    *,
    table: str,
    columns: Mapping[str, str],
    primary_key: Sequence[str],
    schema: str | None = None,
    walker: Walker | None = None,
) -> TableSpec:
    """Check *sync* against a model's metadata and build its :class:`TableSpec`.

    *walker* follows relation paths for ``related=`` fields and ``depends_on=``
    (:mod:`cachesync.related`); their paths are checked here, the relations
    themselves when first resolved (:func:`cachesync.related.relations_of`).
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
    related = _related_fields(model, sync, columns)
    depends_on = _depends_on(model, sync, columns)
    if (related or depends_on) and walker is None:
        raise DeclarationError(
            f"{model}: related=/depends_on= need the SQLAlchemy or Django integration, "
            "which follows the ORM's relations",
            model=model,
        )
    if not templates and not projections and sync.invalidates is None and not depends_on:
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
        related=related,
        depends_on=depends_on,
        walker=walker,
    )


def _related_fields(model: str, sync: Sync, attributes: Mapping[str, str]) -> dict[str, str]:
    """Every projection's ``related=`` fields; one name means one path across projections."""
    fields: dict[str, str] = {}
    for p in sync.projections:
        if not isinstance(p, Projection) or p.related is None:
            continue
        if not isinstance(p.related, Mapping):
            raise DeclarationError(
                f"{model}: Projection(index={p.index!r}): related= must be a mapping "
                "{'field': 'relation.attribute'}",
                model=model,
            )
        for name, path in p.related.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise DeclarationError(f"{model}: related field name {name!r} is not a name")
            if name in attributes:
                raise DeclarationError(
                    f"{model}: related field {name!r} is also an attribute of the model; "
                    "give it another name",
                    model=model,
                )
            parse_path(model, name, path)
            if fields.setdefault(name, path) != path:
                raise DeclarationError(
                    f"{model}: related field {name!r} names two paths "
                    f"({fields[name]!r}, {path!r}) in two projections",
                    model=model,
                )
    return fields


def _depends_on(
    model: str, sync: Sync, attributes: Mapping[str, str]
) -> dict[tuple[str, ...], tuple[KeyTemplate, ...]]:
    if sync.depends_on is None:
        return {}
    if not isinstance(sync.depends_on, Mapping):
        raise DeclarationError(
            f"{model}: depends_on= must be a mapping {{'relation': ['key template', ...]}}",
            model=model,
        )
    out: dict[tuple[str, ...], tuple[KeyTemplate, ...]] = {}
    for relation, keys in sync.depends_on.items():
        parts = tuple(relation.split(".")) if isinstance(relation, str) else ()
        if not parts or not all(p.isidentifier() for p in parts):
            raise DeclarationError(
                f"{model}: depends_on key {relation!r} must name a relation ('category', "
                "'category.department')",
                model=model,
            )
        if isinstance(keys, str) or not keys:
            raise DeclarationError(
                f"{model}: depends_on[{relation!r}] must be a non-empty list of key templates",
                model=model,
            )
        unlisted = [k for k in keys if k not in sync.keys]
        if unlisted:
            raise DeclarationError(
                f"{model}: depends_on[{relation!r}] names {unlisted[0]!r}, which is not in "
                "keys=[...]; list it there too (its row's own changes drop it as well)",
                model=model,
            )
        out[parts] = tuple(
            _parse(model, k, f"depends_on[{relation!r}] key", attributes) for k in keys
        )
    return out


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
