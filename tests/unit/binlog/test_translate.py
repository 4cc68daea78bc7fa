"""server.translate: the one place PyMySQL errors become cachesync errors (pure, no service)."""

from __future__ import annotations

import pymysql
import pytest

from cachesync.binlog import server
from cachesync.errors import (
    ConfigurationError,
    SourceConfigurationError,
    SourceError,
    TransientError,
)

#: The lists the four call sites had before there was one.
FORMER_LISTS = {
    "server.translate_errors": {1044, 1045, 1142, 1143, 1227, 1370},
    "source._raise": {1045, 1227, 1236, 4052},
    "checkpoint._cursor": {1142, 1143, 1044, 1045},
    "checkpoint._ensure_table": {1142, 1044},
}


def test_the_one_list_is_exactly_the_union_of_the_former_ones() -> None:
    assert set(server.NOT_TRANSIENT) == set().union(*FORMER_LISTS.values())


@pytest.mark.parametrize("code", sorted(server.NOT_TRANSIENT))
def test_codes_a_retry_cannot_fix_are_configuration_errors_with_a_hint(code: int) -> None:
    error = server.translate(pymysql.OperationalError(code, "refused"), "doing it")
    assert type(error) is SourceConfigurationError
    assert isinstance(error, ConfigurationError)
    assert str(error) == f"doing it: refused (error {code}): {server.NOT_TRANSIENT[code]}"
    assert error.context["code"] == code


@pytest.mark.parametrize(
    "exc",
    [
        pymysql.OperationalError(2003, "Can't connect to MySQL server"),
        pymysql.OperationalError(2013, "Lost connection to MySQL server during query"),
        pymysql.OperationalError(1205, "Lock wait timeout exceeded"),
        pymysql.InterfaceError(0, ""),
        pymysql.err.InternalError("Packet sequence number wrong - got 3 expected 1"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
    ],
)
def test_connection_trouble_is_transient(exc: BaseException) -> None:
    error = server.translate(exc, "reading")
    assert type(error) is TransientError
    assert str(error).startswith("reading: ")
    if isinstance(exc, OSError):
        assert error.context["code"] is None  # an errno is not a server error code


@pytest.mark.parametrize(
    "exc",
    [
        pymysql.ProgrammingError(1146, "Table 'x.users' doesn't exist"),
        pymysql.ProgrammingError(1064, "You have an error in your SQL syntax"),
        pymysql.DataError(1406, "Data too long"),
        pymysql.IntegrityError(1062, "Duplicate entry"),
    ],
)
def test_a_refused_statement_is_a_source_error(exc: BaseException) -> None:
    error = server.translate(exc, "reading users")
    assert type(error) is SourceError
    assert str(error) == f"reading users: {exc.args[-1]} (error {exc.args[0]})"


def test_translate_errors_keeps_the_cause_of_transient_errors_only() -> None:
    with pytest.raises(TransientError) as transient, server.translate_errors("SHOW X"):
        raise pymysql.OperationalError(2013, "Lost connection")
    assert isinstance(transient.value.__cause__, pymysql.OperationalError)
    with pytest.raises(SourceConfigurationError) as fatal, server.translate_errors("SHOW X"):
        raise pymysql.OperationalError(1227, "Access denied; you need REPLICATION CLIENT")
    assert fatal.value.__cause__ is None and fatal.value.__suppress_context__
