"""Settings: one name per setting, shared by every way of configuring cachesync.

=====================  ===========================  ======================
``configure()`` / CLI  environment variable          Django ``CACHESYNC``
=====================  ===========================  ======================
``redis_url``          ``CACHESYNC_REDIS_URL``       ``"REDIS_URL"``
...                    ``CACHESYNC_<NAME>``          ``"<NAME>"``
=====================  ===========================  ======================

The command-line flag of a setting is ``--<name with dashes>`` (``--redis-url``).
A TOML file (``--config cachesync.toml`` or ``CACHESYNC_CONFIG``) holds the same
names at its top level; environment variables override it, flags override both.
An invalid value fails at start-up with a :class:`ConfigurationError` naming the
setting and the expected form; values that contain passwords are redacted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError, redact_url
from .policies import BatchPolicy, XaHoldPolicy

__all__ = [
    "SERVER_ID_MAX",
    "SERVER_ID_MIN",
    "Settings",
    "configure",
    "derive_server_id",
    "env_name",
    "get_settings",
    "load_config_file",
    "reset_settings",
]

ENV_PREFIX = "CACHESYNC_"


def env_name(name: str) -> str:
    """``redis_url`` -> ``CACHESYNC_REDIS_URL``."""
    return ENV_PREFIX + name.upper()


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


#: The range of derived ``server_id`` values. Real replicas are numbered from 1
#: upwards by hand (1, 2, 101...) or from IPv4 addresses (above 2**31 for most
#: private ranges); the upper half of the signed 32-bit range is clear of both.
SERVER_ID_MIN = 2**30
SERVER_ID_MAX = 2**31 - 1


def derive_server_id(name: str, database: str) -> int:
    """The default replica id of pipeline *name* on *database*: stable across restarts and hosts.

    Two readers with the same id on one server kick each other off (error 4052),
    so a fixed default made every second pipeline kill the first. A hash of the
    pipeline name and the database differs between pipelines, yet stays the same
    for a pipeline's standby, which is what a standby needs: when it takes over,
    the server drops any half-dead connection of the old leader with the same id.
    """
    digest = hashlib.sha256(f"{name}\0{database}".encode()).digest()
    span = SERVER_ID_MAX - SERVER_ID_MIN + 1
    return SERVER_ID_MIN + int.from_bytes(digest[:8], "big") % span


@dataclass(frozen=True)
class Settings:
    """Validated, immutable settings. Build with :meth:`from_mapping` or :func:`configure`."""

    name: str = field(
        default="default",
        metadata=_doc(
            "name of this sync pipeline: the leader lock, checkpoint row, default server_id, "
            "retry/dead-letter topics and retry consumer group are per name"
        ),
    )
    redis_url: str | None = field(
        default=None,
        metadata=_doc(
            "Redis holding the cache, redis://[:password@]host:port/db (rediss:// for TLS); "
            "no default: a guessed Redis would receive the deletes meant for yours"
        ),
    )
    redis_cluster: bool = field(
        default=False,
        metadata=_doc("the Redis URL points at a Redis Cluster (keys are grouped by hash slot)"),
    )
    redis_connect_timeout: float = field(
        default=1.0, metadata=_doc("seconds to wait for a Redis connection")
    )
    redis_socket_timeout: float = field(
        default=1.0,
        metadata=_doc(
            "seconds to wait for a Redis reply; a frozen Redis must never hang a request"
        ),
    )
    redis_max_connections: int = field(
        default=100,
        metadata=_doc(
            "Redis connections one process opens at most; a thread beyond them waits up to "
            "redis_connect_timeout for one to come free (redis-py's own pool refuses it)"
        ),
    )
    mysql_url: str | None = field(
        default=None, metadata=_doc("watched database, mysql://user:password@host:port/database")
    )
    checkpoint_url: str | None = field(
        default=None,
        metadata=_doc(
            "database holding the checkpoint table when not the watched one "
            "(mysql://...), or file:/path/to/checkpoint.json"
        ),
    )
    outbox_url: str | None = field(
        default=None,
        metadata=_doc(
            "database of the outbox table (intents, failures parked while Kafka is down), "
            "mysql://, postgresql:// or sqlite:///path; default: mysql_url"
        ),
    )
    es_url: str | None = field(
        default=None,
        metadata=_doc(
            "Elasticsearch, http(s)://[user:password@]host:port (several comma-separated)"
        ),
    )
    es_timeout: float = field(
        default=10.0, metadata=_doc("seconds to wait for an Elasticsearch request")
    )
    kafka_bootstrap: str | None = field(
        default=None, metadata=_doc("Kafka bootstrap servers, host:port[,host:port]")
    )
    retry_topic: str | None = field(
        default=None,
        metadata=_doc(
            "Kafka topic of actions waiting for a retry (default cachesync.<name>.retry)"
        ),
    )
    dead_letter_topic: str | None = field(
        default=None,
        metadata=_doc(
            "Kafka topic of actions that exhausted their retries or could not be decoded "
            "(default cachesync.<name>.dead-letter)"
        ),
    )
    server_id: int | None = field(
        default=None,
        metadata=_doc(
            "replica server id of the binlog connection, unique per reader on a server "
            f"(default: derived from name and the database, {SERVER_ID_MIN}..{SERVER_ID_MAX})"
        ),
    )
    batch: str = field(
        default="default", metadata=_doc("batch preset: low_latency, default or throughput")
    )
    models: tuple[str, ...] = field(
        default=(),
        metadata=_doc("modules to import so their model declarations register (comma-separated)"),
    )
    fast_path: bool = field(
        default=True,
        metadata=_doc("delete keys right after the ORM commit (the binlog path is the safety net)"),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_doc(
            "serve /metrics, /healthz and /readyz on this port (listen, retry, relay; "
            "needs the metrics extra)"
        ),
    )
    metrics_host: str = field(
        default="0.0.0.0", metadata=_doc("address the metrics port listens on")
    )
    ready_max_lag: float = field(
        default=30.0,
        metadata=_doc("seconds of lag above which a leading sidecar's /readyz answers 503"),
    )
    log_format: str = field(
        default="text", metadata=_doc("log lines as text or json (one object per line)")
    )
    xa_max_held_rows: int = field(
        default=XaHoldPolicy.DEFAULT.max_held_rows,
        metadata=_doc(
            "rows the sidecar holds in memory for prepared XA transactions until their "
            "COMMIT, all together (>= 0); past it the oldest are dropped and named in an ERROR"
        ),
    )
    xa_max_prepared: int = field(
        default=XaHoldPolicy.DEFAULT.max_prepared,
        metadata=_doc(
            "prepared XA transactions the sidecar remembers until their COMMIT or ROLLBACK "
            "(>= 1); past it the oldest are dropped and named in an ERROR"
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, f.type, value))
        for name, schemes in (
            ("redis_url", ("redis", "rediss", "unix")),
            ("mysql_url", ("mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql")),
            ("es_url", ("http", "https")),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            for part in value.split(",") if name == "es_url" else [value]:
                scheme = urlsplit(part.strip()).scheme
                if scheme not in schemes or "//" not in part:
                    raise ConfigurationError(
                        f"setting {name} ({env_name(name)}) must look like "
                        f"{schemes[0]}://host:port/..., got {redact_url(part)!r}",
                        setting=name,
                    )
        if self.checkpoint_url is not None and not self.checkpoint_url.startswith(
            ("file:", "mysql://", "mysql+pymysql://", "mariadb://")
        ):
            raise ConfigurationError(
                f"setting checkpoint_url ({env_name('checkpoint_url')}) must be file:/path "
                f"or mysql://..., got {redact_url(self.checkpoint_url)!r}",
                setting="checkpoint_url",
            )
        if self.outbox_url is not None and urlsplit(self.outbox_url).scheme.split("+")[0] not in (
            "mysql",
            "mariadb",
            "postgresql",
            "sqlite",
        ):
            raise ConfigurationError(
                f"setting outbox_url ({env_name('outbox_url')}) must be mysql://..., "
                f"postgresql://... or sqlite:///path, got {redact_url(self.outbox_url)!r}",
                setting="outbox_url",
            )
        if self.kafka_bootstrap is not None:
            for server in self.kafka_bootstrap.split(","):
                host, _, port = server.strip().rpartition(":")
                if not host or not port.isdigit():
                    raise ConfigurationError(
                        f"setting kafka_bootstrap ({env_name('kafka_bootstrap')}) must be "
                        f"host:port[,host:port], got {self.kafka_bootstrap!r}",
                        setting="kafka_bootstrap",
                    )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(
                f"setting metrics_port ({env_name('metrics_port')}) must be in 0..65535 "
                f"(0: any free port), got {self.metrics_port}",
                setting="metrics_port",
            )
        if self.log_format not in ("text", "json"):
            raise ConfigurationError(
                f"setting log_format ({env_name('log_format')}) must be text or json, "
                f"got {self.log_format!r}",
                setting="log_format",
            )
        for name in (
            "redis_connect_timeout",
            "redis_socket_timeout",
            "es_timeout",
            "ready_max_lag",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"setting {name} must be > 0 seconds", setting=name)
        if self.redis_max_connections < 1:
            raise ConfigurationError(
                f"setting redis_max_connections ({env_name('redis_max_connections')}) must be "
                f">= 1 connection, got {self.redis_max_connections}",
                setting="redis_max_connections",
            )
        if self.server_id is not None and not 1 <= self.server_id < 2**32:
            raise ConfigurationError(
                "setting server_id must be in 1..4294967295", setting="server_id"
            )
        if self.xa_max_held_rows < 0:
            raise ConfigurationError(
                f"setting xa_max_held_rows ({env_name('xa_max_held_rows')}) must be >= 0 rows, "
                f"got {self.xa_max_held_rows}",
                setting="xa_max_held_rows",
            )
        if self.xa_max_prepared < 1:
            raise ConfigurationError(
                f"setting xa_max_prepared ({env_name('xa_max_prepared')}) must be >= 1 "
                f"transaction, got {self.xa_max_prepared}",
                setting="xa_max_prepared",
            )
        BatchPolicy.preset(self.batch)

    @property
    def resolved_server_id(self) -> int:
        """``server_id``, else :func:`derive_server_id` of ``name`` and ``mysql_url``'s database."""
        if self.server_id is not None:
            return self.server_id
        database = urlsplit(self.mysql_url).path.lstrip("/") if self.mysql_url else ""
        return derive_server_id(self.name, database)

    @property
    def resolved_retry_topic(self) -> str:
        """``retry_topic``, else ``cachesync.<name>.retry``: one pipeline's retries stay its own."""
        return self.retry_topic or f"cachesync.{self.name}.retry"

    @property
    def resolved_dead_letter_topic(self) -> str:
        """``dead_letter_topic``, else ``cachesync.<name>.dead-letter``."""
        return self.dead_letter_topic or f"cachesync.{self.name}.dead-letter"

    @property
    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy.preset(self.batch)

    @property
    def xa_policy(self) -> XaHoldPolicy:
        """``xa_max_held_rows`` and ``xa_max_prepared`` as the sidecar's :class:`XaHoldPolicy`."""
        return XaHoldPolicy(self.xa_max_held_rows, self.xa_max_prepared)

    def require(self, name: str, purpose: str, *, fallback: str | None = None) -> str:
        """The value of setting *name* (else of *fallback*), or a :class:`ConfigurationError`
        naming the setting, its flag and its environment variable, and what it is for."""
        value = getattr(self, name) or (getattr(self, fallback) if fallback else None)
        if value is None or value == "":
            also = f" (or {fallback})" if fallback else ""
            flag = "--" + name.replace("_", "-")
            hint = _doc_of(name)
            raise ConfigurationError(
                f"setting {name}{also} ({flag} / {env_name(name)}) is required {purpose}: {hint}",
                setting=name,
            )
        return str(value)

    @property
    def outbox_database(self) -> str | None:
        """Where the outbox table lives: ``outbox_url``, else ``mysql_url``."""
        return self.outbox_url or self.mysql_url

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Setting name -> one-line description (CLI ``--help`` and docs use this)."""
        return {f.name: f.metadata.get("doc", "") for f in fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "settings") -> Settings:
        """Build from ``{name: value}``; names may be any case, unknown names are an error."""
        known = set(cls.names())
        clean: dict[str, Any] = {}
        for raw, value in values.items():
            name = raw.lower()
            if name.startswith(ENV_PREFIX.lower()):
                name = name[len(ENV_PREFIX) :]
            if name not in known:
                raise ConfigurationError(
                    f"unknown setting {raw!r} in {source}; known: {', '.join(sorted(known))}",
                    setting=raw,
                )
            clean[name] = value
        return cls(**clean)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``CACHESYNC_*`` environment variables, then *overrides* (not None)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.names():
            if env_name(name) in environ:
                values[name] = environ[env_name(name)]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values, source="environment")

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from *config_file* (TOML), overridden by ``CACHESYNC_*`` variables, then by
        *overrides* (the command line). Without *config_file*, ``CACHESYNC_CONFIG`` names it."""
        environ = os.environ if environ is None else environ
        path = config_file if config_file is not None else environ.get(CONFIG_ENV) or None
        values: dict[str, Any] = dict(load_config_file(path)) if path is not None else {}
        for name in cls.names():
            if env_name(name) in environ:
                values[name] = environ[env_name(name)]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(values, source="environment")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={redact_url(str(getattr(self, f.name)))!r}" for f in fields(self)
        )
        return f"Settings({shown})"


