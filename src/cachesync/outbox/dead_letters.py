"""The database dead-letter store: dead rows of the outbox table, listed and redriven.

Two kinds of rows end ``dead`` in the outbox table, and both are dead letters an
operator sees with ``cachesync dlq list`` and sends back with ``cachesync dlq
redrive`` once the cause is fixed, with or without Kafka:

* ``failed`` rows: actions that failed permanently (a document the mapping
  rejects) or exhausted the relay's retries. A redrive makes the row pending
  again with no attempts; the relay applies it (documents re-read first).
* ``change`` rows: poison row changes (:mod:`cachesync.deadletters`), buried by the
  sidecar through :class:`OutboxDeadLetterStore`. A redrive plans the stored
  change again with the CURRENT declarations (the fix is usually in a user
  callable) and parks the resulting actions as a pending ``failed`` row; the
  change row is marked done. A change that is still poison stays dead with the
  new error. Document actions are re-read by the relay before they are applied,
  so a redrive of an old change converges to the row's current state.

Redrive is idempotent: a redriven row is no longer dead, so a second redrive
sends nothing.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..deadletters import DeadLetterStore, PoisonChange, decode_change, is_poison
from ..errors import CacheSyncError, DecodeError, HandOffError
from ..planning import plan
from ..registry import Registry
from .schema import KIND_CHANGE, KIND_FAILED, STATE_DEAD
from .store import OutboxStore

__all__ = [
    "OutboxDeadLetterStore",
    "OutboxRedriveReport",
    "list_outbox_dead_letters",
    "redrive_outbox",
]


class OutboxDeadLetterStore(DeadLetterStore):
    """Buries poison changes as ``dead`` ``change`` rows of the outbox table (one transaction)."""

    def __init__(self, store: OutboxStore) -> None:
        self.store = store

    def bury(self, letters: Sequence[PoisonChange]) -> None:
        payloads = [
            (json.dumps(letter.encode(), separators=(",", ":")), letter.error) for letter in letters
        ]
        try:
            self.store.add_dead_changes(payloads)
        except CacheSyncError as exc:
            raise HandOffError(
                f"{len(letters)} poison change(s) could not be stored in outbox "
                f"{self.store.name}: {exc}"
            ) from exc

    def describe(self) -> str:
        return f"outbox table {self.store.name}"


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """One line for ``dlq list``, with the same fields as a Kafka dead letter's summary."""
    created: dt.datetime = row["created_at"]
    line: dict[str, Any] = {
        "dlq": f"outbox:{row['id']}",
        "key": None,
        "reason": "poison" if row["kind"] == KIND_CHANGE else "permanent",
        "attempts": row["attempts"],
        "error": row["last_error"],
        "dead_at": created.isoformat(timespec="milliseconds"),
        "action": None,
        "redriven_at": None,
    }
    try:
        payload = json.loads(row["payload"])
        if row["kind"] == KIND_CHANGE:
            change = payload["change"]
            line["key"] = f"{change.get('table')} {json.dumps(payload.get('primary_key'))}"
            line["action"] = (
                f"{change.get('op')} @{change.get('position')} ({payload.get('model')})"
            )
        else:
            keys = [k for a in payload for k in a.get("keys", ())] or [
                f"{a.get('index')}/{a.get('id')}" for a in payload
            ]
            line["key"] = " ".join(keys)
            line["action"] = ", ".join(str(a.get("type")) for a in payload)
    except (ValueError, KeyError, TypeError, AttributeError):
        line["reason"] = "unreadable"
    return line


def list_outbox_dead_letters(
    store: OutboxStore, *, since: dt.datetime | None = None, key: str | None = None
) -> list[dict[str, Any]]:
    """Summaries of the dead rows (optionally created at/after *since*, key matching glob *key*)."""
    lines = []
    for row in store.rows(STATE_DEAD):
        created = row["created_at"]
        if since is not None and created.replace(tzinfo=dt.UTC) < since.astimezone(dt.UTC):
            continue
        line = _summary(row)
        if key is not None and not fnmatch.fnmatchcase(line["key"] or "", key):
            continue
        lines.append(line)
    return lines


@dataclass
class OutboxRedriveReport:
    """What a redrive of the database store did."""

    matched: int = 0
    redriven: int = 0
    still_poison: int = 0
    ids: list[int] = field(default_factory=list)


def redrive_outbox(
    store: OutboxStore,
    registry: Registry,
    *,
    since: dt.datetime | None = None,
    key: str | None = None,
    dry_run: bool = False,
) -> OutboxRedriveReport:
    """Send the matching dead rows back (module docstring); idempotent."""
    report = OutboxRedriveReport()
    wanted = {
        int(line["dlq"].split(":", 1)[1])
        for line in list_outbox_dead_letters(store, since=since, key=key)
    }
    rows = [r for r in store.rows(STATE_DEAD) if r["id"] in wanted]
    report.matched = len(rows)
    report.ids = [r["id"] for r in rows]
    if dry_run:
        return report
    for row in rows:
        if row["kind"] != KIND_CHANGE:
            with store.transaction("redrive") as conn:
                store.revive(conn, row["id"])
            report.redriven += 1
            continue
        try:
            change = decode_change(json.loads(row["payload"])["change"])
            spec = registry.get(change.schema, change.table)
            if spec is None:
                raise DecodeError(f"no model declares {change.schema}.{change.table} any more")
            actions = plan(change, spec)
        except Exception as exc:
            if not (is_poison(exc) or isinstance(exc, DecodeError)):
                raise
            with store.transaction("redrive") as conn:
                store.bury(
                    conn,
                    row["id"],
                    attempts=row["attempts"] + 1,
                    error=f"{type(exc).__name__}: {exc}",
                )
            report.still_poison += 1
            continue
        with store.transaction("redrive") as conn:
            if actions:
                store.add(KIND_FAILED, actions, conn=conn)
            store.mark_done(conn, [row["id"]])
        report.redriven += 1
    return report
