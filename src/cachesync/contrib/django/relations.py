"""Following ``related=`` / ``depends_on=`` paths through Django foreign keys.

The :data:`~cachesync.related.Walker` of a Django model: each hop is a
``ForeignKey`` or ``OneToOneField`` declared on the model (by field name or
``attname``), so a path names what a Django user already wrote. To-many
relations (reverse foreign keys, many-to-many) are refused: one row of the
model would depend on many related rows, which a joined ``SELECT`` cannot
render into one value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import DeclarationError
from ...related import Hop, Walker
from .tables import column_map, model_label

__all__ = ["relation_walker"]


def relation_walker(root: Any) -> Walker:
    """The walker of Django model *root* (resolved lazily; models must be loaded)."""

    def walk(path: Sequence[str]) -> list[Hop]:
        from django.core.exceptions import FieldDoesNotExist

        name = model_label(root)
        model, hops = root, []
        for part in path:
            where = f"{name}: relation {'.'.join(path)!r}: {model_label(model)}"
            try:
                field = model._meta.get_field(part)
            except FieldDoesNotExist:
                known = sorted(
                    f.name
                    for f in model._meta.get_fields()
                    if f.is_relation and (f.many_to_one or f.one_to_one) and f.concrete
                )
                raise DeclarationError(
                    f"{where} has no foreign key {part!r} (foreign keys: "
                    f"{', '.join(known) or 'none'})",
                    model=name,
                ) from None
            if not (
                field.is_relation and field.concrete and (field.many_to_one or field.one_to_one)
            ):
                raise DeclarationError(
                    f"{where}.{part} is not a ForeignKey/OneToOneField on this model; related "
                    "data follows to-one relations",
                    model=name,
                )
            target = field.related_model
            columns, _ = column_map(target)
            hops.append(
                Hop(
                    model=model_label(target),
                    schema=None,
                    table=target._meta.db_table,
                    local=(field.column,),
                    remote=(field.target_field.column,),
                    columns=columns,
                )
            )
            model = target
        return hops

    return walk
