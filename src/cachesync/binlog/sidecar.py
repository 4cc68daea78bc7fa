"""The sidecar loop: leader lock, read and plan, per-sink lanes, checkpoint.

The reading thread gathers what the binlog has buffered (up to
``BatchPolicy.max_rows`` changes; with a positive ``max_delay_ms``, what
arrives within that window), plans it (poison changes become dead letters,
:mod:`cachesync.deadletters`) and submits the actions to the per-sink lanes
(:mod:`cachesync.binlog.lanes`): Redis and Elasticsearch each apply in their
own thread, so neither holds the other up, and the reader decodes the next
changes meanwhile. The :class:`~cachesync.binlog.checkpoint.ResumePoint` saved
is the newest one every lane has applied or durably handed off; a lane whose
hand-off is refused (:class:`~cachesync.errors.HandOffError`) retries it with
backoff and holds the checkpoint where it is: nothing is dropped.

Leadership: a sidecar streams only while it holds the
:class:`~cachesync.binlog.leader.LeaderLock` (``GET_LOCK`` on a dedicated
connection to the watched server; a standby blocks in ``GET_LOCK`` and takes
over from the checkpoint when the leader's connection dies). A leader that
loses its lock connection stops streaming and goes back to waiting; the lock is
re-checked before every checkpoint save so a deposed leader never moves the
checkpoint.

Waits (after a transient start-up failure, before re-applying a batch that
could not be handed off) follow the :class:`~cachesync.policies.Backoff`
schedules of :class:`~cachesync.policies.SidecarPolicy` and go through the
injected ``sleep``.

Shutdown: :meth:`Sidecar.stop` (the CLI calls it on SIGTERM/SIGINT) lets the
lanes apply what was submitted, saves the checkpoint and returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import metrics
from ..actions import Action
from ..apply import (
    Applier,
    FailureHandler,
    LoggingFailureHandler,
    ReportingFailureHandler,
)
from ..changes import RowChange
from ..config import Settings
from ..deadletters import (
    DeadLetterStore,
    LoggingDeadLetterStore,
    PoisonChange,
    is_poison,
    report_poison,
    salvage_keys,
)
from ..errors import (
    CacheSyncError,
    ConfigurationError,
    HandOffError,
    LeadershipLost,
    PermanentError,
    SchemaError,
    SourceConfigurationError,
    TransientError,
)
from ..health import Heartbeat, TurningEvent
from ..policies import SidecarPolicy
from ..registry import Registry, TableSpec, default_registry
from . import guards, positions, server
from .cascades import Cascades, cascade_index
from .checkpoint import CheckpointStore, ResumePoint, checkpoint_store
from .fanjobs import FanoutJobs
from .fanout import Fanout
from .lanes import Lanes
from .leader import LeaderLock, lock_name
from .partial import PartialDeadLetters, PartialImages
from .preflight import check_services
from .reporting import Reporting
from .rowreader import MySQLRowReader
from .source import BinlogSource
from .tablepurge import TablePurge
from .wiring import (
    build_applier,
    default_dead_letter_store,
    default_failure_handler,
    retry_path,
)

__all__ = ["Sidecar", "build_applier", "default_failure_handler"]

log = logging.getLogger("cachesync.sidecar")


class _Unknowable(PartialDeadLetters):
    """Collects the changes whose partial image hides a value, to be buried with the poison.

    They go to the same dead-letter store in the same step as the batch's poison
    changes, so a refusing store holds the checkpoint for both alike.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._letters: list[PoisonChange] = []

    def record(self, change: RowChange, reason: str) -> None:
        spec = self.registry.get(change.schema, change.table)
        model = spec.model if spec is not None else change.table
        pk_columns = spec.primary_key_columns() if spec is not None else ()
        image = change.before if change.before is not None else change.after or {}
        pk = {c: image.get(c) for c in pk_columns}
        self._letters.append(PoisonChange(change, model, f"partial row image: {reason}", pk))

    def take(self) -> list[PoisonChange]:
        letters, self._letters = self._letters, []
        return letters


