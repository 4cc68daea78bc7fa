"""Writing documents with external versions through one bulk request per batch.

Each document carries the version of the change that produced it
(``version_type=external``). Elasticsearch rejects a write whose version is not
greater than the stored one with 409: that means a newer change already won, so
it counts as success. A delete of a missing document (404) is success too.
Every other per-item error is reported to the caller, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..actions import DeleteDoc, DocumentAction, IndexDoc
from ..changes import Position
from ..errors import CacheSyncError, PermanentError, TransientError
from .base import DocumentFailure

__all__ = ["SearchSink"]


def _operation(action: DocumentAction) -> dict[str, Any]:
    op: dict[str, Any] = {
        "_index": action.index,
        "_id": action.doc_id,
        "version": action.version,
        "version_type": "external",
    }
    if isinstance(action, IndexDoc):
        op["_op_type"] = "index"
        op["_source"] = dict(action.document)
    else:
        op["_op_type"] = "delete"
    return op


class SearchSink:
    """The :class:`~cachesync.sinks.base.DocumentSink` of Elasticsearch 8: one ``helpers.bulk`` per call.

    Per-item 409 (a newer version is stored) and 404 on delete are success;
    429 and 5xx items are transient, every other item error permanent.
    """

    def __init__(self, client: Any, *, chunk_size: int = 1000, refresh: bool = False) -> None:
        self.client = client
        self.chunk_size = chunk_size
        self.refresh = refresh

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]:
        if not actions:
            return []
        from elasticsearch import ApiError, TransportError, helpers

        # streaming_bulk answers item by item in request order, so every result is
        # matched to its action by position: an id Elasticsearch echoes back
        # differently (normalised text) can never be mistaken for another's.
        failures: list[DocumentFailure] = []
        try:
            results = helpers.streaming_bulk(
                self.client,
                (_operation(a) for a in actions),
                chunk_size=self.chunk_size,
                raise_on_error=False,
                raise_on_exception=False,
                max_retries=0,
                refresh=self.refresh,
            )
            for action, (ok, item) in zip(actions, results, strict=True):
                if not ok:
                    failure = _item_failure(action, item)
                    if failure is not None:
                        failures.append(failure)
        except (TransportError, ApiError, OSError) as exc:
            raise TransientError(
                f"Elasticsearch bulk of {len(actions)} document(s) failed: {type(exc).__name__}: {exc}",
                documents=len(actions),
            ) from exc
        return failures

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


def _item_failure(action: DocumentAction, item: Any) -> DocumentFailure | None:
    """The failure one bulk item reports, or ``None`` when it counts as success (409, 404 delete)."""
    ((op_type, result),) = item.items()
    status = int(result.get("status", 0) or 0)
    if status == 409 or (status == 404 and isinstance(action, DeleteDoc)):
        return None
    reason = result.get("error", result.get("exception", "no reason given"))
    context = {"index": action.index, "id": action.doc_id, "status": status}
    message = f"Elasticsearch {op_type} {action.index}/{action.doc_id}: {status} {reason}"
    error: CacheSyncError = (
        TransientError(message, **context)
        if status in (0, 408, 429) or status >= 500
        else PermanentError(message, **context)
    )
    return DocumentFailure(action, error)
