"""Command line: parse, validate, delegate to the API, print, write reports. Nothing else.

One module per command, each registering itself on the app of `cli/app.py` (with what the
commands share); this one imports them and holds the entry point. Bad input of any kind
ends in one line on stderr naming the parameter and what is allowed, and exit status 2,
never a traceback.
"""

from __future__ import annotations

import signal
import sys

import typer

# each command registers itself on the app when imported
from lrprof.cli import (  # noqa: F401
    build,
    check,
    compare,
    count,
    helptext,
    layer,
    merge,
    net,
    ops,
    options,
    schema,
    sweep,
)
from lrprof.cli.app import (
    _ARGUMENTS,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    _invocation,
    app,
    keepers,
)
from lrprof.spec.errors import InputError, SpecError


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _interrupted(exc: Interrupted) -> int:
    """One line, the partial report written; a second signal meanwhile is ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if not keepers:
        typer.echo("interrupted: nothing measured yet", err=True)
        return exc.exit_code
    try:
        kept, total, where = keepers[0](str(exc))
    except Exception as failure:  # the partial report is a courtesy: say why it is missing
        typer.echo(f"interrupted: partial report not written ({failure})", err=True)
        return exc.exit_code
    typer.echo(f"interrupted: kept {kept} of {total} rows in {where}", err=True)
    return exc.exit_code


def main(args: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every usage error into one line and status 2,
    and an interrupt (Ctrl-C, SIGTERM) into one line and status 130 or 143."""
    args = sys.argv[1:] if args is None else list(args)
    if args and not args[0].startswith("-"):  # a command: operators registered by now get options
        options.refresh()
    command = typer.main.get_command(app)
    helptext.tidy(command)
    if not args:  # bare `lrprof`: the help, and a clean exit
        with typer.Context(command, info_name="lrprof") as ctx:
            typer.echo(command.get_help(ctx))
        return EXIT_OK
    _invocation[:] = args
    keepers.clear()
    handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, _raise_interrupted)
    except ValueError:  # not the main thread: signals stay as they are
        handlers = {}
    try:
        return _run(command, args)
    except Interrupted as exc:
        return _interrupted(exc)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        keepers.clear()


def _run(command, args: list[str]) -> int:
    try:
        result = command.main(args=args, prog_name="lrprof", standalone_mode=False)
    except SpecError as exc:
        name = _ARGUMENTS.get(exc.param) or f"--{exc.param.replace('_', '-')}"
        shown = "" if exc.got is None else f" (got {exc.got!r})"
        typer.echo(f"lrprof: error: {name}: {exc.allowed}{shown}", err=True)
        return EXIT_USAGE
    except InputError as exc:
        typer.echo(f"lrprof: error: {exc}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:  # SIGINT while our handler was not installed
        raise Interrupted(signal.SIGINT) from None
    except Exception as exc:
        # Usage errors of the parser (unknown option, not an integer, ...) carry an exit
        # code and a message; anything else is a bug and keeps its traceback.
        code = getattr(exc, "exit_code", None)
        if code is None or not hasattr(exc, "format_message"):
            raise
        typer.echo(f"lrprof: error: {exc.format_message()}", err=True)
        return int(code)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
