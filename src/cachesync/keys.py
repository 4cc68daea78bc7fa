"""Key templates: ``"user:{id}"`` rendered from a row keyed by attribute name.

A template is parsed once, at declaration time, so that a typo fails at import
and rendering on the hot path is a plain ``str.format`` call.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import TemplateError
from .values import key_value

__all__ = ["KeyTemplate", "TemplateError", "document_id", "wire_key"]  # TemplateError lives in errors.py

_FORMATTER = string.Formatter()


def wire_key(key: str) -> bytes:
    """The bytes Redis stores for a rendered key.

    Keys are text rendered from column values, but a ``VARBINARY``/``BLOB`` value
    need not be UTF-8: :func:`~cachesync.values.key_value` keeps its undecodable
    bytes as lone surrogates (``surrogateescape``), and this restores them, so the
    key is byte-exact whichever path (binlog, ORM, read path) rendered it. A plain
    ``str.encode()`` would raise ``UnicodeEncodeError`` on such a key.
    """
    return key.encode("utf-8", "surrogateescape")


def document_id(text: str) -> str:
    """The Elasticsearch id for a rendered id: valid UTF-8 text whatever the source bytes.

    An id rendered from a non-UTF-8 ``VARBINARY`` key holds lone surrogates
    (see :func:`wire_key`) that JSON cannot carry; their bytes are written as
    ``\\xff`` escapes instead. Ids that are valid text are returned unchanged.
    """
    if text.isascii():
        return text
    return wire_key(text).decode("utf-8", "backslashreplace")


def _escape_separator(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """A parsed ``str.format``-style template over model attribute names.

    Only plain names are allowed (``{id}``, ``{id:08d}``); attribute access and
    indexing (``{user.id}``, ``{a[0]}``) and positional fields (``{}``) are
    rejected, because the binlog path has no objects to walk.
    """

    text: str
    fields: tuple[str, ...]
    #: Escape ``\\`` and ``:`` in every value, so that a ``:``-joined composite id
    #: stays injective: ``('a', 'b:c')`` and ``('a:b', 'c')`` render differently.
    escaped: bool = False

    @classmethod
    def composite(cls, names: Sequence[str]) -> KeyTemplate:
        """``{a}:{b}:...`` over *names*; escaped when there are several (see ``escaped``)."""
        template = cls.parse(":".join(f"{{{n}}}" for n in names))
        return cls(template.text, template.fields, escaped=len(template.fields) > 1)

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        """Parse *text*; raise :class:`TemplateError` saying what is wrong."""
        if not isinstance(text, str) or not text:
            raise TemplateError(f"key template must be a non-empty string, got {text!r}")
        fields: list[str] = []
        try:
            parsed = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise TemplateError(f"key template {text!r} is malformed: {exc}") from None
        for _literal, name, spec, _conversion in parsed:
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise TemplateError(
                    f"key template {text!r} uses a positional field; name an attribute, e.g. {{id}}"
                )
            if not name.isidentifier():
                raise TemplateError(
                    f"key template {text!r}: field {{{name}}} must be a plain attribute name "
                    "(no '.', '[' or expressions)"
                )
            if spec and ("{" in spec):
                raise TemplateError(f"key template {text!r}: nested fields are not supported")
            if name not in fields:
                fields.append(name)
        return cls(text=text, fields=tuple(fields))

    def render(self, row: Mapping[str, Any]) -> str | None:
        """Render the key for *row*; ``None`` when a field is NULL (the key cannot exist).

        Raises ``KeyError`` when *row* lacks a field: callers validated fields against
        the model at declaration time, so this means the row image is incomplete.
        """
        values: dict[str, Any] = {}
        for name in self.fields:
            value = row[name]
            if value is None:
                return None
            values[name] = key_value(value)
        if self.escaped:
            values = {n: _escape_separator(str(v)) for n, v in values.items()}
        return self.text.format_map(values)

    def null_fields(self, row: Mapping[str, Any]) -> list[str]:
        """Names of the fields that are NULL in *row* (for the log line that explains a skip)."""
        return [name for name in self.fields if row.get(name) is None]

    def __str__(self) -> str:
        return self.text
