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
