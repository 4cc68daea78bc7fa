"""Writing documents with external versions through one bulk request per batch.

Each document carries the version of the change that produced it
(``version_type=external``). Elasticsearch rejects a write whose version is not
greater than the stored one with 409: that means a newer change already won, so
it counts as success. A delete of a missing document (404) is success too.
Every other per-item error is reported to the caller, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..actions import DeleteDoc, DocumentAction, IndexDoc
from ..changes import Position
from ..errors import CacheSyncError, PermanentError, TransientError
from .base import DocumentFailure

__all__ = ["SearchSink"]


#: Only what the sink reads back: whether any item failed, and each item's status and
#: error. A full bulk response repeats index, id, version, seq_no, primary term and
#: shard counts for every document; parsing that was a sixth of the document lane's
#: time. ``filter_path`` is a common option of every Elasticsearch REST API; the items
#: keep their request order, one per operation, because every item has a status.
_FILTER_PATH = "errors,items.*.status,items.*.error"


def _stdlib_json(value: Any) -> bytes:
    """What the client's own serialiser sends (``json``, compact, UTF-8, surrogates passed)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_plain).encode(
        "utf-8", "surrogatepass"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Unable to serialize {value!r} (type: {type(value).__name__})")


def _fast_json() -> Callable[[Any], bytes]:
    try:
        from orjson import dumps
    except ImportError:  # the elasticsearch extra installs it; the stdlib still works
        return _stdlib_json
    return dumps


_fast_dumps = _fast_json()


def _json(value: Any) -> bytes:
    """*value* as compact UTF-8 JSON.

    orjson when installed (the ``elasticsearch`` extra pulls it in): 87 ns
    instead of 2.2 us for a three-field document here, and that time is GIL
    time the sidecar's binlog reader waits for. What orjson refuses (an
    integer beyond 64 bits, a lone surrogate, a mapping that is not a dict)
    goes through the standard library as the client's own serialiser would,
    so such a document is written, or refused by Elasticsearch, as before.
    One difference: orjson writes a non-finite float as ``null`` where
    ``json`` wrote ``NaN``, which Elasticsearch refuses (no column type of
    MySQL holds one; only a ``to_document`` callable can produce it).
    """
    try:
        return _fast_dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _stdlib_json(value)


