"""The ``virnucpro`` entry point: load plugins, run the app, turn errors into one line.

A person sees ``error: <what is wrong and what to do>`` and an exit code (README lists
them); ``--debug`` (first, before the command) or ``VIRNUCPRO_DEBUG=1`` also shows the
traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping, Sequence

from virnucpro.cli.app import DEBUG_ENV, AppState, build_app
from virnucpro.cli.errors import ExitCode, StoppedBySignal, describe_unexpected, translate
from virnucpro.cli.jobs import PIPELINE, Jobs
from virnucpro.cli.plugins import load_plugins


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
    known = translate(exc)
    if known is None:
        line, code = describe_unexpected(exc), int(ExitCode.INTERNAL)
    else:
        prefix = "" if isinstance(known, StoppedBySignal) else "error: "
        line, code = prefix + known.message, int(known.exit_code)
    sys.stderr.write(f"virnucpro: {line}\n")
    sys.stderr.flush()
    return code


def _exit_code(exit_: SystemExit) -> int:
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    sys.stderr.write(f"{exit_.code}\n")
    return 1


def main(argv: Sequence[str] | None = None, jobs: Jobs = PIPELINE) -> int:
    """Run the command line; return the exit code. ``jobs``: the pipeline behind it."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = wants_debug(args, os.environ)
    try:
        plugins = load_plugins(os.environ)
        app = build_app(plugins)
        app(args=args, prog_name="virnucpro", obj=AppState(plugins, jobs))
    except SystemExit as exit_:
        return _exit_code(exit_)
    except (Exception, KeyboardInterrupt) as exc:
        return report_error(exc, debug)
    return 0
