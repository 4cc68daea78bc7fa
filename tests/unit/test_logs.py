"""Command logging: JSON or text lines, libraries at WARNING, no password in any line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cachesync.logs import LIBRARY_LOGGERS, JsonFormatter, RedactingFormatter, setup_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ConnectionError("redis://default:s3cret@cache:6379/0 refused")
        except ConnectionError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord(
        "cachesync.sidecar", logging.WARNING, __file__, 1, message, args, exc_info
    )


def test_json_lines_carry_level_logger_message_and_redacted_traceback() -> None:
    record = _record("connecting to %s", "mysql://app:hunter2@db:3306/shop", exc=True)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "WARNING" and line["logger"] == "cachesync.sidecar"
    assert line["message"] == "connecting to mysql://app:***@db:3306/shop"
    assert "ConnectionError" in line["exc"]
    assert "hunter2" not in json.dumps(line) and "s3cret" not in json.dumps(line)
    assert line["time"].endswith("+00:00")


def test_text_lines_are_redacted() -> None:
    text = RedactingFormatter("%(levelname)s %(message)s").format(
        _record("es at %s", "https://elastic:pw-123@search:9200")
    )
    assert text == "WARNING es at https://elastic:***@search:9200"


def test_libraries_stay_at_warning_unless_debug_is_asked_for() -> None:
    setup_logging("INFO", "json")
    assert logging.getLogger().level == logging.INFO
    for name in LIBRARY_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING, name
    setup_logging("ERROR", "text")
    assert logging.getLogger("kafka").level == logging.ERROR
    setup_logging("DEBUG", "text")
    assert logging.getLogger("kafka").level == logging.DEBUG


def test_setup_replaces_its_own_handler_and_keeps_an_applications() -> None:
    root = logging.getLogger()
    root.handlers[:] = []
    setup_logging("INFO", "text")
    setup_logging("INFO", "json")
    ours = [h for h in root.handlers if getattr(h, "_cachesync", False)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    app = logging.StreamHandler()
    root.handlers[:] = [app]  # e.g. Django's LOGGING
    setup_logging("INFO", "json")
    assert root.handlers == [app]