class SearchSink:
    """The :class:`~cachesync.sinks.base.DocumentSink` of Elasticsearch 8: one ``_bulk``
    request per ``chunk_size`` documents (or ``max_chunk_bytes``, as ``helpers.bulk``).

    Per-item 409 (a newer version is stored) and 404 on delete are success;
    429 and 5xx items are transient, every other item error permanent. A
    request the server refuses as a whole (``ApiError``) fails each of its
    documents with that status; one that never got an answer raises
    :class:`~cachesync.errors.TransientError`.

    The request body is NDJSON built here with orjson, not by
    ``helpers.streaming_bulk``: that helper copies each action twice into new
    dicts and encodes every line with the standard ``json`` module, which made
    the document lane CPU-bound under the GIL it shares with the sidecar's
    binlog reader. The wire format is the same (action line with ``_index``,
    ``_id``, ``version``, ``version_type``; then the source).
    """

    def __init__(
        self,
        client: Any,
        *,
        chunk_size: int = 1000,
        max_chunk_bytes: int = 100 * 1024 * 1024,
        refresh: bool = False,
    ) -> None:
        self.client = client
        self.chunk_size = chunk_size
        self.max_chunk_bytes = max_chunk_bytes
        self.refresh = refresh
        self._index_json: dict[str, bytes] = {}

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        failures: list[DocumentFailure] = []
        for chunk, body in self._chunks(actions):
            for action, (status, reason) in zip(chunk, self._bulk(body, len(chunk)), strict=True):
                if not 200 <= status < 300:
                    failure = _item_failure(action, status, reason)
                    if failure is not None:
                        failures.append(failure)
        return failures

    def _lines(self, action: DocumentAction) -> bytes:
        """The NDJSON lines of one action: what ``helpers.expand_action`` would send."""
        index = self._index_json.get(action.index)
        if index is None:
            index = self._index_json[action.index] = _json(action.index)
        meta = b'{"_index":%b,"_id":%b,"version":%d,"version_type":"external"}}\n' % (
            index,
            _json(action.doc_id),
            action.position.version,
        )
        if isinstance(action, IndexDoc):
            return b'{"index":' + meta + _json(action.document) + b"\n"
        return b'{"delete":' + meta

    def _chunks(
        self, actions: Sequence[DocumentAction]
    ) -> Iterator[tuple[Sequence[DocumentAction], bytes]]:
        """The actions in request-sized chunks, each with its body."""
        start, lines, size = 0, list[bytes](), 0
        for i, action in enumerate(actions):
            data = self._lines(action)
            if lines and (len(lines) >= self.chunk_size or size + len(data) > self.max_chunk_bytes):
                yield actions[start:i], b"".join(lines)
                start, lines, size = i, [], 0
            lines.append(data)
            size += len(data)
        if lines:
            yield actions[start:], b"".join(lines)

    def _bulk(self, body: bytes, count: int) -> list[tuple[int, Any]]:
        """Send one ``_bulk`` request of *count* operations; (status, error) per item, in order."""
        from elasticsearch import ApiError, TransportError

        try:
            response = self.client.bulk(
                operations=body, filter_path=_FILTER_PATH, refresh=self.refresh
            )
        except ApiError as exc:  # refused as a whole: each item fails with its status
            return [(int(exc.status_code or 0), str(exc))] * count
        except (TransportError, OSError) as exc:
            raise TransientError(
                f"Elasticsearch bulk of {count} document(s) failed: {type(exc).__name__}: {exc}",
                documents=count,
            ) from exc
        items = response.get("items") or ()
        if len(items) != count:
            raise TransientError(
                f"Elasticsearch bulk of {count} document(s) answered {len(items)} item(s)",
                documents=count,
            )
        if not response.get("errors"):
            return [(200, None)] * count
        out = []
        for item in items:
            ((_op, result),) = item.items()
            out.append(
                (
                    int(result.get("status", 0) or 0),
                    result.get("error", result.get("exception", "no reason given")),
                )
            )
        return out

    def purge(self, index: str, position: Position) -> int:
        """Refresh *index*, scroll its ids, delete each at *position*'s external version.

        Not ``_delete_by_query``: that deletes whatever it finds, including a
        document a change after *position* already wrote (it knows no external
        version to compare), while a versioned delete loses to it (409) and,
        on Elasticsearch, leaves a tombstone that refuses an older late write
        for ``index.gc_deletes``.
        """
        from elasticsearch import ApiError, NotFoundError, TransportError, helpers

        version = position.version
        try:
            self.client.indices.refresh(index=index)
            hits = helpers.scan(
                self.client, index=index, query={"query": {"match_all": {}}, "_source": False}
            )
            ids = [hit["_id"] for hit in hits]
        except NotFoundError:
            return 0
        except (TransportError, ApiError, OSError) as exc:
            raise TransientError(
                f"Elasticsearch scan of {index} failed: {type(exc).__name__}: {exc}", index=index
            ) from exc
        deleted = 0
        for start in range(0, len(ids), self.chunk_size):
            chunk = ids[start : start + self.chunk_size]
            operations = [
                {
                    "_op_type": "delete",
                    "_index": index,
                    "_id": doc_id,
                    "version": version,
                    "version_type": "external",
                }
                for doc_id in chunk
            ]
            try:
                results = helpers.streaming_bulk(
                    self.client,
                    operations,
                    chunk_size=self.chunk_size,
                    raise_on_error=False,
                    raise_on_exception=False,
                    max_retries=0,
                    refresh=self.refresh,
                )
                for ok, item in results:
                    ((_op, result),) = item.items()
                    status = int(result.get("status", 0) or 0)
                    if ok:
                        deleted += 1
                    elif status not in (404, 409):  # gone already, or a newer write won
                        raise TransientError(
                            f"Elasticsearch purge of {index}/{result.get('_id')}: {status} "
                            f"{result.get('error', 'no reason given')}",
                            index=index,
                            status=status,
                        )
            except (TransportError, ApiError, OSError) as exc:
                raise TransientError(
                    f"Elasticsearch purge of {index} failed after {deleted} document(s): "
                    f"{type(exc).__name__}: {exc}",
                    index=index,
                ) from exc
        return deleted


def _item_failure(action: DocumentAction, status: int, reason: Any) -> DocumentFailure | None:
    """The failure of one bulk item, or ``None`` when it counts as success (409, 404 delete)."""
    if status == 409 or (status == 404 and isinstance(action, DeleteDoc)):
        return None
    op_type = "index" if isinstance(action, IndexDoc) else "delete"
    context = {"index": action.index, "id": action.doc_id, "status": status}
    message = f"Elasticsearch {op_type} {action.index}/{action.doc_id}: {status} {reason}"
    error: CacheSyncError = (
        TransientError(message, **context)
        if status in (0, 408, 429) or status >= 500
        else PermanentError(message, **context)
    )
    return DocumentFailure(action, error)
