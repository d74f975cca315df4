"""The ``virnucpro`` entry point: load plugins, run the app, turn errors into one line.

A person sees ``virnucpro: error: <what is wrong and what to do>`` and an exit code
(README lists them), usage errors included; ``--debug`` (first, before the command) or
``VIRNUCPRO_DEBUG=1`` also shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from virnucpro.cli.app import DEBUG_ENV, AppState, build_app
from virnucpro.cli.errors import (
    ExitCode,
    StoppedBySignal,
    as_known,
    describe_unexpected,
    exit_code_of,
)
from virnucpro.cli.plugins import load_cli_plugins


def wants_debug(args: Sequence[str], environ: Mapping[str, str]) -> bool:
    """``--debug`` among the global options (before the command), or the variable."""
    if environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    for arg in args:
        if arg == "--debug":
            return True
        if not arg.startswith("-"):
            return False
    return False


def report_error(exc: BaseException, debug: bool) -> int:
    """Print one line for ``exc`` on stderr (the traceback first with ``debug``)."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    known = as_known(exc)
    if known is None:
        line, code = describe_unexpected(exc), int(ExitCode.INTERNAL)
    else:
        prefix = "" if isinstance(known, StoppedBySignal) else "error: "
        line, code = prefix + known.message, int(exit_code_of(known))
    _say(line)
    return code


def is_usage_error(exc: BaseException) -> bool:
    """Click's usage errors (exit code 2), whichever click Typer was built on."""
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == ExitCode.USAGE


def report_usage_error(exc: Any) -> int:
    """Click's usage errors in the same one-line style as every other error; a bare
    ``virnucpro`` shows the help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        sys.stdout.write(exc.format_message() + "\n")
        return int(ExitCode.OK)
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "virnucpro"
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    _say(f"error: {message} (see `{command} --help`)")
    return int(ExitCode.USAGE)


def _say(line: str) -> None:
    sys.stderr.write(f"virnucpro: {line}\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = wants_debug(args, os.environ)
    try:
        plugins = load_cli_plugins(os.environ)
        app = build_app(plugins)
        command = typer.main.get_command(app)
        result = command.main(
            args=args, prog_name="virnucpro", obj=AppState(plugins), standalone_mode=False
        )
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        return report_error(KeyboardInterrupt(), debug)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(ExitCode.INTERNAL)
    except (Exception, KeyboardInterrupt) as exc:
        if is_usage_error(exc):
            return report_usage_error(exc)
        return report_error(exc, debug)
    return result if isinstance(result, int) else 0
