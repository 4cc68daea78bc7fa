"""A poison outbox row is buried alone, with its reason; the relay and the rows around it go on."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesync import DecodeError, DeleteKeys, ImmediateRetryPolicy, RetryPolicy
from cachesync.outbox import KIND_INTENT, STATE_DEAD, STATE_DONE, OutboxRelay, OutboxStore
from cachesync.outbox.relay import decode_row_actions
from cachesync.policies import RelayPolicy
from cachesync.testing import MemoryKeySink
from tests.unit.kafka.poison import POISONS

#: Payloads of outbox rows that must be buried: the action-level poisons of the catalogue...
POISON_PAYLOADS = [
    json.dumps([json.loads(p.record())["action"]])
    for p in POISONS
    if p.path.startswith("action")
    and p.value != ["a", "b"]  # an outbox DeleteKeys may carry any number of keys
    and (p.path, p.value) != ("action.position", None)  # an intent's document gets the row's
] + [
    # ...and payloads that are no list of actions at all
    "not json",
    '{"v": 1}',
    "[" * 50_000 + "]" * 50_000,
    '[{"v": 1, "type": "delete_keys", "keys": ["a"], "position": NaN}]',
    json.dumps([{"v": 1, "type": "delete_keys", "keys": ["user:\ud800"], "position": None}]),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OutboxStore]:
    from cachesync.connections import sql_engine

    store = OutboxStore(sql_engine(f"sqlite:///{tmp_path / 'outbox.db'}"))
    store.create_table()
    yield store
    store.engine.dispose()


def insert_raw(store: OutboxStore, payload: str) -> int:
    with store.transaction("insert") as conn:
        result = conn.execute(
            store.table.insert().values(
                created_at=dt.datetime(2026, 1, 1),
                kind=KIND_INTENT,
                state="pending",
                payload=payload,
                attempts=0,
                available_at=None,
            )
        )
        return int(result.inserted_primary_key[0])


def test_poison_rows_are_buried_alone_and_valid_rows_around_them_are_applied(
    store: OutboxStore,
) -> None:
    valid: dict[int, str] = {}
    poison: list[int] = []
    for i, payload in enumerate(POISON_PAYLOADS):
        key = f"user:{i}" if i % 2 else f"user:\udcff{i}"  # surrogateescape keys are valid
        valid[store.add(KIND_INTENT, [DeleteKeys((key,))])] = key
        poison.append(insert_raw(store, payload))
    poison.append(insert_raw(store, ""))  # an empty payload (the column is NOT NULL)
    redis = MemoryKeySink()
    policy = RelayPolicy(
        batch_size=1000, retry=RetryPolicy(attempts=2), immediate=ImmediateRetryPolicy.NONE
    )
    relay = OutboxRelay(store, redis=redis, search=None, policy=policy)
    report = relay.run_once()  # one batch holds every row: poison shares it with valid rows
    assert (report.done, report.dead, report.deferred) == (len(valid), len(poison), 0)
    assert sorted(redis.deleted) == sorted(valid.values())
    rows = {r["id"]: r for r in store.rows()}
    assert all(rows[i]["state"] == STATE_DONE for i in valid)
    assert all(rows[i]["state"] == STATE_DEAD for i in poison)
    assert all(f"outbox row {i}" in rows[i]["last_error"] for i in poison)  # the reason, named
    assert relay.run_once().claimed == 0


def test_a_bad_position_is_named_in_the_buried_row(store: OutboxStore) -> None:
    bad = [{"v": 1, "type": "delete_keys", "keys": ["a"], "position": "binlog:mysql-bin:4:0"}]
    row = insert_raw(store, json.dumps(bad))
    relay = OutboxRelay(store, redis=MemoryKeySink(), search=None)
    assert relay.run_once().dead == 1
    (dead,) = store.rows(STATE_DEAD)
    assert dead["id"] == row and "numeric suffix" in dead["last_error"]


@given(st.binary(max_size=100) | st.text(max_size=100).map(str) | st.none())
def test_decoding_a_row_is_total(payload: Any) -> None:
    try:
        actions = decode_row_actions(7, payload)
    except DecodeError as exc:
        assert "outbox row 7" in str(exc)
        return
    assert isinstance(actions, list)
