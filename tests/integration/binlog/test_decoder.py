"""cachesync's row decoder gives what python-mysql-replication gives, in stored form.

BinlogSource decodes rows of tables with common column types itself (several
times faster) and leaves other tables to the library. Both paths are checked
here against the library's stock BinLogStreamReader on the same binlog, for
every supported type, NULLs, extremes and random values: each library value,
brought to the stored form of its column's type (:func:`cachesync.values.stored`,
types read from ``information_schema``), equals what BinlogSource yields. Where
the library loses information the fast decoder keeps it, and says so here: a
zero date is its literal (the library gives NULL), an empty SET is ``''``
(the library gives NULL).
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import random
import uuid
from typing import Any

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cachesync import Registry, Sync, resolve, values
from cachesync.binlog import BinlogSource, ResumePoint
from cachesync.binlog.decoder import RowDecoder
from tests.integration.binlog.harness import BinlogEnv, next_server_id

pytestmark = [
    pytest.mark.services,
    # the stock reader used as the reference passes PyMySQL a deprecated keyword
    pytest.mark.filterwarnings("ignore:'db' is deprecated:DeprecationWarning"),
]

FAST_TYPES = """CREATE TABLE fast (
    id INT NOT NULL PRIMARY KEY,
    t TINYINT NULL, tu TINYINT UNSIGNED NULL, s SMALLINT NULL, su SMALLINT UNSIGNED NULL,
    m MEDIUMINT NULL, mu MEDIUMINT UNSIGNED NULL, i INT NULL, iu INT UNSIGNED NULL,
    b BIGINT NULL, bu BIGINT UNSIGNED NULL, f FLOAT NULL, d DOUBLE NULL,
    dec1 DECIMAL(10,2) NULL, dec2 DECIMAL(30,12) NULL, dec3 DECIMAL(5,0) NULL,
    dec4 DECIMAL(18,9) NULL, y YEAR NULL, dte DATE NULL, dtm DATETIME NULL,
    dtm3 DATETIME(3) NULL, dtm6 DATETIME(6) NULL, ts TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL,
    c CHAR(10) NULL, vc VARCHAR(20) NULL, vcl VARCHAR(400) NULL, vb VARBINARY(20) NULL,
    bn BINARY(4) NULL, txt TEXT NULL, mtxt MEDIUMTEXT NULL, bl BLOB NULL, tb TINYBLOB NULL,
    lat VARCHAR(20) CHARACTER SET latin1 NULL, u8 VARCHAR(20) CHARACTER SET utf8mb4 NULL,
    e ENUM('a','bb','ccc') NULL, j JSON NULL, bt BIT(10) NULL, st SET('x','y','z') NULL,
    tm TIME NULL, tm3 TIME(3) NULL, tm6 TIME(6) NULL, ip6 INET6 NULL, ip4 INET4 NULL, u UUID NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

# POINT is a type the fast decoder leaves to the library: this table takes the library path.
SLOW_TYPES = """CREATE TABLE slow (
    id INT NOT NULL PRIMARY KEY, j JSON NULL, bt BIT(10) NULL, st SET('x','y','z') NULL,
    tm TIME NULL, tm3 TIME(3) NULL, name VARCHAR(20) NULL, f FLOAT NULL, bn BINARY(4) NULL,
    ip6 INET6 NULL, g POINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

FAST_COLUMNS = [
    "id", "t", "tu", "s", "su", "m", "mu", "i", "iu", "b", "bu", "f", "d", "dec1", "dec2",
    "dec3", "dec4", "y", "dte", "dtm", "dtm3", "dtm6", "ts", "ts6", "c", "vc", "vcl", "vb",
    "bn", "txt", "mtxt", "bl", "tb", "lat", "u8", "e", "j", "bt", "st", "tm", "tm3", "tm6",
    "ip6", "ip4", "u",
]  # fmt: skip


def _random_row(rng: random.Random, row_id: int) -> list[Any]:
    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    def dec(digits: int, scale: int) -> decimal.Decimal:
        whole = rng.randrange(10 ** (digits - scale))
        frac = rng.randrange(10**scale) if scale else 0
        sign = rng.choice([-1, 1])
        return decimal.Decimal(sign * (whole * 10**scale + frac)).scaleb(-scale)

    text = "".join(rng.choice("abcxyz éü€漢字") for _ in range(rng.randrange(0, 18)))
    moment = dt.datetime(2001, 1, 1) + dt.timedelta(seconds=rng.randrange(700_000_000))
    return [
        row_id,
        maybe(rng.randint(-128, 127)), maybe(rng.randint(0, 255)),
        maybe(rng.randint(-32768, 32767)), maybe(rng.randint(0, 65535)),
        maybe(rng.randint(-8388608, 8388607)), maybe(rng.randint(0, 16777215)),
        maybe(rng.randint(-(2**31), 2**31 - 1)), maybe(rng.randint(0, 2**32 - 1)),
        maybe(rng.randint(-(2**63), 2**63 - 1)), maybe(rng.randint(0, 2**64 - 1)),
        maybe(rng.uniform(-1e6, 1e6)), maybe(rng.uniform(-1e300, 1e300)),
        maybe(dec(10, 2)), maybe(dec(30, 12)), maybe(dec(5, 0)), maybe(dec(18, 9)),
        maybe(rng.randint(1901, 2155)),
        maybe(moment.date()), maybe(moment), maybe(moment.replace(microsecond=rng.randrange(1000) * 1000)),
        maybe(moment.replace(microsecond=rng.randrange(1_000_000))),
        maybe(moment.replace(year=2020)), maybe(moment.replace(year=2021, microsecond=rng.randrange(1_000_000))),
        maybe(text[:10]), maybe(text), maybe(text * 20), maybe(rng.randbytes(rng.randrange(20))),
        maybe(rng.randbytes(4)), maybe(text * 50), maybe(text * 300), maybe(rng.randbytes(rng.randrange(3000))),
        maybe(rng.randbytes(rng.randrange(200))), maybe("Ärger ß€"[: rng.randrange(9)]),
        maybe(text), maybe(rng.choice(["a", "bb", "ccc"])),
        maybe(json.dumps({"k": [1, 2.5, text], "a": None})), maybe(rng.randrange(1024)),
        maybe(",".join(rng.sample("xyz", rng.randrange(1, 4)))),  # empty: row 1003
        maybe(_clock(rng, 0)), maybe(_clock(rng, 3, signed=False)), maybe(_clock(rng, 6, signed=False)),
        maybe(str(ipaddress.IPv6Address(rng.randbytes(16)))),
        maybe(str(ipaddress.IPv4Address(rng.randbytes(4)))), maybe(str(uuid.UUID(bytes=rng.randbytes(16), version=rng.choice([1, 4])))),
    ]  # fmt: skip


def _clock(rng: random.Random, fsp: int, signed: bool = True) -> str:
    """A TIME literal in -838:59:59..838:59:59 with *fsp* fractional digits.

    The library misreads a negative TIME with a fraction (``-00:00:00.5``): those
    are checked on their own (row 1003) against what SELECT shows.
    """
    sign = rng.choice(["-", ""]) if signed else ""
    text = f"{sign}{rng.randrange(839):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
    return f"{text}.{rng.randrange(10**fsp):0{fsp}d}" if fsp else text


def _library_rows(env: BinlogEnv, start: ResumePoint) -> list[tuple[str, str, Any, Any]]:
    """What the stock python-mysql-replication reader decodes."""
    reader = BinLogStreamReader(
        connection_settings={k: v for k, v in env.root.items() if k != "database"},
        server_id=next_server_id(),
        resume_stream=True,
        log_file=start.file,
        log_pos=start.pos,
        blocking=False,
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        only_schemas=[env.schema],
        only_tables=["fast", "slow"],
        enable_logging=False,
    )
    rows: list[tuple[str, str, Any, Any]] = []
    try:
        for event in reader:
            for row in event.rows:
                if isinstance(event, WriteRowsEvent):
                    rows.append((event.table, "insert", None, row["values"]))
                elif isinstance(event, UpdateRowsEvent):
                    rows.append((event.table, "update", row["before_values"], row["after_values"]))
                else:
                    rows.append((event.table, "delete", row["values"], None))
    finally:
        reader.close()
    return rows


def _column_types(cur: Any, schema: str) -> dict[str, dict[str, values.ColumnType]]:
    """``{table: {column: ColumnType}}`` from information_schema (JSON by its json_valid check)."""
    cur.execute(
        "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s",
        (schema,),
    )
    types: dict[str, dict[str, values.ColumnType]] = {}
    for table, column, sql in cur.fetchall():
        types.setdefault(table, {})[column] = values.column_type(sql)
    cur.execute(
        "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = %s",
        (schema,),
    )
    for table, clause in cur.fetchall():
        column = clause.removeprefix("json_valid(`").removesuffix("`)")
        if column in types.get(table, {}):
            types[table][column] = values.ColumnType("json")
    return types


def _stored(
    types: dict[str, values.ColumnType], row: tuple[str, str, Any, Any]
) -> tuple[str, str, Any, Any]:
    def image(values_: Any) -> Any:
        if values_ is None:
            return None
        return {c: values.stored(types[c], v) for c, v in values_.items()}

    table, op, before, after = row
    return table, op, image(before), image(after)


def _registry(env: BinlogEnv) -> Registry:
    registry = Registry()
    for table, columns in (("fast", FAST_COLUMNS), ("slow", ["id", "name"])):
        spec = resolve(
            f"tests.{table}",
            Sync(keys=[table + ":{id}"]),
            table=table,
            schema=env.schema,
            columns={c: c for c in columns},
            primary_key=["id"],
        )
        registry.add(spec)
    return registry


def test_fast_decoder_and_library_fallback_agree_with_the_library(binlog_env: BinlogEnv) -> None:
    env = binlog_env
    env.sql(FAST_TYPES)
    env.sql(SLOW_TYPES)
    file, pos = env.master_status()
    start = ResumePoint(file, pos)
    rng = random.Random(20240601)
    marks = ", ".join(["%s"] * len(FAST_COLUMNS))
    conn = env.connect()
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        for row_id in range(1, 301):
            cur.execute(f"INSERT INTO fast VALUES ({marks})", _random_row(rng, row_id))
        # extremes and zero values
        cur.execute(
            "INSERT INTO fast (id, t, tu, b, bu, dec1, dec2, dec3, y, vc, e) VALUES "
            "(1000, -128, 255, -9223372036854775808, 18446744073709551615, -99999999.99, "
            "0.000000000001, -99999, 2155, '', 'ccc'), (1001, 0, 0, 0, 0, 0, 0, 0, 1901, NULL, 'a')"
        )
        cur.execute("SET SESSION sql_mode = ''")  # zero dates, which the library decodes to None
        cur.execute(
            "INSERT INTO fast (id, dte, dtm, dtm6, ts, ts6) VALUES "
            "(1002, '0000-00-00', '0000-00-00 00:00:00', '2000-00-00 00:00:00.5', "
            "'0000-00-00 00:00:00', '1970-01-01 00:00:01.000001')"
        )
        cur.execute("UPDATE fast SET vc = CONCAT('x', id), dec1 = -dec1 WHERE id % 3 = 0")
        cur.execute("DELETE FROM fast WHERE id % 7 = 0")
        cur.execute(
            "INSERT INTO fast (id, st, tm3, tm6) VALUES (1003, '', '-00:00:00.5', '-558:21:19.812')"
        )
        cur.execute(
            "INSERT INTO slow VALUES (1, '{\"a\": [1, 2, {\"b\": null}]}', b'1010101010', 'x,z', "
            "'-12:34:56', '838:59:59.123', 'one', 1.1, 'ab', '::ffff:1.2.3.4', POINT(1, 2)), "
            "(2, NULL, NULL, 'z,x', NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        )
        cur.execute("UPDATE slow SET name = 'two', j = JSON_ARRAY(1, 'x') WHERE id = 2")
        types = _column_types(cur, env.schema)
    conn.close()

    expected = [_stored(types[row[0]], row) for row in _library_rows(env, start)]
    # Where the library loses information, what the row holds (as SELECT shows it):
    # zero dates and an empty SET are no NULLs, and a negative TIME keeps its fraction.
    lossy = {
        1002: {"dte": "0000-00-00", "dtm": "0000-00-00T00:00:00", "dtm6": "2000-00-00T00:00:00.500000"},
        1003: {"st": "", "tm3": -dt.timedelta(milliseconds=500),
               "tm6": -dt.timedelta(hours=558, minutes=21, seconds=19, milliseconds=812)},
    }  # fmt: skip
    for _table, _op, before, after in expected:
        for image in (before, after):
            if image is not None and image["id"] in lossy and _table == "fast":
                assert image != {**image, **lossy[image["id"]]}  # the library does differ
                image.update(lossy[image["id"]])
    assert len(expected) > 400
    registry = _registry(env)
    with BinlogSource(env.root, registry, server_id=next_server_id(), start=start) as source:
        # The types above all take the fast path, the slow table the library's.
        got = []
        while len(got) < len(expected):
            batch = source.poll(500, 2.0)
            assert batch, f"stream stalled after {len(got)} of {len(expected)} rows"
            got += batch
        decoders = {t.name: t.decoder.supported for t in source._maps.current.values()}
    assert decoders == {"fast": True, "slow": False}
    actual = [(c.table, c.op.value, c.before, c.after) for c in got]
    for index, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
        if mine != theirs:
            diff = {
                f"{which}.{column}": (image_a[column], image_b.get(column))
                for which, image_a, image_b in (
                    ("before", mine[2], theirs[2]),
                    ("after", mine[3], theirs[3]),
                )
                if image_a is not None and image_b is not None
                for column in image_a
                if image_a[column] != image_b.get(column)
            }
            raise AssertionError(f"row {index} ({mine[:2]}) differs (cachesync, library): {diff}")


def test_decoder_rejects_unknown_types() -> None:
    class Column:
        def __init__(self, kind: int) -> None:
            self.type, self.unsigned, self.name = kind, False, "c"

    assert not RowDecoder([Column(245)]).supported  # MySQL's binary JSON
    assert not RowDecoder([Column(255)]).supported  # GEOMETRY
