"""What ``cachesync listen`` plugs into a :class:`~cachesync.binlog.sidecar.Sidecar`.

The sinks the declarations need, the retry path and the dead-letter store, each
chosen from :class:`~cachesync.config.Settings`: Kafka when it is configured,
the outbox table (``outbox_url``, else ``mysql_url``) otherwise, the log when
neither is.
"""

from __future__ import annotations

from ..apply import Applier, FailureHandler, LoggingFailureHandler
from ..config import Settings
from ..deadletters import DeadLetterStore, LoggingDeadLetterStore
from ..registry import Registry

__all__ = ["build_applier", "default_dead_letter_store", "default_failure_handler", "retry_path"]


def build_applier(settings: Settings, registry: Registry) -> Applier:
    """An :class:`Applier` with the sinks the declarations need, checked at start-up."""
    from ..connections import elasticsearch_client, needed_sinks, redis_client
    from ..sinks import RedisSink, SearchSink

    needs_redis, needs_search = needed_sinks(settings, registry, command="cachesync listen")
    redis = (
        RedisSink(redis_client(settings), cluster=settings.redis_cluster) if needs_redis else None
    )
    search = SearchSink(elasticsearch_client(settings)) if needs_search else None
    return Applier(redis, search)


def default_failure_handler(settings: Settings) -> FailureHandler:
    """The retry queue: Kafka when ``kafka_bootstrap`` is set, with the outbox table
    (``outbox_url``, else ``mysql_url``) as its fallback or, without Kafka, as the
    whole retry path (``cachesync retry`` retries it); log-and-refuse with neither."""
    if settings.kafka_bootstrap is None and settings.outbox_database is None:
        return LoggingFailureHandler()
    from ..kafka import RetryQueue

    handler: FailureHandler = RetryQueue.from_settings(settings, component="sidecar")
    return handler


def retry_path(settings: Settings) -> str:
    """Where handed-off actions go, for the log line that says they went there."""
    if settings.kafka_bootstrap is not None:
        return f"the retry path (Kafka topic {settings.resolved_retry_topic})"
    if settings.outbox_database is not None:
        return "the retry path (the outbox table; `cachesync retry` retries it)"
    return "the retry path"


def default_dead_letter_store(settings: Settings) -> DeadLetterStore:
    """Poison changes go to the outbox table (``outbox_url``, else ``mysql_url``), else to the log."""
    database = settings.outbox_database
    if database is None:
        return LoggingDeadLetterStore()
    from ..outbox.dead_letters import OutboxDeadLetterStore
    from ..outbox.store import OutboxStore

    return OutboxDeadLetterStore(OutboxStore.from_url(database))
