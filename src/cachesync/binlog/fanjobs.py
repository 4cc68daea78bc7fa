"""Fan-out jobs: large related-row fan-outs worked through beside the stream, resumably.

A category renamed over 100,000 products must not hold every other table's
changes for the minutes it takes to re-index them (:mod:`cachesync.binlog.fanout`
plans the first chunk of each fan-out with its batch; this module takes the
rest). A :class:`FanoutJob` names the relation, the related value, the position
of the related change (the version every document of the fan-out carries) and
the primary key the fan-out has reached.

Durability, with the checkpoint rule unchanged:

* a job is saved (``<pipeline>#fanout:<id>`` in the checkpoint store) before
  the checkpoint is saved past the change that made it: :meth:`FanoutJobs.persist`
  runs before every checkpoint save, on the reading thread, after the leader
  lock was checked, so a deposed leader never writes a job either;
* its progress moves only past chunks the lanes applied or handed off;
* a finished job is deleted.

So a SIGKILL loses nothing: on restart the stored jobs resume from their last
saved chunk, and the replay from the checkpoint makes again any job not saved
yet. Chunks between the saved progress and the kill are redone, which is
harmless: key deletes, and versioned writes of the current joined rows.

A second change of the same related row (renamed again) replaces the job: the
new one starts from its own first chunk at the newer position, because rows the
old one already did were read before the second change.

The worker reads a chunk (a keyset range scan through the foreign key's index)
while the lanes apply the previous one, and hands chunks to the lanes as
background work, which they take only when no stream work is queued. At most
``FanoutPolicy.max_jobs`` jobs wait; the reader waits for room beyond that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..changes import Position
from ..codec import tag_value, untag_value
from ..deadletters import PoisonChange
from ..errors import CacheSyncError, DecodeError, HandOffError, TransientError
from ..policies import FanoutPolicy
from ..registry import TableSpec
from .checkpoint import CheckpointStore

if TYPE_CHECKING:
    from .fanout import Fanout, FanoutChunk
    from .lanes import Lanes

__all__ = ["FanoutJob", "FanoutJobs", "job_prefix"]

log = logging.getLogger("cachesync.fanout")


def job_prefix(pipeline: str) -> str:
    """The checkpoint-store names of *pipeline*'s fan-out jobs start with this."""
    return f"{pipeline}#fanout:"


@dataclass(eq=False)
class FanoutJob:
    """The rest of one fan-out: rows of ``spec`` whose relation ``prefix`` ends at ``value``,
    after primary key ``after`` (``None``: from the first), re-planned at ``position``."""

    spec: TableSpec
    prefix: tuple[str, ...]
    value: tuple[Any, ...]
    position: Position
    after: tuple[Any, ...] | None = None
    started: float = field(default_factory=time.monotonic)
    done_rows: int = 0

    @property
    def id(self) -> str:
        """The same for every job of one relation and related value (a newer one replaces)."""
        try:
            value: Any = [tag_value(v) for v in self.value]
        except TypeError:  # a type no stored job can hold (see _fit): still one id per value
            value = repr(self.value)
        body = json.dumps([self.spec.model, self.prefix, value])
        return hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()[:20]

    def encode(self, *, progress: bool = True) -> str:
        body: dict[str, Any] = {
            "m": self.spec.model,
            "r": list(self.prefix),
            "v": [tag_value(v) for v in self.value],
            "p": self.position.encode(),
        }
        if progress and self.after is not None:
            body["a"] = [tag_value(v) for v in self.after]
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str, spec_of: Callable[[str], TableSpec | None]) -> FanoutJob:
        """Raises :class:`DecodeError` for a malformed job or a model no longer declared."""
        try:
            body = json.loads(text)
            spec = spec_of(str(body["m"]))
            if spec is None:
                raise DecodeError(f"{body['m']} no longer declares related data")
            after = body.get("a")
            return cls(
                spec,
                tuple(str(p) for p in body["r"]),
                tuple(untag_value(v) for v in body["v"]),
                Position.decode(str(body["p"])),
                None if after is None else tuple(untag_value(v) for v in after),
            )
        except DecodeError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeError(f"malformed fan-out job {text!r:.120}: {exc}") from None

    @staticmethod
    def summary(text: str) -> str:
        """One line for ``cachesync status`` from a stored job, without its model's spec."""
        try:
            body = json.loads(text)
            value = ", ".join(repr(untag_value(v)) for v in body["v"])
            after = body.get("a")
            where = "from its start" if after is None else f"after primary key {after}"
            return f"{body['m']} via {'.'.join(body['r'])} = {value} (at {body['p']}), {where}"
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable fan-out job ({exc})"

    def describe(self) -> str:
        value = ", ".join(map(repr, self.value))
        return f"{self.spec.model} via {'.'.join(self.prefix)} = {value} (at {self.position})"


