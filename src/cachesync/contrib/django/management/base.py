"""The base of the ``manage.py cachesync_*`` commands: the standalone CLI, fed by Django.

Each command runs ``cachesync <subcommand>`` in-process (:func:`cachesync.cli.main`)
with:

* every setting Django contributes (``settings.CACHESYNC``, the Redis URL of the
  cache alias, the MySQL URL of the database alias) passed as its ``--flag``
  after the user's arguments (the ``CACHESYNC_*`` environment variables and a
  ``--config`` file fill the rest, below them) (so
  it reaches nested subcommands such as ``dlq list``); a flag given on the
  command line wins, as with the standalone command;
* the models that ``AppConfig.ready()`` registered, so ``--models`` is not needed;
* every other argument passed through unchanged, so the options are exactly the
  standalone command's (``manage.py cachesync_reindex --help`` lists both);
* Django's ``--verbosity`` mapped to ``--log-level`` unless that is given.

Passing arguments through, rather than re-declaring them, is what keeps the
two command lines identical as the CLI grows. From code, pass them as
``call_command("cachesync_status", cli_args=["--json"])``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import fields
from typing import Any, ClassVar

from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ....config import Settings
from ..conf import load_config

__all__ = ["CliCommand", "settings_arguments"]

_LOG_LEVELS = {0: "WARNING", 1: "INFO", 2: "DEBUG", 3: "DEBUG"}


def settings_arguments(
    settings: Settings, given: Sequence[str] = (), only: Collection[str] | None = None
) -> list[str]:
    """``--flag value`` pairs for every setting of *settings* (or of those named in *only*)
    not among the flags in *given*."""
    explicit = {arg.split("=", 1)[0] for arg in given if arg.startswith("--")}
    argv: list[str] = []
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(settings, f.name)
        if flag in explicit or value is None or (only is not None and f.name not in only):
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            if not value:
                continue
            text = ",".join(value)
        else:
            text = str(value)
        argv += [flag, text]
    return argv


@contextlib.contextmanager
def _exit_as_return() -> Iterator[list[int]]:
    code: list[int] = []
    try:
        yield code
    except SystemExit as exc:
        code.append(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1))


class CliCommand(BaseCommand):  # type: ignore[misc]
    """Run ``cachesync <cli_command>`` with Django's settings and models."""

    cli_command: ClassVar[str]
    # Accepted by call_command() although the parser has no such option (see parse_args).
    stealth_options = ("cli_args",)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parse_known = parser.parse_known_args
        print_help = parser.print_help
        command = self.cli_command

        def parse_args(args: Sequence[str] | None = None, namespace: Any = None) -> Any:
            # Django's own options (--settings, --verbosity, ...) are parsed here; the
            # rest goes to the CLI in its original order.
            options, rest = parse_known(args, namespace)
            options.cli_args = [*(getattr(options, "cli_args", None) or []), *rest]
            return options

        def full_help(file: Any = None) -> None:
            print_help(file)
            out = file or sys.stdout
            out.write(f"\nOptions of `cachesync {command}`, all accepted here:\n\n")
            buffer = io.StringIO()
            with _exit_as_return(), contextlib.redirect_stdout(buffer):
                from .... import cli

                cli.main([command, "--help"])
            out.write(buffer.getvalue())

        parser.parse_args = parse_args  # type: ignore[method-assign,assignment]
        parser.print_help = full_help  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.set_defaults(cli_args=[])

    def cli_argv(self, cli_args: Sequence[str], verbosity: int = 1) -> list[str]:
        """The argument list handed to :func:`cachesync.cli.main`."""
        config = load_config(django_settings)
        if not config.ok or config.settings is None:
            problems = "; ".join(f"{p.message} ({p.id})" for p in config.problems if p.error)
            raise CommandError(f"invalid cachesync settings: {problems}")
        # Only what Django contributed: the CLI reads the same environment itself, and a
        # default passed as a flag would override the user's --config file.
        ours = settings_arguments(config.settings, cli_args, only=config.overrides.keys())
        if not any(a == "--log-level" or a.startswith("--log-level=") for a in cli_args):
            ours += ["--log-level", _LOG_LEVELS.get(int(verbosity), "DEBUG")]
        # After the user's arguments, so that they reach the innermost subcommand
        # (``dlq list``) whose parser carries the settings flags; before a ``--``.
        args = list(cli_args)
        cut = args.index("--") if "--" in args else len(args)
        return [self.cli_command, *args[:cut], *ours, *args[cut:]]

    def handle(self, *args: Any, **options: Any) -> None:
        from .... import cli

        cli_args = [*args, *(options.get("cli_args") or [])]
        argv = self.cli_argv(cli_args, options.get("verbosity", 1))
        with _exit_as_return() as exited:
            code = cli.main(argv)
        if exited:
            code = exited[0]
        if code:
            raise CommandError(
                f"cachesync {self.cli_command} exited with status {code}", returncode=code
            )
