"""What cachesync knows about one watched table: :class:`TableSpec`.

ORM-neutral and pure. The ORM integrations read a model's metadata into a spec
through :func:`cachesync.registry.resolve`; everything downstream (planning, the
sidecar, the retry consumer) speaks only this, with rows translated between
column names (binlog, SQL) and attribute names (templates, projections) here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .actions import RowRef
from .errors import SchemaError
from .keys import KeyTemplate
from .projection import ResolvedProjection
from .spec import Invalidates, Row

if TYPE_CHECKING:
    from .related import Walker

__all__ = ["TableSpec"]


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
    #: Document fields read from related rows: field -> dotted path (:mod:`cachesync.related`).
    related: Mapping[str, str] = field(default_factory=dict)
    #: Relation path -> key templates of this model that drop when the related row changes.
    depends_on: Mapping[tuple[str, ...], tuple[KeyTemplate, ...]] = field(default_factory=dict)
    #: Follows relation paths through the ORM's metadata (set by the ORM integration).
    walker: Walker | None = field(default=None, compare=False, repr=False)
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
        for name in self.related:  # a joined read labels related values "@name"
            labelled = "@" + name
            if labelled in image:
                row[name] = image[labelled]
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

    def row_ref(self, image: Mapping[str, Any]) -> RowRef:
        """The primary key of a row image keyed by column, for re-reading the row later."""
        pk = {column: image.get(column) for column in self.primary_key_columns()}
        return RowRef(schema=self.schema, table=self.table, primary_key=pk)

    def missing(self, row: Row, names: Iterable[str], what: str) -> SchemaError:
        """The :class:`SchemaError` for a declaration reading attributes *row* lacks."""
        absent = [n for n in names if n not in row]
        columns = ", ".join(self.columns[n] for n in absent)
        return SchemaError(
            f"{self.model}: {what} needs column(s) {columns} but the row image of "
            f"{self.table!r} has none; was the column dropped or renamed? Fix the declaration "
            "or the table, then restart",
            model=self.model,
            table=self.table,
        )
