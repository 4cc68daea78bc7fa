"""The versioned JSON encoding of actions, shared by the outbox table and Kafka messages.

Format version 1 (``"v": 1``), one object per action::

    {"v": 1, "type": "delete_keys", "keys": ["user:1"], "position": "binlog:mysql-bin.000003:1234:0"}
    {"v": 1, "type": "index_doc", "index": "users", "id": "1", "document": {...},
     "position": "...", "source": {"schema": "app", "table": "users", "pk": {"id": 1}}}
    {"v": 1, "type": "delete_doc", "index": "users", "id": "1", "position": "...", "source": {...}}

``position`` is :meth:`Position.encode` or ``null``. Primary-key values that JSON
cannot carry (decimals, dates, bytes) are tagged: ``{"$decimal": "1.5"}``,
``{"$datetime": "..."}``, ``{"$date": "..."}``, ``{"$bytes": "<base64>"}``.
A decoder that meets a newer ``v`` or anything malformed raises
:class:`~cachesync.errors.DecodeError`, which routes the message to the dead-letter topic.

Decoding is total: for ANY input it returns an action or raises ``DecodeError``,
never another exception, so one poison payload costs one dead letter and never
the stream. What a decoded action is guaranteed to satisfy, so that nothing
downstream can trip over it:

* ``position`` parses and its :attr:`~cachesync.changes.Position.version` is in
  ``1 .. 2**63 - 1`` (an Elasticsearch external version; a binlog file name
  without a numeric suffix, or an offset out of range, is refused here rather
  than raising in the middle of a batch);
* cache keys and document ids are ``str`` that :func:`cachesync.keys.wire_key`
  can turn into bytes (lone surrogates from ``surrogateescape`` are legitimate:
  they are the undecodable bytes of a ``VARBINARY`` value); ids are non-empty;
* ``index`` and ``source.table`` are non-empty strings that encode as UTF-8;
* ``document`` is a JSON object that encodes as strict UTF-8 JSON;
* ``source.pk`` is a non-empty object of hashable, SQL-bindable values: strict
  UTF-8 strings, integers in the 64-bit range, finite numbers, booleans, or the
  tagged types above with well-formed text;
* JSON itself is refused when it holds ``NaN``/``Infinity`` or nests too deep.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from .actions import Action, DeleteDoc, DeleteKeys, IndexDoc, RowRef
from .changes import Position
from .errors import DecodeError

__all__ = [
    "FORMAT_VERSION",
    "MAX_VERSION",
    "UNTAG",
    "check_key",
    "check_text",
    "decode_action",
    "decode_actions",
    "decode_position",
    "encode_action",
    "encode_actions",
    "load_json",
    "tag_value",
    "untag_value",
]

FORMAT_VERSION = 1


def tag_value(value: Any) -> Any:
    """The JSON form of a primary-key value (tagged where JSON has no type); ``TypeError`` otherwise."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot encode primary-key value {value!r} of type {type(value).__name__}")


#: The largest Elasticsearch external version (a signed 64-bit long); versions start at 1.
MAX_VERSION = 2**63 - 1
#: Primary-key integers must fit a database's widest integer column (BIGINT [UNSIGNED]).
_PK_INT_RANGE = (-(2**63), 2**64 - 1)


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not a JSON value cachesync accepts")


