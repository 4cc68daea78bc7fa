"""Logging of the ``cachesync`` commands: text or JSON lines, quiet libraries, no secrets.

* ``log_format`` (``--log-format`` / ``CACHESYNC_LOG_FORMAT``): ``text`` (one
  readable line) or ``json`` (one object per line: ``time``, ``level``,
  ``logger``, ``message``, ``exc`` when there is a traceback), for log shippers.
* Libraries (kafka-python, elastic_transport, urllib3, python-mysql-replication)
  log at WARNING unless ``--log-level DEBUG`` asks for everything: kafka-python
  alone says about a hundred INFO lines before ``cachesync status`` answers.
* Every line goes through :func:`~cachesync.errors.redact_url` as it is
  formatted: cachesync's own messages are redacted where they are written, and
  this is the net for a library that prints a credentialed URL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from .errors import redact_url

__all__ = ["LIBRARY_LOGGERS", "JsonFormatter", "RedactingFormatter", "setup_logging"]

#: Third-party loggers kept at WARNING unless the level asked for is DEBUG.
LIBRARY_LOGGERS = ("kafka", "elastic_transport", "elasticsearch", "urllib3", "pymysqlreplication")

_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RedactingFormatter(logging.Formatter):
    """The text format, with passwords in URLs replaced by ``***``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the message (and traceback) redacted."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_url(record.getMessage()),
        }
        if record.exc_info:
            line["exc"] = redact_url(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Configure the root logger for a command (idempotent: replaces our own handler).

    An application that configured logging already (Django's ``LOGGING`` under
    ``manage.py``) keeps its handlers; only the levels are set then.
    """
    numeric = getattr(logging, str(level).upper(), logging.INFO)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_cachesync", False)]
    if ours or not root.handlers:
        for handler in ours:
            root.removeHandler(handler)
        handler = logging.StreamHandler()
        handler._cachesync = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(_TEXT))
        root.addHandler(handler)
    root.setLevel(numeric)
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
