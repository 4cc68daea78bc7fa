"""``cachesync retry``, ``cachesync relay`` and ``cachesync dlq list|redrive``.

* ``retry``: the retry consumer (:class:`~cachesync.kafka.RetryConsumer`), plus an
  :class:`~cachesync.outbox.OutboxRelay` thread when an outbox database is
  configured (``outbox_url`` or ``mysql_url``), so failures parked while Kafka
  was down are picked up by the same service. SIGTERM/SIGINT stop it after the
  current batch; finished offsets are committed, waiting ones replayed later.
* ``relay``: the outbox relay alone; on PostgreSQL/SQLite (no binlog) this is
  the change source.
* ``dlq list``: one line per dead letter (``--json`` for JSON lines).
* ``dlq redrive``: send dead letters back to the retry topic; idempotent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import threading
from typing import Any

from ..cli import at_least, positive_float
from ..connections import needed_sinks
from ..errors import CacheSyncError, ConfigurationError, TransientError
from ..health import HealthServer, Heartbeat, Probe, TurningEvent
from ..policies import RelayPolicy, RetryPolicy
from ..registry import default_registry

__all__ = ["RETRY_POLICIES", "register"]

log = logging.getLogger("cachesync.kafka")

#: ``--retry-policy`` presets.
RETRY_POLICIES = {
    "fast": RetryPolicy.FAST,
    "default": RetryPolicy.DEFAULT,
    "patient": RetryPolicy.PATIENT,
}


def _iso(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-11-01T10:00:00Z, got {text!r}"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Add the retry-path subcommands to the ``cachesync`` parser."""
    policy_help = "retry schedule: " + ", ".join(
        f"{name} ({p.attempts} attempts, {p.min_backoff:g}-{p.max_backoff:g}s)"
        for name, p in RETRY_POLICIES.items()
    )

    retry = subparsers.add_parser(
        "retry",
        parents=[parent],
        help="run the Kafka retry consumer (and the outbox relay)",
        description=(
            "Consume the retry topic: apply failed actions to Redis/Elasticsearch with "
            "backoff, keep per-key order, re-read documents from the database, and send "
            "what cannot be applied to the dead-letter topic. Also relays the outbox table."
        ),
    )
    retry.add_argument("--group", help="consumer group (default cachesync-retry.<name>)")
    retry.add_argument(
        "--retry-policy", choices=sorted(RETRY_POLICIES), default="default", help=policy_help
    )
    retry.add_argument(
        "--no-relay", action="store_true", help="do not run the outbox relay in this process"
    )
    retry.add_argument(
        "--partitions",
        type=at_least(1),
        default=6,
        help="partitions of the retry/dead-letter topics when they must be created (default 6)",
    )
    retry.add_argument(
        "--session-timeout-ms",
        type=at_least(1000),
        default=10000,
        help="consumer group session timeout: how soon a dead consumer's partitions move "
        "(default 10000; the heartbeat is a third of it)",
    )
    retry.add_argument(
        "--no-create-topics",
        action="store_true",
        help="never create missing topics (they must exist)",
    )
    retry.set_defaults(handler=_run_retry)

    relay = subparsers.add_parser(
        "relay",
        parents=[parent],
        help="run the outbox relay alone",
        description=(
            "Poll the outbox table and apply pending rows: intents written in the "
            "application's transactions, and failures parked while Kafka was down. On "
            "databases without a binlog (PostgreSQL, SQLite) this is the change source."
        ),
    )
    relay.add_argument("--once", action="store_true", help="drain what is pending, then exit")
    relay.add_argument("--batch-size", type=at_least(1), default=200, help="rows per transaction")
    relay.add_argument(
        "--poll-interval", type=positive_float, default=0.5, help="seconds between polls when idle"
    )
    relay.add_argument(
        "--retry-policy", choices=sorted(RETRY_POLICIES), default="default", help=policy_help
    )
    relay.set_defaults(handler=_run_relay)

    dlq = subparsers.add_parser(
        "dlq",
        help="inspect and redrive dead letters",
        description="Dead letters: retry messages that exhausted their retries or failed permanently.",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for name, helptext in (
        ("list", "print dead letters: key, action, attempts, error, time"),
        ("redrive", "send dead letters back to the retry topic (attempts reset; idempotent)"),
    ):
        sub = dlq_commands.add_parser(name, parents=[parent], help=helptext, description=helptext)
        sub.add_argument(
            "--since", type=_iso, help="only dead letters dead at or after this ISO 8601 time"
        )
        sub.add_argument("--key", help="only this key (glob patterns such as 'user:*' work)")
        if name == "list":
            sub.add_argument("--json", action="store_true", help="one JSON object per line")
            sub.set_defaults(handler=_run_dlq_list)
        else:
            sub.add_argument(
                "--include-undecodable",
                action="store_true",
                help="also republish undecodable records, byte for byte (after a consumer fix)",
            )
            sub.add_argument(
                "--dry-run", action="store_true", help="say what would be redriven; send nothing"
            )
            sub.set_defaults(handler=_run_dlq_redrive)


def _settings(args: argparse.Namespace) -> Any:
    from ..cli import import_models, settings_from_args

    settings = settings_from_args(args)
    import_models(settings)
    return settings


def _require_kafka(settings: Any) -> str:
    """``kafka_bootstrap``, checked to accept a TCP connection within a few seconds.

    kafka-python needs about 30 s to give up on an address with nothing behind
    it, then raises its own error; asking TCP first turns a typo or a stopped
    broker into one line naming the setting.
    """
    from ..connections import any_reachable

    bootstrap = str(settings.require("kafka_bootstrap", "for the retry path"))
    if not any_reachable(bootstrap, timeout=3.0):
        raise TransientError(
            f"no Kafka broker at {bootstrap} (kafka_bootstrap / CACHESYNC_KAFKA_BOOTSTRAP) "
            "accepted a connection: is it running, and is the address right?",
            setting="kafka_bootstrap",
        )
    return bootstrap


def _stop_on_signals(heartbeat: Heartbeat | None = None) -> threading.Event:
    """The loop's stop event, set by SIGTERM/SIGINT; a :class:`TurningEvent` beating
    *heartbeat* (``/healthz``) every time the loop looks at it."""
    stop: threading.Event = TurningEvent(heartbeat) if heartbeat is not None else threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("cachesync: signal %d, stopping after the current batch", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def _serve_health(settings: Any, heartbeat: Heartbeat, retry_backlog: Any = None) -> Any:
    """``--metrics-port``: /metrics, /healthz, /readyz of a retry consumer or relay.

    Both are ready whenever their loop turns: neither has a standby state, and a
    sink they cannot reach is what the retry path is for.
    """
    from .. import metrics

    if settings.metrics_port is None:
        return None
    if settings.outbox_database is not None:
        from ..outbox.backlog import OutboxBacklog

        backlog = OutboxBacklog.from_url(settings.outbox_database)
        metrics.gauge_function("outbox_backlog", backlog.pending)
        metrics.gauge_function("retry_backlog", retry_backlog or backlog.failed)
    elif retry_backlog is not None:
        metrics.gauge_function("retry_backlog", retry_backlog)
    return HealthServer.from_settings(settings, Probe(heartbeat))


def _build_relay(settings: Any, policy: RelayPolicy) -> Any:
    from ..outbox import OutboxRelay
    from .retry_queue import RetryQueue

    handoff = (
        RetryQueue.from_settings(settings, component="relay", outbox=False)
        if settings.kafka_bootstrap
        else None
    )
    relay = OutboxRelay.from_settings(settings, handoff=handoff, policy=policy)
    try:
        relay.store.create_table()
    except CacheSyncError as exc:  # no CREATE privilege: the table must already exist
        log.debug("cachesync relay: not creating the outbox table: %s", exc)
    return relay


def _run_retry(args: argparse.Namespace) -> int:
    from .client import ensure_topics
    from .dead_letter import marker_topic
    from .retry_consumer import RetryConsumer

    settings = _settings(args)
    policy = RETRY_POLICIES[args.retry_policy]
    if settings.kafka_bootstrap is None and settings.outbox_database is not None:
        return _retry_from_outbox(settings, policy)
    bootstrap = _require_kafka(settings)
    needed_sinks(settings, default_registry, command="cachesync retry", strict_search=False)
    if not args.no_create_topics:
        ensure_topics(
            bootstrap,
            {
                settings.resolved_retry_topic: {},
                settings.resolved_dead_letter_topic: {},
                marker_topic(settings.resolved_dead_letter_topic): {"cleanup.policy": "compact"},
            },
            partitions=args.partitions,
        )
    heartbeat = Heartbeat()
    stop = _stop_on_signals(heartbeat)
    relay_thread: threading.Thread | None = None
    if not args.no_relay and settings.outbox_database:
        relay = _build_relay(settings, RelayPolicy(retry=policy))
        relay_thread = threading.Thread(
            target=relay.run, args=(stop,), name="cachesync-outbox-relay", daemon=True
        )
        relay_thread.start()
    session = args.session_timeout_ms
    consumer = RetryConsumer.from_settings(
        settings,
        policy=policy,
        group_id=args.group,
        consumer_options={
            "session_timeout_ms": session,
            "heartbeat_interval_ms": max(100, session // 3),
            "max_poll_interval_ms": max(session, 300000),
        },
    )
    health = _serve_health(settings, heartbeat, consumer.pending)
    log.info(
        "cachesync retry: consuming %s as %s (dead letters to %s)%s",
        settings.resolved_retry_topic,
        consumer.group_id,
        settings.resolved_dead_letter_topic,
        ", relaying the outbox" if relay_thread else "",
    )
    try:
        consumer.run(stop)
    finally:
        stop.set()
        if relay_thread is not None:
            relay_thread.join(timeout=30)
        if health is not None:
            health.close()
    return 0


def _retry_from_outbox(settings: Any, policy: RetryPolicy) -> int:
    """``cachesync retry`` without Kafka: the failures the sidecar and the fast path parked
    in the outbox table are the retry queue. The relay retries them on *policy*'s schedule
    and moves them to the dead state after its last attempt (``cachesync dlq list``), so a
    team without Kafka runs the same two commands as one with it."""
    needed_sinks(settings, default_registry, command="cachesync retry", strict_search=False)
    relay = _build_relay(settings, RelayPolicy(retry=policy))
    log.info(
        "cachesync retry: no kafka_bootstrap: retrying the failures parked in the outbox "
        "table %s (%d attempts, then dead letters there: `cachesync dlq list`)",
        relay.store.name,
        policy.attempts,
    )
    return _run_relay_loop(settings, relay)


def _run_relay_loop(settings: Any, relay: Any) -> int:
    """Run *relay* until a signal stops it, with its health endpoint served meanwhile."""
    heartbeat = Heartbeat()
    health = _serve_health(settings, heartbeat)
    try:
        relay.run(_stop_on_signals(heartbeat))
    finally:
        if health is not None:
            health.close()
    return 0


def _run_relay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.require("outbox_url", "for the outbox relay", fallback="mysql_url")
    needed_sinks(settings, default_registry, command="cachesync relay", strict_search=False)
    relay = _build_relay(
        settings,
        RelayPolicy(
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            retry=RETRY_POLICIES[args.retry_policy],
        ),
    )
    if args.once:
        total = 0
        while True:
            report = relay.run_once()
            total += report.done
            if report.claimed < relay.batch_size or report.done == 0:
                break
        print(f"relayed {total} outbox row(s); pending: {relay.store.counts()['pending']}")
        return 0
    return _run_relay_loop(settings, relay)


def _dead_letter_stores(settings: Any) -> tuple[str | None, Any]:
    """The Kafka dead-letter topic's bootstrap and the outbox store, whichever are configured."""
    store = None
    if settings.outbox_database:
        from ..outbox.store import OutboxStore

        store = OutboxStore.from_url(settings.outbox_database)
    if settings.kafka_bootstrap is not None:
        _require_kafka(settings)
    if settings.kafka_bootstrap is None and store is None:
        raise ConfigurationError(
            "dead letters live in the Kafka dead-letter topic (kafka_bootstrap / "
            "CACHESYNC_KAFKA_BOOTSTRAP) or in the outbox table (outbox_url or mysql_url); "
            "set one of them",
            setting="kafka_bootstrap",
        )
    return settings.kafka_bootstrap, store


def _print_letter(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(line, default=str))
        return
    redriven = f"  redriven {line['redriven_at']}" if line.get("redriven_at") else ""
    attempts = line["attempts"] if line["attempts"] is not None else "-"
    print(
        f"{line['dead_at'] or '-':24} {line['key'] or '-'}  {line['reason']}"
        f"  attempts={attempts}  action={line['action'] or '-'}  error={line['error']}"
        f"  [{line['dlq']}]{redriven}"
    )


def _run_dlq_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bootstrap, store = _dead_letter_stores(settings)
    where = []
    if bootstrap is not None:
        from .dead_letter import list_dead_letters

        letters = list_dead_letters(
            bootstrap, settings.resolved_dead_letter_topic, since=args.since, key=args.key
        )
        for stored in letters:
            _print_letter(stored.summary(), args.json)
        where.append(f"{len(letters)} dead letter(s) in {settings.resolved_dead_letter_topic}")
    if store is not None:
        from ..outbox.dead_letters import list_outbox_dead_letters

        try:
            rows = list_outbox_dead_letters(store, since=args.since, key=args.key)
        except CacheSyncError as exc:  # no outbox table there (yet): the topic still counts
            if bootstrap is None:
                raise
            where.append(f"outbox table {store.name} unavailable ({exc})")
        else:
            for line in rows:
                _print_letter(line, args.json)
            where.append(f"{len(rows)} in the outbox table {store.name}")
    if not args.json:
        print(", ".join(where))
    return 0


def _run_dlq_redrive(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bootstrap, store = _dead_letter_stores(settings)
    verb = "would redrive" if args.dry_run else "redrove"
    if bootstrap is not None:
        from .dead_letter import redrive

        report = redrive(
            bootstrap,
            dead_letter_topic=settings.resolved_dead_letter_topic,
            retry_topic=settings.resolved_retry_topic,
            since=args.since,
            key=args.key,
            include_undecodable=args.include_undecodable,
            dry_run=args.dry_run,
        )
        print(
            f"{verb} {len(report.keys) if args.dry_run else report.redriven} dead letter(s) "
            f"to {settings.resolved_retry_topic}; matched {report.matched}, "
            f"already redriven {report.already_redriven}, undecodable {report.undecodable}"
            + ("" if args.include_undecodable or not report.undecodable else " (skipped)")
        )
    if store is not None:
        from ..outbox.dead_letters import redrive_outbox

        try:
            done = redrive_outbox(
                store, default_registry, since=args.since, key=args.key, dry_run=args.dry_run
            )
        except CacheSyncError as exc:  # no outbox table there (yet): the topic still counts
            if bootstrap is None:
                raise
            print(f"outbox table {store.name} unavailable ({exc})")
            return 0
        print(
            f"{verb} {done.matched if args.dry_run else done.redriven} dead row(s) of the "
            f"outbox table {store.name} (the relay applies them); still poison {done.still_poison}"
        )
    return 0
