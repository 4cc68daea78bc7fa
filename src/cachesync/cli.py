"""``cachesync ...``: the command-line entry point.

Every setting of :class:`~cachesync.config.Settings` is a flag named after it
(``redis_url`` -> ``--redis-url``) with the environment variable
(``CACHESYNC_REDIS_URL``) as fallback, so one name works everywhere. The
subcommands live next to what they run; this module only wires them up:

* ``cachesync.binlog.commands``: ``listen``, ``reindex``, ``status``
* ``cachesync.kafka.commands``: ``retry``, ``relay``, ``dlq``

``--config FILE`` (or ``CACHESYNC_CONFIG``) reads the same settings from a TOML
file; environment variables override it and flags override both.

A command never answers bad input with a traceback: a setting, a ``--models``
module that cannot be imported (missing, a ``SyntaxError``, an exception at
import), a missing table, an out-of-range option or an unreachable service
ends in one ``cachesync COMMAND: error: ...`` line naming it, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from .config import CONFIG_ENV, Settings, env_name
from .errors import CacheSyncError, ConfigurationError, redact_url
from .logs import setup_logging

__all__ = [
    "at_least",
    "import_models",
    "main",
    "positive_float",
    "settings_from_args",
]

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
    parent.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML file of settings (same names, top level); environment variables and "
        f"flags override it [{CONFIG_ENV}]",
    )
    parent.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parent


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= *minimum*, else a usage error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type=``: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment overridden by flags given on the command line."""
    overrides = {
        name[len("setting_") :]: value
        for name, value in vars(args).items()
        if name.startswith("setting_") and value is not None
    }
    return Settings.load(getattr(args, "config", None), **overrides)


def import_models(settings: Settings) -> None:
    """Import the modules named by ``models`` so their declarations register.

    Whatever a module does wrong at import (it is missing, one of its own
    imports is, a ``SyntaxError``, an exception in a declaration or in module
    code) becomes a :class:`ConfigurationError` naming the module and the
    setting: a command must say which module to fix, not print its traceback.
    """
    for module in settings.models:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or "?"
            if missing == module or module.startswith(missing + "."):
                problem = (
                    f"no module named {missing!r}: is the name right, and is its package "
                    "installed or on PYTHONPATH (run from the project directory)?"
                )
            else:
                problem = f"it imports {missing!r}, which is not installed"
            raise _bad_module(module, problem) from None
        except SyntaxError as exc:
            where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "?"
            raise _bad_module(module, f"SyntaxError: {exc.msg} ({where})") from None
        except CacheSyncError as exc:  # a DeclarationError names the model and template
            raise _bad_module(module, str(exc)) from None
        except (Exception, SystemExit) as exc:
            raise _bad_module(
                module, f"importing it raised {type(exc).__name__}: {exc}{_origin(exc)}"
            ) from None


def _bad_module(module: str, problem: str) -> ConfigurationError:
    return ConfigurationError(
        f"setting models (--models / CACHESYNC_MODELS): cannot import {module!r}: {problem}",
        setting="models",
    )


def _origin(exc: BaseException) -> str:
    """`` (at path:line)``: the innermost frame of *exc*, so the message points at the code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb else ""


def _log_format(args: argparse.Namespace) -> str:
    """``log_format`` as the command will see it (flag, environment, config file).

    Logging starts before the command reads its settings; a setting that fails
    to load is reported by the command itself, so here it only means text.
    """
    flag = getattr(args, "setting_log_format", None)
    if flag in ("text", "json"):
        return str(flag)
    try:
        return settings_from_args(args).log_format
    except CacheSyncError:
        return "text"


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
    setup_logging(getattr(args, "log_level", "INFO"), _log_format(args))
    handler: Any = args.handler
    command = " ".join(
        str(part) for part in (args.command, getattr(args, "dlq_command", None)) if part
    )
    try:
        return int(handler(args))
    except CacheSyncError as exc:
        print(f"cachesync {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Not foreseen, so not translated: still one line, the traceback only on request.
        logging.getLogger("cachesync.cli").debug("cachesync %s failed", command, exc_info=True)
        print(
            f"cachesync {command}: error: unexpected {type(exc).__name__}: "
            f"{redact_url(str(exc))} (--log-level DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
