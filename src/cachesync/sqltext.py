"""MySQL/MariaDB identifiers in hand-written SQL (reindex and verify read tables with PyMySQL).

Table and column names come from ORM metadata, not from users, but they may
still contain backticks or reserved words: always quote them.
"""

from __future__ import annotations

__all__ = ["qualified_table", "quote"]


def quote(name: str) -> str:
    """```name``` with embedded backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def qualified_table(schema: str | None, table: str) -> str:
    """```schema`.`table``` or ```table``` when no schema is known."""
    return quote(table) if schema is None else f"{quote(schema)}.{quote(table)}"
