"""The dead-letter topic: publishing dead letters, listing them, and redriving them.

A dead letter is a retry record that will not be retried again
(:class:`~cachesync.kafka.codec.DeadLetter`): it exhausted the retry policy, it
failed permanently (a mapping error, a table no model declares), or it could not
be decoded. It keeps the whole retry message, the last error, and where it came
from, so an operator can judge it, fix the cause, and redrive it.

Redrive republishes dead letters to the retry topic with ``attempt`` reset to 0
(the consumer tries them at once). It is idempotent: every redriven dead letter
is recorded in a compacted marker topic ``<dead_letter_topic>.redriven`` (key
``partition:offset``) AFTER the retry record was acknowledged, and a later
redrive skips what is marked. A crash between the two sends a dead letter
twice, which is harmless: actions are idempotent and documents are re-read.

Undecodable dead letters are listed but not redriven unless asked
(``include_undecodable``): their raw bytes are then republished unchanged, which
helps only once a consumer that understands them is deployed.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import metrics
from ..codec import load_json
from ..errors import CacheSyncError, DecodeError
from ..keys import wire_key
from .client import AckedProducer, Outgoing, ensure_topics, read_topic
from .codec import (
    DeadLetter,
    RecordRef,
    decode_dead_letter,
    encode_dead_letter,
    encode_message,
    format_time,
    parse_time,
)

__all__ = [
    "DeadLetterPublisher",
    "RedriveReport",
    "StoredDeadLetter",
    "list_dead_letters",
    "marker_topic",
    "redrive",
]

log = logging.getLogger("cachesync.kafka")


def marker_topic(dead_letter_topic: str) -> str:
    """The compacted topic that records which dead letters were redriven."""
    return f"{dead_letter_topic}.redriven"


class DeadLetterPublisher:
    """Sends dead letters to *topic* and waits for ``acks=all``.

    Construction never touches the network. :meth:`publish` blocks for at most
    about *timeout* (see :func:`~cachesync.kafka.client.send_and_wait`).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        timeout: float = 5.0,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout = timeout
        self._kafka = AckedProducer(
            bootstrap, timeout=timeout, client_id="cachesync-dead-letter", options=producer_options
        )

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send *letters*; raises :class:`~cachesync.errors.TransientError` if not all acknowledged.

        After an error some letters may be on the topic already; publishing them
        again duplicates them (the consumer does, after a crash too).
        """
        if not letters:
            return
        self._kafka.send(
            [
                Outgoing(self.topic, letter.record_key, encode_dead_letter(letter))
                for letter in letters
            ],
            what=f"publishing {len(letters)} dead letter(s) to {self.topic}",
        )
        metrics.inc("dead_letters_total", len(letters))

    def close(self, timeout: float | None = None) -> None:
        """Flush and close the producer within *timeout* (default: the publisher's)."""
        self._kafka.close(timeout)


@dataclass(frozen=True)
class StoredDeadLetter:
    """A record of the dead-letter topic as read back, and whether it was redriven."""

    ref: RecordRef
    letter: DeadLetter | None
    problem: str | None = None
    redriven_at: dt.datetime | None = None
    raw_key: bytes | None = None
    raw_value: bytes | None = None

    @property
    def key(self) -> str | None:
        if self.letter is not None:
            return self.letter.key
        return self.raw_key.decode("utf-8", errors="replace") if self.raw_key else None

    def summary(self) -> dict[str, Any]:
        """One flat, JSON-ready line for ``cachesync dlq list``."""
        letter = self.letter
        message = letter.message if letter is not None else None
        return {
            "dlq": str(self.ref),
            "key": self.key,
            "reason": letter.reason if letter else "unreadable",
            "attempts": message.attempt if message else None,
            "error": str(letter.error) if letter else self.problem,
            "dead_at": format_time(letter.dead_at) if letter else None,
            "first_failed_at": format_time(message.first_failed_at) if message else None,
            "source": str(letter.source) if letter else None,
            "action": _describe(message.action) if message else None,
            "origin": dict(message.origin) if message else None,
            "redriven_at": format_time(self.redriven_at) if self.redriven_at else None,
        }


def _describe(action: Any) -> str:
    from ..actions import DeleteKeys, IndexDoc

    position = f" @{action.position}" if action.position is not None else ""
    if isinstance(action, DeleteKeys):
        return f"delete_keys {' '.join(action.keys)}{position}"
    kind = "index_doc" if isinstance(action, IndexDoc) else "delete_doc"
    return f"{kind} {action.index}/{action.doc_id}{position}"


def _markers(
    bootstrap: str, dead_letter_topic: str, timeout: float
) -> dict[tuple[int, int], dt.datetime]:
    topic = marker_topic(dead_letter_topic)
    marks: dict[tuple[int, int], dt.datetime] = {}
    try:
        records = list(read_topic(bootstrap, topic, timeout=min(timeout, 3.0)))
    except CacheSyncError:
        return marks  # no marker topic yet: nothing was redriven
    for record in records:
        if record.key is None or record.value is None:
            continue
        try:
            partition, offset = (int(x) for x in record.key.decode().split(":"))
            when = parse_time(load_json(record.value, "redrive marker")["redriven_at"])
        except (DecodeError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            continue  # not a marker this code wrote: it marks nothing
        marks[(partition, offset)] = when
    return marks


def list_dead_letters(
    bootstrap: str,
    dead_letter_topic: str,
    *,
    since: dt.datetime | None = None,
    key: str | None = None,
    timeout: float = 10.0,
) -> list[StoredDeadLetter]:
    """Every dead letter (optionally dead at/after *since*, key matching glob *key*), oldest first."""
    marks = _markers(bootstrap, dead_letter_topic, timeout)
    found: list[StoredDeadLetter] = []
    for record in read_topic(bootstrap, dead_letter_topic, timeout=timeout):
        ref = RecordRef(record.topic, record.partition, record.offset, record.timestamp)
        try:
            letter: DeadLetter | None = decode_dead_letter(record.value)
            problem = None
        except DecodeError as exc:
            letter, problem = None, str(exc)
        stored = StoredDeadLetter(
            ref,
            letter,
            problem,
            marks.get((record.partition, record.offset)),
            record.key,
            record.value,
        )
        if since is not None and (letter is None or letter.dead_at < since):
            continue
        if key is not None and not fnmatch.fnmatchcase(stored.key or "", key):
            continue
        found.append(stored)
    found.sort(
        key=lambda s: (
            s.letter.dead_at if s.letter else dt.datetime.min.replace(tzinfo=dt.UTC),
            s.ref.partition,
            s.ref.offset,
        )
    )
    return found


@dataclass
class RedriveReport:
    """What a redrive did."""

    matched: int = 0
    redriven: int = 0
    already_redriven: int = 0
    undecodable: int = 0
    keys: list[str] = field(default_factory=list)


def redrive(
    bootstrap: str,
    *,
    dead_letter_topic: str,
    retry_topic: str,
    since: dt.datetime | None = None,
    key: str | None = None,
    include_undecodable: bool = False,
    dry_run: bool = False,
    timeout: float = 10.0,
) -> RedriveReport:
    """Send matching dead letters back to *retry_topic* with ``attempt`` reset (idempotent)."""
    report = RedriveReport()
    letters = list_dead_letters(bootstrap, dead_letter_topic, since=since, key=key, timeout=timeout)
    now = dt.datetime.now(dt.UTC)
    outgoing: list[tuple[StoredDeadLetter, bytes | None, bytes | None]] = []
    for stored in letters:
        report.matched += 1
        if stored.redriven_at is not None:
            report.already_redriven += 1
            continue
        letter = stored.letter
        if letter is None or letter.message is None:
            report.undecodable += 1
            if not include_undecodable:
                continue
            raw_key = letter.raw_key if letter is not None else None
            raw_value = letter.raw_value if letter is not None else stored.raw_value
            outgoing.append((stored, raw_key, raw_value))
            continue
        message = replace(
            letter.message,
            attempt=0,
            last_failed_at=now,
            origin={
                **letter.message.origin,
                "redriven_from": str(stored.ref),
                "redriven_at": format_time(now),
            },
        )
        outgoing.append((stored, wire_key(message.key), encode_message(message)))
    if dry_run or not outgoing:
        report.keys = [s.key or "" for s, _, _ in outgoing]
        return report

    marks = marker_topic(dead_letter_topic)
    ensure_topics(bootstrap, {marks: {"cleanup.policy": "compact"}}, partitions=1)
    kafka = AckedProducer(bootstrap, timeout=timeout, client_id="cachesync-redrive")
    try:
        # markers only after the retry records are acknowledged: a crash in between
        # redrives twice (harmless), never marks what was not redriven
        deliveries = kafka.send(
            [Outgoing(retry_topic, k, v) for _, k, v in outgoing],
            what=f"redriving {len(outgoing)} dead letter(s) to {retry_topic}",
        )
        kafka.send(
            [
                Outgoing(
                    marks,
                    f"{s.ref.partition}:{s.ref.offset}".encode(),
                    json.dumps(
                        {
                            "redriven_at": format_time(now),
                            "to": f"{d.topic}[{d.partition}]@{d.offset}",
                        }
                    ).encode(),
                )
                for (s, _, _), d in zip(outgoing, deliveries, strict=True)
            ],
            what=f"marking {len(outgoing)} dead letter(s) as redriven in {marks}",
        )
    finally:
        kafka.close()
    report.redriven = len(outgoing)
    report.keys = [s.key or "" for s, _, _ in outgoing]
    metrics.inc("redriven_total", report.redriven)
    log.info("cachesync dlq: redrove %d dead letter(s) to %s", report.redriven, retry_topic)
    return report
