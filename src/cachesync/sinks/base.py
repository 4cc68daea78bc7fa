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