def load_json(text: str | bytes | bytearray, what: str) -> Any:
    """Parse JSON *text*; :class:`DecodeError` for anything that is not plain, finite JSON.

    ``NaN``/``Infinity`` (which Python's parser accepts) are refused: no sink can
    store them. Nesting deep enough to exhaust the parser's recursion is refused
    too, instead of escaping as ``RecursionError``.
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise DecodeError(f"{what} must be text, got {type(text).__name__}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except DecodeError as exc:
        raise DecodeError(f"{what} is not JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"{what} is not JSON: {type(exc).__name__}: {exc}") from None


def decode_position(text: Any) -> Position:
    """A :class:`Position` whose Elasticsearch version fits ``1 .. MAX_VERSION``.

    :meth:`Position.decode` alone accepts positions whose ``version`` raises
    later (no numeric file suffix: ``DecodeError``; a file index or offset out of
    range: ``OverflowError``) or is not positive (negative offsets): refused here,
    where one record can be dead-lettered alone.
    """
    if not isinstance(text, str):
        raise DecodeError(f"position must be a string, got {type(text).__name__}")
    position = Position.decode(text)
    try:
        version = position.version
    except (DecodeError, OverflowError, ValueError) as exc:
        raise DecodeError(f"position {text!r:.80} has no Elasticsearch version: {exc}") from None
    if not 1 <= version <= MAX_VERSION:
        raise DecodeError(f"position {text!r:.80} gives version {version}, outside 1..2**63-1")
    return position


def check_key(value: Any, what: str) -> str:
    """*value* if it is a key or id :func:`~cachesync.keys.wire_key` can turn into bytes.

    Lone surrogates U+DC80..U+DCFF are the ``surrogateescape`` form of non-UTF-8
    bytes and are accepted; any other lone surrogate cannot become bytes.
    """
    if not isinstance(value, str):
        raise DecodeError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise DecodeError(f"{what} {value!r:.80} cannot be encoded as bytes") from None
    return value


def check_text(value: Any, what: str, *, empty: bool = False) -> str:
    """*value* if it is a string that encodes as strict UTF-8 (and is non-empty unless *empty*)."""
    if not isinstance(value, str) or (not empty and not value):
        raise DecodeError(f"{what} must be a non-empty string, got {value!r:.80}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(f"{what} {value!r:.80} is not valid UTF-8 text") from None
    return value


def _untag_decimal(text: Any) -> Decimal:
    if not isinstance(text, str):
        raise DecodeError(f"$decimal must be a string, got {text!r:.80}")
    try:
        value = Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation is an ArithmeticError, not a ValueError
        raise DecodeError(f"$decimal {text!r:.80} is not a number") from None
    if not value.is_finite():
        raise DecodeError(f"$decimal {text!r:.80} is not finite")
    return value


def _untag_bytes(text: Any) -> bytes:
    if not isinstance(text, str):
        raise DecodeError(f"$bytes must be a base64 string, got {text!r:.80}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise DecodeError(f"$bytes {text!r:.80} is not base64") from None


def _untag_iso(parse: Callable[[str], Any], tag: str) -> Callable[[Any], Any]:
    def untag(text: Any) -> Any:
        if not isinstance(text, str):
            raise DecodeError(f"{tag} must be a string, got {text!r:.80}")
        try:
            return parse(text)
        except ValueError:
            raise DecodeError(f"{tag} {text!r:.80} is not ISO 8601") from None

    return untag


#: Tag -> decoder of the tagged forms :func:`tag_value` writes (each refuses malformed input).
UNTAG: dict[str, Callable[[Any], Any]] = {
    "$decimal": _untag_decimal,
    "$datetime": _untag_iso(dt.datetime.fromisoformat, "$datetime"),
    "$date": _untag_iso(dt.date.fromisoformat, "$date"),
    "$bytes": _untag_bytes,
}


def untag_value(value: Any) -> Any:
    """A primary-key value from its JSON form; only values a database can bind and a dict can hash."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise DecodeError(f"tagged value must have one tag, got {value!r:.80}")
        ((tag, text),) = value.items()
        if tag not in UNTAG:
            raise DecodeError(f"unknown tag {tag!r:.40} in primary-key value")
        return UNTAG[tag](text)
    if isinstance(value, (bool, float)):
        return value  # load_json has refused NaN and Infinity
    if isinstance(value, int):
        low, high = _PK_INT_RANGE
        if not low <= value <= high:
            raise DecodeError(f"primary-key integer {value} does not fit a database column")
        return value
    if isinstance(value, str):
        return check_text(value, "primary-key string", empty=True)
    raise DecodeError(f"primary-key value {value!r:.80} is not a scalar")


