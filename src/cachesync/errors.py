"""One error hierarchy for cachesync.

Errors are split by what the caller does next:

* :class:`DeclarationError` and :class:`ConfigurationError` - fix the code or the
  settings; raised at import or start-up, never at run time.
* :class:`TransientError` - retry later (connection refused, timeout, broker down).
* :class:`PermanentError` - retrying will not help; dead-letter the action.
* :class:`HandOffError` - a failed action could be neither applied nor stored
  durably; the caller must NOT advance its checkpoint (backpressure).

Third-party exceptions (redis-py, elasticsearch, kafka-python,
python-mysql-replication) are translated into these at the adapter boundary.
Messages never contain passwords: use :func:`redact_url` on any URL you print.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "CacheSyncError",
    "ConfigurationError",
    "DeclarationError",
    "DecodeError",
    "HandOffError",
    "LeadershipLost",
    "PermanentError",
    "SchemaError",
    "SourceConfigurationError",
    "SourceError",
    "TemplateError",
    "TransientError",
    "redact_url",
]

_PASSWORD_IN_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@"
)


def redact_url(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` in *text* with ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<scheme>\g<user>:***@", text)


class CacheSyncError(Exception):
    """Base class of every error raised by cachesync."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(redact_url(message))
        #: Structured context (model, setting, key, position...) for logs and dead letters.
        self.context = context


class DeclarationError(CacheSyncError, ValueError):
    """A ``Sync``/``Projection`` declaration is invalid. The message names the model."""


class TemplateError(CacheSyncError, ValueError):
    """A key template's text is malformed; the registry reports it as a :class:`DeclarationError`."""


class ConfigurationError(CacheSyncError, ValueError):
    """A setting is missing or malformed. The message names the setting and the expected form."""


class TransientError(CacheSyncError):
    """A service was unreachable or too slow; the same operation may succeed later."""


class LeadershipLost(TransientError):
    """The sidecar's leader lock is gone (its connection died or another sidecar holds it).

    The sidecar stops streaming without saving a checkpoint and waits to lead again.
    """


class PermanentError(CacheSyncError):
    """The operation can never succeed as is (mapping error, malformed document)."""


class DecodeError(PermanentError):
    """A message or stored action could not be decoded; it goes to the dead-letter topic."""


class HandOffError(CacheSyncError):
    """Failed actions could be neither applied nor stored durably.

    Whoever sees this must keep its position where it was and try again: this is
    how backpressure reaches the binlog reader instead of data being dropped.
    """


class SourceError(CacheSyncError):
    """The change source (binlog, outbox) met data or a refusal that retrying cannot fix.

    A partial row image, a statement the server rejects: reading the same thing
    again gives the same answer, so the reader stops and says what to change.
    Connection trouble is not a ``SourceError``: the source reconnects by itself
    (a :class:`TransientError`).
    """


class SourceConfigurationError(SourceError, ConfigurationError):
    """The database is not set up for cachesync (binlog format, grants, purged position)."""


class SchemaError(PermanentError):
    """The table no longer matches a declaration (a key column was dropped or renamed).

    The sidecar stops on it: mapping values to the wrong keys would be worse than
    stopping. Fix the declaration or the table, then restart.
    """