class Sidecar(Reporting):
    """Streams the binlog into Redis and Elasticsearch; see the module docstring.

    ``run()`` blocks until :meth:`stop` is called (from a signal handler or
    another thread) and returns normally; it raises on problems a restart cannot
    fix (:class:`SourceConfigurationError`, :class:`SchemaError`,
    :class:`ConfigurationError`). Transient trouble (database restart, lost
    lock) is waited out with backoff.
    """

    def __init__(
        self,
        *,
        mysql: Mapping[str, Any],
        registry: Registry,
        applier: Applier,
        store: CheckpointStore,
        on_failure: FailureHandler | None = None,
        dead_letters: DeadLetterStore | None = None,
        name: str = "default",
        server_id: int = 7541,
        policy: SidecarPolicy | None = None,
        reset_checkpoint: bool = False,
        sleep: Callable[[float], object] | None = None,
        servers: Sequence[Mapping[str, Any]] = (),
        store_follows: bool = False,
    ) -> None:
        self._mysql = dict(mysql)
        #: Servers to fail over to (binlog/failover.py); the checkpoint table moves along
        #: with the server followed when *store_follows*.
        self._servers = [dict(p) for p in servers] or [self._mysql]
        self._store_follows = store_follows
        self._database: str | None = self._mysql.get("database")
        self.registry = registry
        self.applier = applier
        self.on_failure = on_failure or LoggingFailureHandler()
        self.dead_letters = dead_letters or LoggingDeadLetterStore()
        self.store = store
        self.name = name
        self.server_id = server_id
        self.policy = policy or SidecarPolicy()
        #: Changes logged with partial row images: re-read, or reported (binlog/partial.py).
        self._unknowable = _Unknowable(registry)
        self.partial_images = PartialImages(registry, MySQLRowReader(self._mysql), self._unknowable)
        self._reset = reset_checkpoint
        #: Beaten whenever the loop (or the binlog reader) looks at its stop event: /healthz.
        self.heartbeat = Heartbeat()
        self._stop: threading.Event = TurningEvent(self.heartbeat)
        self._sleep = sleep or self._stop.wait
        self.lock = LeaderLock(
            self._mysql,
            lock_name(self._database, name),
            session_timeout=self.policy.lock_session_timeout,
        )
        self.leading = threading.Event()
        #: The last position saved to the checkpoint store (for tests and ``status``).
        self.saved: ResumePoint | None = None
        self.batches = 0
        self.rows = 0
        self._cascades: Cascades | None = None  # foreign-key cascades, read when leading
        self._fanout: Fanout | None = None  # rows embedding related rows, read when leading
        self._jobs: FanoutJobs | None = None  # the background fan-outs, while streaming
        self._last_jobs_save = time.monotonic()
        self._bury_lock = threading.Lock()  # the reader and the fan-out worker bury
        self._submitted: ResumePoint | None = None  # the last batch handed to the lanes
        self._lanes: Lanes | None = None  # the per-sink lanes, while leading
        self._last_save = self._last_lock_ping = time.monotonic()
        self._saved_changes = 0  # changes settled at the last save (per leadership term)
        #: What a TRUNCATE/DROP/RENAME of a watched table purges (binlog/tablepurge.py).
        self.table_purge = TablePurge(
            registry,
            keys=applier.keys,
            documents=applier.documents,
            mysql=self._mysql,
            default_schema=self._database,
        )
        #: Wall time before which every committed change is applied (honest lag; see
        #: :meth:`lag_seconds`); ``None`` while not leading.
        self.applied_through: float | None = None
        self._reported = 0.0
        #: Why the last attempt to lead failed (cleared once the lock server answers).
        self._trouble: str | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        registry: Registry | None = None,
        *,
        on_failure: FailureHandler | None = None,
        reset_checkpoint: bool = False,
        policy: SidecarPolicy | None = None,
    ) -> Sidecar:
        """A sidecar wired from :class:`Settings` (what ``cachesync listen`` runs)."""
        from ..connections import mysql_hosts

        mysql_url = settings.require("mysql_url", "to stream its binlog")
        servers = mysql_hosts(mysql_url)
        registry = registry if registry is not None else default_registry
        if not registry.tables():
            raise ConfigurationError(
                "no model is declared: pass the modules that declare them with --models "
                "(CACHESYNC_MODELS)",
                setting="models",
            )
        applier = build_applier(settings, registry)
        # Said at WARNING, never fatal: services restart in any order (binlog/preflight.py).
        check_services(
            settings,
            needs_redis=applier.keys is not None,
            needs_search=applier.documents is not None,
        )
        handler = on_failure or default_failure_handler(settings)
        return cls(
            mysql=servers[0],
            servers=servers,
            store_follows=settings.checkpoint_url is None,
            registry=registry,
            applier=applier,
            on_failure=ReportingFailureHandler(
                handler, component="sidecar", target=retry_path(settings), logger=log
            ),
            dead_letters=default_dead_letter_store(settings),
            store=checkpoint_store(settings.checkpoint_url, mysql_url),
            name=settings.name,
            server_id=settings.resolved_server_id,
            policy=policy or SidecarPolicy(batch=settings.batch_policy, xa=settings.xa_policy),
            reset_checkpoint=reset_checkpoint,
        )

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        self.table_purge.log_notes()
        try:
            while not self._stop.is_set():
                try:
                    if len(self._servers) > 1:
                        self._follow()
                    if not self._acquire():
                        return
                    failures = 0
                    self._lead()
                except LeadershipLost as exc:
                    log.warning("cachesync: %s; waiting to lead again", exc)
                except (
                    SourceConfigurationError,
                    ConfigurationError,
                    SchemaError,
                    PermanentError,
                ):
                    raise
                except TransientError as exc:
                    failures += 1
                    delay = self.policy.retry_backoff.delay(failures)
                    self._trouble = str(exc)  # not ready: neither streaming nor a standby
                    log.warning("cachesync: %s; retrying in %.1fs", exc, delay)
                    self._sleep(delay)
                finally:
                    self.leading.clear()
                    self.lock.release()
        finally:
            self.partial_images.close()
            self.store.close()

    def _follow(self) -> None:
        """Follow the writable server that has the checkpoint (binlog/failover.py)."""
        from .checkpoint import TableCheckpointStore
        from .failover import choose, describe

        wanted = self.saved.gtid if self.saved is not None else None
        if wanted is None and not self._store_follows:
            with contextlib.suppress(CacheSyncError):
                stored = self.store.load(self.name)
                if stored is not None:
                    wanted = ResumePoint.decode(stored.position).gtid
        chosen = dict(choose(self._servers, wanted, current=self._mysql))
        if describe(chosen) == describe(self._mysql):
            return
        self.lock.close()
        self.partial_images.close()
        self._mysql = chosen
        self.lock = LeaderLock(
            chosen, self.lock.name, session_timeout=self.policy.lock_session_timeout
        )
        self.partial_images = PartialImages(self.registry, MySQLRowReader(chosen), self._unknowable)
        if self._store_follows:
            self.store.close()
            self.store = TableCheckpointStore(chosen)

    def _acquire(self) -> bool:
        """Block until this sidecar holds the leader lock (True) or is stopped (False)."""
        announced = False
        while not self._stop.is_set():
            acquired = self.lock.try_acquire(self.policy.lock_wait)
            self._trouble = None  # the server answered: a standby is healthy
            if acquired:
                log.info("cachesync: leading pipeline %r (lock %s)", self.name, self.lock.name)
                return True
            if not announced:
                log.info("cachesync: standby: another sidecar holds lock %s", self.lock.name)
                announced = True
        return False

    def _stored_point(self) -> ResumePoint | None:
        """The saved checkpoint (after ``--reset-checkpoint``: none)."""
        if self._reset:
            log.warning("cachesync: --reset-checkpoint: forgetting checkpoint %r", self.name)
            self.store.delete(self.name)
            self._reset = False
        stored = self.store.load(self.name)
        if stored is None:
            return None
        return ResumePoint.decode(stored.position, stored.commit_time)

    def _first_point(self, conn: Any) -> ResumePoint:
        """The server's current position, for a pipeline without a checkpoint."""
        start = positions.first_point(conn, time.time())
        log.info(
            "cachesync: no checkpoint %r: starting at the current position %s "
            "(rows written before are not replayed; use `cachesync reindex` for search indexes)",
            self.name,
            start,
        )
        return start

    def _lead(self) -> None:
        stored = self._stored_point()
        conn = server.connect(self._mysql, what="MySQL")
        try:
            if stored is not None:  # a file+position checkpoint gets its GTID state
                stored = positions.upgrade(conn, stored, self.name)
            guards.check_server(
                conn,
                tables=self._watched(),
                server_id=self.server_id,
                resume=stored,
                checkpoint_name=self.name,
            )
            if stored is not None:
                stored = guards.reachable_hold(conn, stored, self.name)
            self._cascades = Cascades.start(
                conn,
                self._mysql,
                self.registry,
                index=cascade_index(self.applier, self.name),
                default_schema=self._database,
            )
            self._fanout = Fanout.start(
                conn,
                self._mysql,
                self.registry,
                default_schema=self._database,
                chunk=self.policy.fanout.chunk,
            )
            start = stored if stored is not None else self._first_point(conn)
        finally:
            conn.close()
        if stored is None:
            self._save(start)
        self.saved = self._submitted = start
        self.applied_through = start.commit_time
        self.leading.set()
        source = BinlogSource(
            self._mysql,
            # the registry plus unwatched cascade parents and related tables
            self._cascades.source_registry
            if self._fanout is None
            else self._fanout.source_registry(self._cascades.source_registry),
            server_id=self.server_id,
            start=start,
            default_schema=self._database,
            policy=self.policy.reconnect,
            xa=self.policy.xa,
            stop=self._stop,
            give_up_after=3 if len(self._servers) > 1 else None,
        )
        source.on_ddl = self._cascades.schema_changed
        if self._fanout is not None:
            cascades, fanout = self._cascades, self._fanout

            def schema_changed(schema: object = None, query: object = "") -> None:
                cascades.schema_changed(schema, query)
                fanout.schema_changed(schema, query)

            source.on_ddl = schema_changed
        try:
            self._stream(source)
        finally:
            source.close()
            self._cascades.close()
            if self._fanout is not None:
                self._fanout.close()

    def _watched(self) -> list[tuple[str, str]]:
        return [(s.schema or self._database or "*", s.table) for s in self.registry.tables()]

    def _stream(self, source: BinlogSource) -> None:
        """Read, plan and submit to the lanes; save what every lane has settled.

        The reading thread never applies: it decodes the next changes while the
        lanes' UNLINK and bulk requests are in flight (binlog/lanes.py).
        """
        lanes = Lanes(
            self.applier,
            self.on_failure,
            policy=self.policy.lanes,
            merge_rows=self.policy.batch.max_rows,
            stopped=self._stop,
            sleep=self._sleep,
            backoff=self.policy.handoff_backoff.delay,
            keepalive=self._keep_lock,
        )
        self._lanes = lanes
        self._saved_changes = 0
        drained = False
        try:
            if self._fanout is not None:
                self._jobs = FanoutJobs(
                    self._fanout,
                    lanes,
                    self.store,
                    self.name,
                    policy=self.policy.fanout,
                    bury=self._bury_fanned,
                    backoff=self.policy.retry_backoff.delay,
                    stopped=self._stop,
                    keepalive=self._keep_lock,
                )
                self._jobs.load()
                self._jobs.start()
            self._read(source, lanes)
            # Stopping: let the lanes apply what was submitted, then keep whatever the
            # idle stream passed over.
            lanes.close(drain=True)
            drained = True
            lanes.check()
            lanes.submit((), source.resume_point, 0)
            self._save_settled(lanes, force=True)
        finally:
            if self._jobs is not None:
                self._jobs.close()  # its unsaved progress is redone by the next leader
                self._jobs = None
            if not drained:  # leadership lost or an error: settle nothing more
                lanes.close(drain=False)
            self._lanes = None

    def _read(self, source: BinlogSource, lanes: Lanes) -> None:
        batch_policy = self.policy.batch
        max_delay = batch_policy.max_delay_ms / 1000.0
        while not self._stop.is_set():
            lanes.check()
            self._track_applied(lanes, source)
            self._report(source)
            fanning_out = self._save_jobs()
            # Work in the lanes or a background fan-out, or settled but unsaved: come back
            # soon to save it.
            busy = lanes.ledger.owing() or self._unsaved(lanes) or fanning_out
            wait = self.policy.checkpoint_interval if busy else self.policy.idle_wait
            batch = source.poll(batch_policy.max_rows, wait)
            if batch:
                first = time.monotonic()
                while (
                    not batch_policy.adaptive
                    and len(batch) < batch_policy.max_rows
                    and not self._stop.is_set()
                ):
                    remaining = first + max_delay - time.monotonic()
                    if remaining <= 0:
                        break
                    more = source.poll(batch_policy.max_rows - len(batch), remaining)
                    if not more:
                        break
                    batch.extend(more)
                point, through = source.resume_point, source.read_through
                actions = self._plan(batch)
                if actions is None or not lanes.submit(
                    actions, point, len(batch), through=through, done=self._observer(batch)
                ):
                    return  # stopped before the batch was planned or queued: not saved
                self._submitted = point
                self.batches += 1
                self.rows += len(batch)
                metrics.inc("batches_total")
                metrics.observe("batch_rows", len(batch))
                self._save_settled(lanes, force=False)
                continue
            if source.table_statement is not None:
                if not self._table_statement(source, lanes):
                    return  # stopped before the purge was done: it is redone on restart
                continue
            now = time.monotonic()
            if self._save_settled(lanes, force=not lanes.ledger.owing()):
                continue
            point = source.resume_point
            if not lanes.ledger.owing() and self._idle_save_due(point, now - self._last_save):
                lanes.submit((), point, 0)
                self._save_settled(lanes, force=True)
            else:
                self._keep_lock()

    def _save_jobs(self) -> bool:
        """Save the background fan-outs' progress every ``checkpoint_interval`` (the
        checkpoint saves it too, first); whether a fan-out is running or unsaved."""
        jobs = self._jobs
        if jobs is None:
            return False
        jobs.check()
        if not jobs.unsaved:
            return jobs.pending > 0
        now = time.monotonic()
        if now - self._last_jobs_save < self.policy.checkpoint_interval:
            return True
        self._check_lock()
        self._last_jobs_save = now
        try:
            jobs.persist()
        except TransientError as exc:
            log.warning("cachesync: fan-out progress not saved (%s); will retry", exc)
        return jobs.unsaved or jobs.pending > 0

    def _keep_lock(self) -> None:
        """Ping the leader lock at most every ``lock_check_seconds`` (while idle, or
        waiting on a lane), so the server does not drop it as idle and a lost lock is
        noticed."""
        if time.monotonic() - self._last_lock_ping >= self.policy.lock_check_seconds:
            self._check_lock()

    def _check_lock(self) -> None:
        """Raise :class:`LeadershipLost` unless this sidecar still holds the lock (before
        every durable write: a deposed leader never moves the checkpoint)."""
        self.lock.check()
        self._last_lock_ping = time.monotonic()

    def _unsaved(self, lanes: Lanes) -> bool:
        """Whether changes have settled since the last save."""
        return lanes.ledger.settled()[1] > self._saved_changes

    def _save_settled(self, lanes: Lanes, *, force: bool) -> bool:
        """Save the settled point if changes settled since the last save, and the last
        save is ``checkpoint_interval`` old (or *force*); whether it saved."""
        point, changes = lanes.ledger.settled()
        if point is None or point == self.saved:
            return False
        fresh = changes > self._saved_changes
        due = time.monotonic() - self._last_save >= self.policy.checkpoint_interval
        if not force and not (fresh and due):
            return False
        self._check_lock()
        self._save(point)
        if self.saved == point:
            self._saved_changes = changes
        return True

    def _table_statement(self, source: BinlogSource, lanes: Lanes) -> bool:
        """Purge what the TRUNCATE/DROP/RENAME the stream is held at took away, then pass it.

        Runs once the lanes have settled (and the checkpoint saved) everything
        before the statement, and before the first change after it is read; the
        checkpoint moves past the statement only once the purge is done
        (binlog/tablepurge.py says why it is never handed off). False if stopped first.
        """
        held = source.table_statement
        assert held is not None
        while lanes.ledger.owing():
            if self._stop.wait(0.01):
                return False
            lanes.check()
            self._keep_lock()
        self._save_settled(lanes, force=True)
        attempts = 0
        while True:
            try:
                self.table_purge.purge(held)
                break
            except TransientError as exc:
                attempts += 1
                delay = self.policy.handoff_backoff.delay(attempts)
                log.error(
                    "cachesync: purge after %r not done (%s); the stream waits before it, "
                    "checkpoint kept at %s, retrying in %.1fs",
                    held.describe(80),
                    exc,
                    self.saved,
                    delay,
                )
                self._sleep(delay)
                if self._stop.is_set():
                    return False
                self._check_lock()
        source.pass_table_statement()
        lanes.submit((), source.resume_point, 0)  # nothing owed: settles at once
        self._save_settled(lanes, force=True)
        return True

    def _idle_save_due(self, point: ResumePoint, since_save: float) -> bool:
        saved = self.saved
        if saved is None or point == saved:
            return False
        if point.file != saved.file:
            return True
        return (
            since_save >= self.policy.idle_checkpoint_seconds
            and point.pos - saved.pos >= self.policy.idle_checkpoint_bytes
        )

    def _plan(self, batch: Sequence[RowChange]) -> list[Action] | None:
        """The batch's actions, with its poison changes buried (:mod:`cachesync.deadletters`).

        ``None`` when stopped while the dead-letter store refused them.
        """
        actions: list[Action] = []
        poison: list[PoisonChange] = []
        registry = self.registry
        batch = self.partial_images.complete(batch)
        for change in batch:
            spec: TableSpec | None = registry.get(change.schema, change.table)
            if spec is None:  # the source filters on the registry; a race with remove()
                continue
            try:
                actions.extend(self.partial_images.plan(change, spec))
            except SchemaError as exc:
                raise SchemaError(
                    f"{exc} (change at {change.position}: {change.op.value} of "
                    f"{change.schema}.{change.table}); the sidecar stops here and resumes "
                    "from this change once fixed",
                    **exc.context,
                ) from None
            except Exception as exc:
                if not is_poison(exc):
                    raise
                poison.append(PoisonChange.of(change, spec.model, spec.primary_key_columns(), exc))
                actions.extend(salvage_keys(change, spec))
        if self._cascades is not None:  # child rows a foreign key changed without a row event
            cascaded, buried = self._cascades.plan(batch, self.saved)
            actions.extend(cascaded)
            poison.extend(buried)
        jobs = []
        if self._fanout is not None:  # rows that embed the changed rows (binlog/fanout.py)
            fanned = self._fanout.plan(batch, actions)
            actions, jobs = fanned.actions, fanned.jobs
            poison.extend(fanned.poison)
        unknowable = self._unknowable.take()  # already logged by the partial-image step
        if (poison or unknowable) and not self._bury(poison, unknowable):
            return None
        if jobs and (self._jobs is None or not self._jobs.add(jobs)):
            return None  # stopped while waiting for room: the batch is replayed
        return actions

    def _bury(self, poison: Sequence[PoisonChange], unknowable: Sequence[PoisonChange]) -> bool:
        """Store both kinds of dead letter durably, waiting out a refusing store; False if
        stopped first. Only *poison* is reported here: the partial-image step logs its own."""
        attempts = 0
        while True:
            try:
                with self._bury_lock:
                    self.dead_letters.bury([*poison, *unknowable])
                report_poison(poison)
                return True
            except HandOffError as exc:
                attempts += 1
                delay = self.policy.handoff_backoff.delay(attempts)
                log.error(
                    "cachesync: %d dead letter(s) could not be stored (%s); "
                    "checkpoint kept at %s, retrying in %.1fs",
                    len(poison) + len(unknowable),
                    exc,
                    self.saved,
                    delay,
                )
                self._sleep(delay)
                if self._stop.is_set():
                    return False
                self._check_lock()

    def _bury_fanned(self, letters: Sequence[PoisonChange]) -> None:
        """The fan-out worker's dead letters (HandOffError: it retries the chunk)."""
        with self._bury_lock:
            self.dead_letters.bury(letters)
        report_poison(letters)

    @property
    def fanout_jobs(self) -> int:
        """Background fan-outs not finished yet (the ``fanout_jobs`` gauge)."""
        jobs = self._jobs
        return 0 if jobs is None else jobs.pending

    def _save(self, point: ResumePoint) -> None:
        try:
            if self._jobs is not None:  # the fan-outs made before *point* first
                self._jobs.persist()
            self.store.save(self.name, point.encode(), point.commit_time)
        except TransientError as exc:
            # The next save carries a later position; a crash meanwhile only repeats work.
            log.warning("cachesync: checkpoint not saved (%s); will retry", exc)
            return
        self.saved = point
        self._last_save = time.monotonic()
        metrics.inc("checkpoints_total")
