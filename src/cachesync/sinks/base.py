"""What a sink promises: the two protocols the :class:`~cachesync.apply.Applier` speaks.

A sink does I/O and nothing else: no retry, no hand-off, no planning. It turns
its client library's errors into :mod:`cachesync.errors` so that the layers
above decide what happens next by error type alone:

* :class:`~cachesync.errors.TransientError` - the service was unreachable or too
  slow; the same call may succeed later (the applier retries briefly, then hands off);
* :class:`~cachesync.errors.PermanentError` - this action can never succeed as it
  is (a rejected document); it is dead-lettered, never retried.

:mod:`cachesync.testing` has in-memory twins of both, held to the same contract
by ``tests/integration/test_sink_contract.py`` against the real services.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..actions import DocumentAction
from ..changes import Position
from ..errors import CacheSyncError

__all__ = ["DocumentFailure", "DocumentSink", "KeySink"]


@dataclass(frozen=True)
class DocumentFailure:
    """One document action a :class:`DocumentSink` could not apply, and why."""

    action: DocumentAction
    error: CacheSyncError


@runtime_checkable
class KeySink(Protocol):
    """Deletes cache keys.

    ``delete(keys)``: when it returns, every key in *keys* is gone (deleted now or
    already absent); the return value is how many existed, for metrics only.
    Deleting is idempotent, so calling it again after a failure is always safe.
    It blocks for at most the client's socket timeout per round trip (a frozen
    server costs that timeout, never longer). It raises
    :class:`~cachesync.errors.TransientError` when any key may have survived;
    it never raises anything else for a reachable-or-not server.
    Success does NOT promise that no reader re-filled a key a moment later:
    that race is what :mod:`cachesync.leases` closes.
    """

    def delete(self, keys: Sequence[str]) -> int: ...

    def purge(self, pattern: str) -> int:
        """Delete every key matching the Redis glob *pattern*; return how many were deleted.

        For statements that remove rows without naming them (``TRUNCATE``,
        ``DROP TABLE``): the keys to delete cannot be rendered, only matched.
        It walks the whole keyspace (``SCAN``, every primary of a cluster), so
        it costs O(keyspace), not O(matches); keys are deleted in multi-key
        batches as they are found. Idempotent. Raises
        :class:`~cachesync.errors.TransientError` when the walk could not finish
        (keys found so far are deleted; calling it again is safe). A key
        written while it runs may or may not survive.
        """
        ...

    def ping(self) -> bool:
        """True when the server answers; never raises."""
        ...


@runtime_checkable
class DocumentSink(Protocol):
    """Writes and deletes documents with external versions.

    ``apply(actions)`` applies at most one action per ``(index, id)`` (the caller
    keeps only the latest: :func:`cachesync.actions.latest_per_document`) and
    returns the actions that failed, each with a transient or permanent error.
    An action absent from the result is applied, or lost to a newer version
    already stored (a version conflict is success: a newer change won), or a
    delete of a document that was not there. It raises
    :class:`~cachesync.errors.TransientError` only when the whole request failed
    (connection refused, timeout); it blocks for at most the client's request
    timeout. Success does NOT promise visibility to searches before the index's
    next refresh.
    """

    def apply(self, actions: Sequence[DocumentAction]) -> list[DocumentFailure]: ...

    def purge(self, index: str, position: Position) -> int:
        """Delete every document of *index* older than *position*; return how many went.

        Each document is deleted with *position*'s external version, so one a
        later change already wrote (a higher version) is kept: a purge never
        removes what happened after the statement that caused it, however late
        it runs. Documents written before the call are seen (the index is
        refreshed first). A missing index is empty (0). Costs one scan of the
        index plus bulk deletes. Raises :class:`~cachesync.errors.TransientError`
        when it could not finish (calling it again is safe).
        """
        ...