@dataclass
class _Flight:
    """A chunk in the lanes: when it is applied, its job's progress moves to ``last``."""

    job: FanoutJob
    chunk: FanoutChunk
    applied: threading.Event = field(default_factory=threading.Event)


class FanoutJobs:
    """The pipeline's fan-out jobs and their worker thread (module docstring).

    Built per leadership term. The reading thread calls :meth:`load`,
    :meth:`start`, :meth:`add` and :meth:`persist`; only it touches the
    checkpoint store. The worker reads chunks through *fanout*, buries their dead
    letters through *bury* and hands them to *lanes*.
    """

    def __init__(
        self,
        fanout: Fanout,
        lanes: Lanes,
        store: CheckpointStore,
        pipeline: str,
        *,
        policy: FanoutPolicy,
        bury: Callable[[Sequence[PoisonChange]], None],
        backoff: Callable[[int], float],
        stopped: threading.Event,
        keepalive: Callable[[], object],
    ) -> None:
        self._fanout = fanout
        self._lanes = lanes
        self._store = store
        self._prefix = job_prefix(pipeline)
        self._policy = policy
        self._bury = bury
        self._backoff = backoff
        self._stopped = stopped
        self._keepalive = keepalive
        self._cond = threading.Condition()
        self._jobs: dict[str, FanoutJob] = {}
        #: what :meth:`persist` has to write: the job, or ``None`` to delete its entry
        self._dirty: dict[str, FanoutJob | None] = {}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cachesync-fanout", daemon=True)
        self.error: BaseException | None = None

    # -- reading thread -----------------------------------------------------------------

    def load(self) -> int:
        """Take up the jobs a previous leader saved; how many. A stored job that cannot be
        decoded (its model no longer declares related data) is dropped with an ERROR."""
        loaded = 0
        for name in self._store.names(self._prefix):
            stored = self._store.load(name)
            if stored is None:
                continue
            try:
                job = FanoutJob.decode(stored.position, self._fanout.spec_of)
            except DecodeError as exc:
                log.error("cachesync: dropping stored fan-out job %s: %s", name, exc)
                self._dirty[name[len(self._prefix) :]] = None
                continue
            self._jobs[job.id] = job
            loaded += 1
            log.info(
                "cachesync: resuming fan-out of %s after %s",
                job.describe(),
                "its start" if job.after is None else f"primary key {job.after}",
            )
        return loaded

    def start(self) -> None:
        self._thread.start()

    def add(self, jobs: Sequence[FanoutJob]) -> bool:
        """Queue *jobs* (a newer job replaces one of the same relation and value); waits
        while ``max_jobs`` are queued. False if the sidecar stopped while waiting."""
        for job in jobs:
            while True:
                with self._cond:
                    if job.id in self._jobs or len(self._jobs) < self._policy.max_jobs:
                        replaced = self._jobs.pop(job.id, None)
                        self._jobs[job.id] = job
                        self._dirty[job.id] = job
                        self._cond.notify_all()
                        break
                    self.check()
                    if self._stopped.is_set() or self._halt.is_set():
                        return False
                    self._cond.wait(0.05)
                self._keepalive()  # a database round trip: not while the worker waits on us
            if replaced is not None:
                log.info("cachesync: fan-out of %s restarts at %s", replaced.describe(), job.position)
            else:
                log.info("cachesync: fan-out of %s continues in the background", job.describe())
        return True

    def persist(self) -> None:
        """Write the jobs added, advanced or finished since the last call.

        Called before every checkpoint save; raises :class:`TransientError` (the
        checkpoint is then not saved either) and keeps what it could not write.
        """
        with self._cond:
            dirty, self._dirty = self._dirty, {}
        try:
            width = self._store.width
            while dirty:
                job_id, job = next(iter(dirty.items()))
                name = self._prefix + job_id
                if job is None:
                    self._store.delete(name)
                elif (text := self._fit(job, width)) is not None:
                    self._store.save(name, text)
                del dirty[job_id]
        except BaseException:
            with self._cond:  # newer entries win over the unwritten older ones
                self._dirty = {**dirty, **self._dirty}
            raise

    @property
    def pending(self) -> int:
        """Jobs not finished yet."""
        with self._cond:
            return len(self._jobs)

    @property
    def unsaved(self) -> bool:
        with self._cond:
            return bool(self._dirty)

    def check(self) -> None:
        """Re-raise, on the reading thread, what the worker died of."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop the worker; unsaved progress is redone by the next leader."""
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(self._policy.stop_timeout)

    def _fit(self, job: FanoutJob, width: int | None) -> str | None:
        """*job*'s stored text, shortened to *width* if need be; ``None`` (said at ERROR)
        when it cannot be stored: it still runs, but a crash before it ends loses it."""
        try:
            text = job.encode()
        except TypeError as exc:
            log.error(
                "cachesync: fan-out of %s cannot be saved (%s); it runs, but a crash before "
                "it ends loses it (run `cachesync verify %s` after one)",
                job.describe(),
                exc,
                job.spec.model,
            )
            return None
        if width is None or len(text) <= width:
            return text
        shorter = job.encode(progress=False)  # resumes from its start: redone, not lost
        if len(shorter) <= width:
            return shorter
        log.error(
            "cachesync: fan-out of %s does not fit the checkpoint store's %d characters; "
            "it runs, but a crash before it ends loses it (widen the position column: "
            "ALTER TABLE cachesync_checkpoint MODIFY position VARCHAR(4096) NOT NULL)",
            job.describe(),
            width,
        )
        return None

    # -- worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        flight: _Flight | None = None
        reading: tuple[FanoutJob, tuple[Any, ...] | None] | None = None
        failures = 0
        try:
            while not self._halted():
                job = self._next()
                if job is None:
                    self._land(flight)
                    flight = None
                    continue
                after = reading[1] if reading is not None and reading[0] is job else job.after
                try:
                    chunk = self._fanout.read(_at(job, after))
                    if chunk.poison:
                        self._bury(chunk.poison)
                except (TransientError, HandOffError) as exc:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning(
                        "cachesync: fan-out of %s paused (%s); retrying in %.1fs",
                        job.describe(),
                        exc,
                        delay,
                    )
                    self._halt.wait(delay)
                    continue
                except CacheSyncError as exc:
                    self._abandon(job, exc)
                    reading = None
                    continue
                failures = 0
                self._land(flight)
                flight = None
                if self._halted():
                    return
                flight = _Flight(job, chunk)
                self._lanes.submit_background(chunk.actions, flight.applied.set)
                reading = (job, chunk.last)
                if chunk.final:  # the job ends with this chunk: nothing to read ahead
                    self._land(flight)
                    flight = None
                    reading = None
        except BaseException as exc:  # surfaced on the reading thread by check()
            log.exception("cachesync: the fan-out worker failed")
            self.error = exc

    def _halted(self) -> bool:
        return self._halt.is_set() or self._stopped.is_set()

    def _next(self) -> FanoutJob | None:
        """The oldest job (after a short wait when there is none)."""
        with self._cond:
            if not self._jobs:
                self._cond.wait(0.2)
            return next(iter(self._jobs.values()), None)

    def _land(self, flight: _Flight | None) -> None:
        """Wait until *flight* is applied, then move its job on (or finish it)."""
        if flight is None:
            return
        while not flight.applied.wait(0.05):
            if self._halted():
                return
        job, chunk = flight.job, flight.chunk
        metrics.inc("fanout_rows_total", chunk.rows)
        with self._cond:
            if self._jobs.get(job.id) is not job:  # replaced by a newer change meanwhile
                return
            job.done_rows += chunk.rows
            if chunk.final:
                del self._jobs[job.id]
                self._dirty[job.id] = None
            else:
                job.after = chunk.last
                self._dirty[job.id] = job
            self._cond.notify_all()
        if chunk.final:
            log.info(
                "cachesync: fan-out of %s done: %d rows in %.1fs",
                job.describe(),
                job.done_rows,
                time.monotonic() - job.started,
            )

    def _abandon(self, job: FanoutJob, exc: CacheSyncError) -> None:
        """A fan-out that can never go on (its table gone): say so loudly and drop it."""
        log.error(
            "cachesync: fan-out of %s abandoned after %d rows: %s; run `cachesync reindex %s` "
            "and `cachesync verify` once the schema is settled",
            job.describe(),
            job.done_rows,
            exc,
            job.spec.model,
        )
        metrics.inc("fanout_abandoned_total")
        with self._cond:
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
                self._dirty[job.id] = None


def _at(job: FanoutJob, after: tuple[Any, ...] | None) -> FanoutJob:
    """*job* read from *after* (the worker reads ahead of the saved progress)."""
    if after == job.after:
        return job
    return FanoutJob(job.spec, job.prefix, job.value, job.position, after)
