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

__all__ = ["FORMAT_VERSION", "decode_action", "decode_actions", "encode_action", "encode_actions"]

FORMAT_VERSION = 1


def _tag(value: Any) -> Any:
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


_UNTAG: dict[str, Callable[[str], Any]] = {
    "$decimal": Decimal,
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$bytes": base64.b64decode,
}


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        ((tag, text),) = value.items()
        return _UNTAG[tag](text)
    return value


def _source(ref: RowRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {
        "schema": ref.schema,
        "table": ref.table,
        "pk": {k: _tag(v) for k, v in ref.primary_key.items()},
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


def decode_action(obj: Mapping[str, Any]) -> Action:
    """Inverse of :func:`encode_action`; :class:`DecodeError` on anything unexpected."""
    try:
        if obj.get("v") != FORMAT_VERSION:
            raise DecodeError(f"unsupported action format version {obj.get('v')!r}")
        kind = obj["type"]
        position = Position.decode(obj["position"]) if obj.get("position") is not None else None
        if kind == "delete_keys":
            keys = obj["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise DecodeError("delete_keys.keys must be a list of strings")
            return DeleteKeys(tuple(keys), position)
        if position is None:
            raise DecodeError(f"{kind} needs a position (its Elasticsearch version)")
        source = obj.get("source")
        ref = (
            RowRef(
                source["schema"], source["table"], {k: _untag(v) for k, v in source["pk"].items()}
            )
            if source is not None
            else None
        )
        index, doc_id = str(obj["index"]), str(obj["id"])
        if kind == "index_doc":
            document = obj["document"]
            if not isinstance(document, dict):
                raise DecodeError("index_doc.document must be an object")
            return IndexDoc(index, doc_id, document, position, ref)
        if kind == "delete_doc":
            return DeleteDoc(index, doc_id, position, ref)
        raise DecodeError(f"unknown action type {kind!r}")
    except DecodeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"malformed action {obj!r:.200}: {type(exc).__name__}: {exc}") from None


def encode_actions(actions: Sequence[Action]) -> str:
    """A JSON array of actions (the outbox ``payload`` column)."""
    return json.dumps([encode_action(a) for a in actions], separators=(",", ":"))


def decode_actions(text: str | bytes) -> list[Action]:
    """Inverse of :func:`encode_actions`."""
    try:
        items = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"outbox payload is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise DecodeError("outbox payload must be a JSON array of actions")
    return [decode_action(item) for item in items]