def _row_ref(source: Any) -> RowRef | None:
    if source is None:
        return None
    if not isinstance(source, dict):
        raise DecodeError(f"source must be an object, got {type(source).__name__}")
    schema = source.get("schema")
    if schema is not None:
        check_text(schema, "source.schema")
    table = check_text(source.get("table"), "source.table")
    pk = source.get("pk")
    if not isinstance(pk, dict) or not pk:
        raise DecodeError(f"source.pk must be a non-empty object, got {pk!r:.80}")
    return RowRef(
        schema, table, {check_text(k, "pk column"): untag_value(v) for k, v in pk.items()}
    )


def _document(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError("index_doc.document must be an object")
    try:  # what the Elasticsearch client will send: strict UTF-8 JSON
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise DecodeError(f"index_doc.document is not UTF-8 JSON: {exc}") from None
    return value


def _source(ref: RowRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {
        "schema": ref.schema,
        "table": ref.table,
        "pk": {k: tag_value(v) for k, v in ref.primary_key.items()},
    }


def encode_action(action: Action) -> dict[str, Any]:
    """The JSON-ready object for *action*."""
    position = action.position.encode() if action.position is not None else None
    if isinstance(action, DeleteKeys):
        return {
            "v": FORMAT_VERSION,
            "type": "delete_keys",
            "keys": list(action.keys),
            "position": position,
        }
    body: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "index": action.index,
        "id": action.doc_id,
        "position": position,
        "source": _source(action.source),
    }
    if isinstance(action, IndexDoc):
        body["type"] = "index_doc"
        body["document"] = dict(action.document)
    else:
        body["type"] = "delete_doc"
    return body


def decode_action(obj: Any) -> Action:
    """Inverse of :func:`encode_action`; :class:`DecodeError` on anything unexpected.

    Total (see the module docstring for what a returned action satisfies).
    """
    try:
        if not isinstance(obj, Mapping):
            raise DecodeError(f"an action must be an object, got {type(obj).__name__}")
        version = obj.get("v")
        if type(version) is not int or version != FORMAT_VERSION:  # True == 1 in Python
            raise DecodeError(f"unsupported action format version {version!r:.40}")
        kind = obj.get("type")
        raw_position = obj.get("position")
        position = decode_position(raw_position) if raw_position is not None else None
        if kind == "delete_keys":
            keys = obj.get("keys")
            if not isinstance(keys, list):
                raise DecodeError("delete_keys.keys must be a list of strings")
            return DeleteKeys(tuple(check_key(k, "cache key") for k in keys), position)
        if kind not in ("index_doc", "delete_doc"):
            raise DecodeError(f"unknown action type {kind!r:.40}")
        if position is None:
            raise DecodeError(f"{kind} needs a position (its Elasticsearch version)")
        ref = _row_ref(obj.get("source"))
        index = check_text(obj.get("index"), f"{kind}.index")
        doc_id = check_key(obj.get("id"), f"{kind}.id")
        if not doc_id:
            raise DecodeError(f"{kind}.id must not be empty")
        if kind == "index_doc":
            return IndexDoc(index, doc_id, _document(obj.get("document")), position, ref)
        return DeleteDoc(index, doc_id, position, ref)
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # not expected after the checks above; kept so decoding stays total
        raise DecodeError(f"malformed action: {type(exc).__name__}: {exc}") from None


def encode_actions(actions: Sequence[Action]) -> str:
    """A JSON array of actions (the outbox ``payload`` column)."""
    return json.dumps([encode_action(a) for a in actions], separators=(",", ":"))


def decode_actions(text: str | bytes) -> list[Action]:
    """Inverse of :func:`encode_actions`; total, like :func:`decode_action`."""
    items = load_json(text, "outbox payload")
    if not isinstance(items, list):
        raise DecodeError("outbox payload must be a JSON array of actions")
    return [decode_action(item) for item in items]
