"""``cachesync listen``, ``cachesync reindex``, ``cachesync status``.

Registered by :mod:`cachesync.cli`; every setting is a flag (``--mysql-url``)
with its environment variable (``CACHESYNC_MYSQL_URL``) as fallback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any, TextIO

from ..cli import at_least, import_models, settings_from_args
from ..config import Settings
from ..connections import any_reachable
from ..errors import CacheSyncError, SourceError, redact_url
from ..registry import TableSpec, default_registry

__all__ = ["register"]

log = logging.getLogger("cachesync.cli")

#: The GIL switch interval of a ``cachesync listen`` process (CPython's default is 5 ms).
#: The reading thread decodes for as long as the binlog has bytes, and a lane thread whose
#: bulk response or UNLINK reply has arrived waits for it up to the whole interval, several
#: times per request (send, headers, body): measured with a search projection, the
#: document lane spent ~12 ms of each ~40 ms bulk request waiting, and a 50,000-row
#: catch-up went from 0.84-0.88x of ``helpers.bulk`` alone to 0.90-0.95x with 1 ms.
#: The process is the sidecar's own, so the setting touches nobody else's threads.
LISTEN_SWITCH_INTERVAL = 0.001


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Add the binlog subcommands to the ``cachesync`` parser."""
    listen = subparsers.add_parser(
        "listen",
        parents=[parent],
        help="run the binlog sidecar (invalidate Redis keys, update Elasticsearch)",
        description=(
            "Stream the MySQL/MariaDB binlog of the declared models' tables and apply every "
            "committed change to Redis and Elasticsearch, checkpointing after each batch. "
            "A second `listen` with the same --name waits as a standby and takes over when "
            "the leader dies. SIGTERM/SIGINT stop after the current batch."
        ),
    )
    listen.add_argument(
        "--reset-checkpoint",
        action="store_true",
        help=(
            "forget the saved checkpoint and start from the server's current position "
            "(recovery after the checkpointed binlog was purged; follow with `reindex`)"
        ),
    )
    listen.set_defaults(handler=_listen)

    reindex = subparsers.add_parser(
        "reindex",
        parents=[parent],
        help="rebuild a model's Elasticsearch projections from its table",
        description=(
            "Record the current binlog position, scan the model's table in primary-key "
            "order and write every document with that position's version, so changes the "
            "sidecar streams meanwhile win. Safe while `listen` runs."
        ),
    )
    reindex.add_argument("model", metavar="MODEL", help="model name, e.g. User or app.User")
    reindex.add_argument(
        "--batch-size",
        type=at_least(1),
        default=1000,
        help="rows per chunk and bulk request (1000)",
    )
    reindex.add_argument(
        "--no-prune",
        action="store_true",
        help="keep documents that no row produces (default: delete them when only this "
        "model writes to the index)",
    )
    reindex.add_argument("--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(handler=_reindex)

    status = subparsers.add_parser(
        "status",
        parents=[parent],
        help="checkpoint, server position, lag and leader of a pipeline",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_status)

    verify = subparsers.add_parser(
        "verify",
        parents=[parent],
        help="compare Elasticsearch and Redis with the tables: missing, stale and orphan entries",
        description=(
            "Render every row's projection and keys with the same code the sidecar uses and "
            "compare them with the index and with Redis (a key no row renders any more "
            "should be gone). Prints 'N of M consistent'. Exit status 1 when something "
            "differs (0 when --repair fixed all of it), 2 when a model could not be checked "
            "or has nothing to check. Orphan documents are looked for only without --sample, "
            "and only make sense when one model writes the index; orphan keys of a sample "
            "are looked up by the fields the key spells."
        ),
    )
    verify.add_argument("models", nargs="*", metavar="MODEL", help="models (default: all)")
    verify.add_argument("--sample", type=at_least(1), help="check N random rows instead of all")
    verify.add_argument(
        "--loader",
        metavar="MODULE:FUNCTION",
        help="what the read path caches under a key: FUNCTION(template, row) -> bytes, or None "
        "when it caches nothing there (row keyed by attribute, template.text its key "
        "template); cached values are compared with it. Without it only presence is checked",
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="write what differs at the current binlog position's version (newer changes win); "
        "delete stale and orphan keys",
    )
    verify.set_defaults(handler=_verify)


def _require_mysql(settings: Settings) -> str:
    return settings.require("mysql_url", "for the binlog commands")


#: How the binlog commands name the database in a connection error (never with the password).
_MYSQL = "MySQL (mysql_url / CACHESYNC_MYSQL_URL)"


def _model_error(exc: BaseException, spec: TableSpec, database: str | None, es_url: str) -> str:
    """One line for what went wrong reading *spec*'s table or writing its index.

    A missing table (a declared model whose migration never ran, a wrong
    ``__tablename__``) is PyMySQL's ``ProgrammingError`` 1146 inside reindex or
    verify; it is named with the model and what to do, like every other error.
    """
    import pymysql

    from . import server

    table = f"{spec.schema or database or '?'}.{spec.table}"
    code = exc.context.get("code") if isinstance(exc, CacheSyncError) else None
    if isinstance(exc, pymysql.MySQLError):
        code = server.error_code(exc)
    if code == 1146:  # ER_NO_SUCH_TABLE, raw or already translated
        return (
            f"table {table} of model {spec.model} does not exist: create it (run the "
            "migrations) or fix the model's table name, and check mysql_url's database"
        )
    if isinstance(exc, pymysql.MySQLError):
        return str(server.translate(exc, f"reading table {table} of model {spec.model}"))
    if isinstance(exc, CacheSyncError):
        return str(exc)
    if type(exc).__module__.startswith(("elasticsearch", "elastic_transport")):
        return (
            f"Elasticsearch at {redact_url(es_url)} (es_url / CACHESYNC_ES_URL) failed for the "
            f"index of {spec.model}: {type(exc).__name__}: {redact_url(str(exc))[:300]}"
        )
    raise exc


def _listen(args: argparse.Namespace) -> int:
    from .sidecar import Sidecar

    settings = settings_from_args(args)
    _require_mysql(settings)
    import_models(settings)
    sidecar = Sidecar.from_settings(settings, reset_checkpoint=args.reset_checkpoint)
    sys.setswitchinterval(min(sys.getswitchinterval(), LISTEN_SWITCH_INTERVAL))
    health = _serve_health(settings, sidecar)
    log.info(
        "cachesync listen: pipeline %r (server_id %d%s), models %s, mysql %s, redis %s, es %s, "
        "batch %s",
        settings.name,
        sidecar.server_id,
        "" if settings.server_id is not None else ", derived from name and database",
        ", ".join(s.model for s in default_registry.tables()),
        redact_url(settings.mysql_url or ""),
        redact_url(settings.redis_url or "-"),
        redact_url(settings.es_url or "-"),
        settings.batch,
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "cachesync: %s received, stopping after the current batch", signal.Signals(signum).name
        )
        sidecar.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        sidecar.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if health is not None:
            health.close()
    log.info(
        "cachesync: stopped after %d batch(es), %d change(s); checkpoint %s",
        sidecar.batches,
        sidecar.rows,
        sidecar.saved,
    )
    return 0


def _serve_health(settings: Settings, sidecar: Any) -> Any:
    """``--metrics-port``: /metrics, /healthz and /readyz of this sidecar (else ``None``)."""
    from .. import metrics
    from ..health import HealthServer, Probe

    if settings.metrics_port is None:
        return None
    metrics.gauge_function("source_lag_seconds", sidecar.lag_seconds)
    metrics.gauge_function("leader", lambda: 1.0 if sidecar.leading.is_set() else 0.0)
    metrics.gauge_function("fanout_jobs", lambda: float(sidecar.fanout_jobs))
    if settings.outbox_database is not None:
        from ..outbox.backlog import OutboxBacklog

        backlog = OutboxBacklog.from_url(settings.outbox_database)
        metrics.gauge_function("outbox_backlog", backlog.pending)
        # Without a retry consumer in this process, what waits for a retry is what the
        # sidecar parked in the outbox table.
        metrics.gauge_function("retry_backlog", backlog.failed)
    max_lag = settings.ready_max_lag
    return HealthServer.from_settings(
        settings, Probe(sidecar.heartbeat, lambda: sidecar.ready(max_lag))
    )


class _ProgressBar:
    """A one-line progress bar on a terminal, periodic lines otherwise."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        final = done >= total
        if not final and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6)
        share = done / total if total else 1.0
        width = 30
        bar = "#" * int(share * width)
        line = (
            f"{self.label} [{bar:<{width}}] {done}/{total} rows ({share:.0%}, {rate:,.0f} rows/s)"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _reindex(args: argparse.Namespace) -> int:
    from ..connections import elasticsearch_client, mysql_params
    from ..sinks import SearchSink
    from . import server
    from .reindex import reindex

    settings = settings_from_args(args)
    params = mysql_params(_require_mysql(settings))
    import_models(settings)
    spec = default_registry.for_model(args.model)
    search = SearchSink(elasticsearch_client(settings), chunk_size=args.batch_size)
    conn = server.connect(params, what=_MYSQL)
    try:
        report = reindex(
            spec,
            connection=conn,
            search=search,
            registry=default_registry,
            database=params.get("database"),
            batch_size=args.batch_size,
            prune=not args.no_prune,
            progress=None if args.quiet else _ProgressBar(f"reindex {spec.model}", sys.stderr),
        )
    except Exception as exc:
        message = _model_error(exc, spec, params.get("database"), settings.es_url or "")
        raise SourceError(f"reindex {spec.model}: {message}") from None
    finally:
        conn.close()
    print(report.summary())
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..connections import elasticsearch_client, mysql_params, redis_client
    from ..errors import ConfigurationError
    from ..verify import consistency, table_rows, verify_index, verify_keys
    from . import server
    from .positions import current_position

    settings = settings_from_args(args)
    params = mysql_params(_require_mysql(settings))
    import_models(settings)
    with_redis = settings.redis_url is not None
    specs = (
        [default_registry.for_model(m) for m in args.models]
        if args.models
        else default_registry.tables()
    )
    loader = _loader(args.loader) if args.loader else None
    # Connected first: an unreachable database is named whatever the declarations say.
    conn = server.connect(params, what=_MYSQL)
    try:
        specs = _verifiable(specs, named=bool(args.models), with_redis=with_redis)
    except ConfigurationError:
        conn.close()
        raise
    es = elasticsearch_client(settings) if any(s.projections for s in specs) else None
    redis = redis_client(settings) if with_redis and any(s.key_templates for s in specs) else None
    checked = drift = repaired = broken = 0
    try:
        # Recorded BEFORE the rows are read, as reindex does: repairs carry this
        # version, so anything the sidecar streams meanwhile is newer and wins.
        repair_at = current_position(conn) if args.repair else None
        for spec in specs:
            try:
                conn.commit()  # a fresh snapshot per model
                rows = list(table_rows(conn, spec, sample=args.sample))
                reports: list[Any] = [
                    verify_index(
                        conn, es, spec, p, sample=args.sample, repair_at=repair_at, rows=rows
                    )
                    for p in spec.projections
                ]
                if redis is not None and spec.key_templates:
                    reports.append(
                        verify_keys(
                            conn,
                            redis,
                            spec,
                            sample=args.sample,
                            loader=loader,
                            repair=args.repair,
                            others=default_registry.tables(),
                            rows=rows,
                        )
                    )
            except Exception as exc:
                # One broken model (a missing table...) must not hide the others' answers.
                message = _verify_error(exc, spec, params.get("database"), settings)
                print(f"{spec.model} -> error: {message}")
                broken += 1
                continue
            for report in reports:
                print(f"{spec.model} -> {report.summary()}")
                for label in ("missing", "stale", "orphans", "ahead"):
                    ids = getattr(report, label, [])
                    if ids:
                        print(f"  {label}: {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}")
                checked += report.checked
                drift += report.drift
                repaired += report.repaired
    finally:
        conn.close()
        if es is not None:
            es.close()
        if redis is not None:
            redis.close()
    print(consistency(checked - drift, checked))
    if args.repair and drift:
        print(f"{repaired} of {drift} repaired" + ("" if repaired == drift else "; verify again"))
    if broken:
        raise SourceError(
            f"{broken} model(s) could not be verified (see above); the others were checked"
        )
    return 0 if drift == 0 or (args.repair and repaired == drift) else 1


def _loader(text: str) -> Any:
    """The ``--loader MODULE:FUNCTION`` callable; :class:`ConfigurationError` naming what is wrong."""
    import importlib

    from ..errors import ConfigurationError

    module, _, name = text.partition(":")
    if not module or not name:
        raise ConfigurationError(
            f"--loader {text!r}: expected MODULE:FUNCTION, e.g. myapp.cache:load"
        )
    try:
        found = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"--loader {text!r}: no module named {exc.name!r}") from None
    except AttributeError:
        raise ConfigurationError(f"--loader {text!r}: module {module} has no {name!r}") from None
    except Exception as exc:
        raise ConfigurationError(
            f"--loader {text!r}: importing {module} raised {type(exc).__name__}: {exc}"
        ) from None
    if not callable(found):
        raise ConfigurationError(f"--loader {text!r}: {name} is not a function")
    return found


def _verifiable(specs: list[TableSpec], *, named: bool, with_redis: bool) -> list[TableSpec]:
    """The models verify can check; :class:`ConfigurationError` when a named one (or all) has nothing."""
    from ..errors import ConfigurationError

    idle = [s for s in specs if not s.projections and not (s.key_templates and with_redis)]
    if named and idle:
        reasons = [
            f"{s.model} declares keys but redis_url (--redis-url / CACHESYNC_REDIS_URL) is not set"
            if s.key_templates
            else f"{s.model} declares no search projection and no keys"
            for s in idle
        ]
        raise ConfigurationError(f"nothing to verify: {'; '.join(reasons)}")
    specs = [s for s in specs if s not in idle]
    if not specs:
        raise ConfigurationError(
            "nothing to verify: no model declares a search projection"
            + (
                " or cache keys"
                if with_redis
                else ", and redis_url (--redis-url / CACHESYNC_REDIS_URL) is not set for keys"
            )
            + " (--models / CACHESYNC_MODELS names the modules that declare them)"
        )
    return specs


def _verify_error(
    exc: BaseException, spec: TableSpec, database: str | None, settings: Settings
) -> str:
    """:func:`_model_error`, and Redis failures named with the setting."""
    if type(exc).__module__.startswith("redis"):
        return (
            f"Redis at {redact_url(settings.redis_url or '')} (redis_url / CACHESYNC_REDIS_URL) "
            f"failed for the keys of {spec.model}: {type(exc).__name__}: "
            f"{redact_url(str(exc))[:300]}"
        )
    return _model_error(exc, spec, database, settings.es_url or "")


def _status(args: argparse.Namespace) -> int:
    from ..connections import mysql_params
    from .checkpoint import checkpoint_store
    from .status import collect_status

    settings = settings_from_args(args)
    url = _require_mysql(settings)
    store = checkpoint_store(settings.checkpoint_url, url)
    try:
        report = collect_status(mysql_params(url), store, settings.name)
    finally:
        store.close()
    retry_path = _retry_path_status(settings)
    if args.json:
        print(json.dumps({**report.as_dict(), **retry_path}, sort_keys=True))
    else:
        print("\n".join(report.lines()))
        print(f"outbox       {retry_path['outbox']}")
        print(f"dead letters {retry_path['dead_letters']}")
    return 0


def _retry_path_status(settings: Settings) -> dict[str, Any]:
    """Outbox rows per state and unredriven dead letters; a reason string where unknown.

    ``status`` must answer even while Kafka or the outbox database is down, so
    each part fails on its own into a short explanation.
    """
    from ..errors import CacheSyncError, TransientError

    found: dict[str, Any] = {"outbox": "not configured", "dead_letters": "not configured"}
    if settings.outbox_database is not None:
        try:
            from ..connections import sql_engine
            from ..outbox.store import OutboxStore

            engine = sql_engine(settings.outbox_database, timeout=3)
            try:
                found["outbox"] = OutboxStore(engine).counts()
            finally:
                engine.dispose()
        except (CacheSyncError, ImportError) as exc:
            found["outbox"] = f"unavailable ({exc})"
        except Exception as exc:  # a missing table or database: say so, keep answering
            found["outbox"] = f"unavailable ({type(exc).__name__})"
    if settings.kafka_bootstrap is not None:
        try:
            from ..kafka.dead_letter import list_dead_letters

            # kafka-python's bootstrap ignores short timeouts (30 s per client): ask TCP first.
            if not any_reachable(settings.kafka_bootstrap, timeout=2.0):
                raise TransientError(f"no Kafka broker reachable at {settings.kafka_bootstrap}")

            letters = list_dead_letters(
                settings.kafka_bootstrap, settings.resolved_dead_letter_topic, timeout=3
            )
            found["dead_letters"] = sum(1 for d in letters if d.redriven_at is None)
        except (CacheSyncError, ImportError) as exc:
            found["dead_letters"] = f"unavailable ({exc})"
    return found
