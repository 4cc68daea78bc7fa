"""``cachesync ...``: the command-line entry point.

Every setting of :class:`~cachesync.config.Settings` is a flag named after it
(``redis_url`` -> ``--redis-url``) with the environment variable
(``CACHESYNC_REDIS_URL``) as fallback, so one name works everywhere. The
subcommands live next to what they run; this module only wires them up:

* ``cachesync.binlog.commands``: ``listen``, ``reindex``, ``status``
* ``cachesync.kafka.commands``: ``retry``, ``relay``, ``dlq``
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from .config import Settings, env_name
from .errors import CacheSyncError

__all__ = ["main", "settings_from_args"]

#: Modules that contribute subcommands through ``register(subparsers, parent)``.
COMMAND_MODULES = ("cachesync.binlog.commands", "cachesync.kafka.commands")

Handler = Callable[[argparse.Namespace], int]


def settings_parser() -> argparse.ArgumentParser:
    """A parent parser with one ``--flag`` per setting (defaults come from the environment)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (flag, or environment variable)")
    docs = Settings.describe()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(
            flag,
            dest=f"setting_{f.name}",
            default=None,
            metavar=f.name.split("_")[-1].upper(),
            help=f"{docs[f.name]} [{env_name(f.name)}]",
        )
    parent.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parent


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment overridden by flags given on the command line."""
    overrides = {
        name[len("setting_") :]: value
        for name, value in vars(args).items()
        if name.startswith("setting_") and value is not None
    }
    return Settings.from_env(**overrides)


def import_models(settings: Settings) -> None:
    """Import the modules named by ``models`` so their declarations register."""
    for module in settings.models:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CacheSyncError(
                f"setting models (--models / CACHESYNC_MODELS): cannot import {module!r}: {exc}",
                setting="models",
            ) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachesync",
        description="Keep Redis caches and Elasticsearch indexes consistent with MySQL/MariaDB.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = settings_parser()
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra is not installed
            logging.getLogger("cachesync.cli").debug("%s unavailable: %s", module_name, exc)
            continue
        module.register(subparsers, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handler: Any = args.handler
    try:
        return int(handler(args))
    except CacheSyncError as exc:
        print(f"cachesync {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
