"""Start-up reachability checks of the services a sidecar needs, said loudly, never fatal.

A sidecar whose Redis URL points at nothing used to start quietly and hand
every change to Kafka: correct, but an operator learned of the typo only from
a growing retry topic. :func:`check_services` asks each service the
declarations and settings need (Redis when keys or ``invalidates=`` are
declared, Elasticsearch when projections are, Kafka when ``kafka_bootstrap``
is set) one cheap question with a short timeout and logs a WARNING per
unreachable one, naming the setting and the redacted URL.

It does not refuse to start: services restart in any order, and the sidecar
is built to wait out outages (retry path, backpressure). MySQL is not checked
here: the sidecar connects to it first thing and says so itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import Settings, env_name
from ..errors import redact_url

__all__ = ["Unreachable", "check_services"]

log = logging.getLogger("cachesync.sidecar")


@dataclass(frozen=True)
class Unreachable:
    """A service that did not answer: which setting points at it, where, and why."""

    service: str
    setting: str
    url: str
    reason: str
    consequence: str

    def message(self) -> str:
        return (
            f"{self.service} at {redact_url(self.url)} ({self.setting} / "
            f"{env_name(self.setting)}) is unreachable: {redact_url(self.reason)}; "
            f"starting anyway: {self.consequence}"
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def check_services(
    settings: Settings, *, needs_redis: bool, needs_search: bool, timeout: float = 2.0
) -> list[Unreachable]:
    """Ask each needed service one question; log and return those that did not answer."""
    from ..connections import any_reachable, elasticsearch_client, redis_client

    found: list[Unreachable] = []
    if needs_redis and settings.redis_url is not None:
        quick = settings.replace(
            redis_connect_timeout=min(settings.redis_connect_timeout, timeout),
            redis_socket_timeout=min(settings.redis_socket_timeout, timeout),
        )
        try:
            client = redis_client(quick)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure means "not usable now"; say which
            found.append(
                Unreachable(
                    "Redis",
                    "redis_url",
                    settings.redis_url,
                    _reason(exc),
                    "key deletes go to the retry path until it answers",
                )
            )
    if needs_search and settings.es_url is not None:
        try:
            es = elasticsearch_client(settings)
            try:
                es.options(request_timeout=timeout).info()
            finally:
                es.close()
        except Exception as exc:
            found.append(
                Unreachable(
                    "Elasticsearch",
                    "es_url",
                    settings.es_url,
                    _reason(exc),
                    "document writes go to the retry path until it answers",
                )
            )
    if settings.kafka_bootstrap is not None and not any_reachable(
        settings.kafka_bootstrap, timeout=timeout
    ):
        found.append(
            Unreachable(
                "Kafka",
                "kafka_bootstrap",
                settings.kafka_bootstrap,
                "no broker accepted a TCP connection",
                "failed actions wait in the outbox table (outbox_url, else mysql_url) or "
                "hold the checkpoint until it answers",
            )
        )
    for problem in found:
        log.warning("cachesync: %s", problem.message())
    return found