#: The environment variable naming a config file (the ``--config`` flag wins over it).
CONFIG_ENV = ENV_PREFIX + "CONFIG"


def load_config_file(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The settings of a TOML file: setting names at the top level, values as in ``configure()``.

    The file is checked on its own, so a mistake is reported with the file's
    name (an unknown key, a malformed value, broken TOML) rather than as a
    mystery after it was merged with the environment and the flags::

        name = "orders"
        mysql_url = "mysql://cachesync:pw@db:3306/shop"
        redis_url = "redis://cache:6379/0"
        models = ["shop.models"]
    """
    import difflib
    import tomllib

    where = os.fspath(path)
    try:
        with open(where, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(
            f"config file {where}: no such file (--config / {CONFIG_ENV})", setting="config"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"config file {where}: cannot read it: {exc.strerror}", setting="config"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"config file {where}: not valid TOML: {exc}", setting="config"
        ) from None
    known = Settings.names()
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            if isinstance(value, dict):
                hint += "settings go at the top level of the file, not in a [table]; "
            raise ConfigurationError(
                f"config file {where}: unknown key {key!r}; {hint}known: {', '.join(known)}",
                setting=key,
            )
        if isinstance(value, dict):
            raise ConfigurationError(
                f"config file {where}: {key} must be a value, not a table", setting=key
            )
    try:
        Settings.from_mapping(data, source=where)
    except ConfigurationError as exc:
        raise ConfigurationError(f"config file {where}: {exc}", **exc.context) from None
    return data


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _doc_of(name: str) -> str:
    return next((f.metadata.get("doc", "") for f in fields(Settings) if f.name == name), "")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    kind = str(annotation)
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("a value is required")
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true/false")
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        text = str(value).strip()
        if not text and "None" in kind:
            return None
        if not text:
            raise ValueError("must not be empty")
        return text
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"setting {name} ({env_name(name)}): {exc}; got {redact_url(repr(value))}",
            setting=name,
        ) from None


_lock = threading.Lock()
_configured: Settings | None = None


def configure(**settings: Any) -> Settings:
    """Set the process-wide settings (``CACHESYNC_*`` environment variables fill the rest)."""
    global _configured
    new = Settings.from_env(**settings)
    with _lock:
        _configured = new
    return new


def get_settings() -> Settings:
    """The settings given to :func:`configure`, else those of the environment."""
    global _configured
    settings = _configured  # a reference read is atomic: the usual call takes no lock
    if settings is not None:
        return settings
    with _lock:
        if _configured is None:
            _configured = Settings.from_env()
        return _configured


def reset_settings() -> None:
    """Forget configured settings (tests)."""
    global _configured
    with _lock:
        _configured = None
