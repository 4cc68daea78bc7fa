"""One huge UPDATE in a single transaction, with ``cachesync listen`` SIGKILLed in its middle.

The sidecar must stream a transaction of any size (it never holds a whole
transaction: the reader hands on at most ``max_rows`` changes at a time and the
lanes' queues are bounded; bench/bigtxn.py measures the resident set size for
100k and 1M rows). Killed while the checkpoint points inside the transaction,
the restarted sidecar resumes exactly there: it reads precisely the rows after
the checkpointed row (none before it again) and every key and document ends
consistent with the table.

Size: 50,000 rows by default, 50 batches of the default policy's 1000 rows, so
the kill lands many batches into the transaction and many remain after it;
``CACHESYNC_BIG_TXN_ROWS=200000`` runs the size this test first had (about four
times slower).
"""

from __future__ import annotations

import os
import re

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import XidEvent
from pymysqlreplication.row_event import UpdateRowsEvent

from cachesync.binlog.checkpoint import ResumePoint, checkpoint_store
from cachesync.changes import GtidPosition
from tests.integration.binlog.harness import (
    BinlogEnv,
    SidecarProcess,
    binlog_env,
    next_server_id,
    wait_for,
)

__all__ = ["binlog_env"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.services, pytest.mark.chaos]

ROWS = int(os.environ.get("CACHESYNC_BIG_TXN_ROWS", "50000"))


def _rows_after(env: BinlogEnv, point: ResumePoint, end: tuple[str, int]) -> int:
    """How many row changes of ``users`` lie after *point* (its handled row) and before *end*."""
    assert point.handled is not None
    reader = BinLogStreamReader(
        connection_settings={k: v for k, v in env.root.items() if k != "database"},
        server_id=next_server_id(),
        resume_stream=True,
        blocking=False,
        log_file=point.file,
        log_pos=point.pos,
        only_events=[UpdateRowsEvent, XidEvent],
        only_tables=["users"],
        only_schemas=[env.schema],
        is_mariadb=False,
        enable_logging=False,
    )
    handled = point.handled
    after = event_no = 0
    try:
        for event in reader:
            if isinstance(event, UpdateRowsEvent):
                # A GTID checkpoint names the row by rows event number inside the
                # transaction (which starts at point.pos); a file one by the event's end.
                here = event_no if isinstance(handled, GtidPosition) else event.packet.log_pos
                last = handled.event if isinstance(handled, GtidPosition) else handled.pos
                for index, _row in enumerate(event.rows):
                    if (here, index) > (last, handled.row):
                        after += 1
                event_no += 1
            if (reader.log_file, reader.log_pos) >= end:
                break
    finally:
        reader.close()
    return after


def test_a_huge_transaction_streams_and_resumes_exactly_after_sigkill(
    binlog_env: BinlogEnv,
) -> None:
    env = binlog_env
    for first in range(1, ROWS + 1, 5000):
        values = ", ".join(
            f"({i}, 'u{i}', 'n{i}', NULL, 0)" for i in range(first, min(first + 5000, ROWS + 1))
        )
        env.sql(f"INSERT INTO users VALUES {values}")
    checkpoint_url = env.root_url.replace(f"/{env.schema}", "/cachesync")
    store = checkpoint_store(checkpoint_url, None)
    sidecar = SidecarProcess(
        # The default batch policy, as users run it (the harness defaults to low_latency).
        env.settings_env(CACHESYNC_CHECKPOINT_URL=checkpoint_url, CACHESYNC_BATCH="default"),
        env.tmp / "sidecar.log",
    )
    try:
        sidecar.start()
        sidecar.wait_for_log("streaming binlog from", timeout=60)
        env.sync_point(timeout=120)
        keys = [k for i in range(1, ROWS + 1) for k in env.keys(i, f"u{i}")]
        env.set_keys(keys)
        start = env.master_status()
        env.sql("UPDATE users SET user_name = CONCAT('r', id) WHERE id > 0")  # one transaction
        end = env.master_status()

        def within(point: ResumePoint) -> bool:
            # The sidecar's own checkpoint writes are binlogged too, so the big
            # transaction starts at or after `start`, not necessarily at it.
            return point.handled is not None and start <= (point.file, point.pos) < end

        def inside() -> bool:
            stored = store.load(env.schema)
            return stored is not None and within(
                ResumePoint.decode(stored.position, stored.commit_time)
            )

        wait_for(inside, 120, "a checkpoint inside the big transaction")
        sidecar.kill()
        stored = store.load(env.schema)
        assert stored is not None
        point = ResumePoint.decode(stored.position, stored.commit_time)
        assert within(point), point
        owed = _rows_after(env, point, end)
        assert 0 < owed < ROWS, f"the kill did not land inside the transaction ({owed} rows owed)"

        sidecar.start()
        sidecar.wait_for_log("streaming binlog from", timeout=60, occurrences=2)
        wait_for(lambda: not env.existing(keys[-2:]), 300, "the last row's keys to be deleted")
        env.sync_point(timeout=300)
        left = env.existing(keys)
        assert not left, f"{len(left)} of {len(keys)} keys survived, e.g. {left[:5]}"
        env.assert_index_matches_table()
        assert sidecar.terminate() == 0
        second = sidecar.output().split("----- start 2 -----", 1)[1]
        assert "Traceback" not in sidecar.output()
        match = re.search(r"stopped after \d+ batch\(es\), (\d+) change\(s\)", second)
        assert match is not None, second[-2000:]
        # Exactly the rows after the checkpoint, plus the one sync-point update: nothing
        # before the checkpointed row was read again, nothing after it was skipped.
        assert int(match.group(1)) == owed + 1, (int(match.group(1)), owed)
        assert f"streaming binlog from {point}" in second, second[:2000]
    finally:
        sidecar.kill()
        store.close()
