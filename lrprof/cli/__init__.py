"""Command line: parse, validate, delegate to the API, print, write reports. Nothing else.

One module per command; this one holds the app, the entry point and what the commands
share. Bad input of any kind ends in one line on stderr naming the parameter and what is
allowed, and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lrprof.errors import InputError, SpecError, require_int

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Profile spatially adaptive aggregation layers: latency, memory, MACs, and the "
    "complexity model they should follow.",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_ARGUMENTS = {"net": "NAME"}  # API parameter names that are positional arguments here


@app.callback()
def _group() -> None:
    """lrprof: layer, net, sweep, merge, compare, ops and check."""


_invocation: list[str] = []  # the arguments main() was given, recorded in every report


def argv() -> list[str]:
    return list(_invocation)


def set_threads(threads: int | None) -> None:
    """--threads applies to the whole run (counting, timing, memory), so the report's
    environment and every timing agree on it."""
    if threads is None:
        return
    require_int("threads", threads, 1)
    import torch

    torch.set_num_threads(threads)


def out_dir(out: Path | None) -> Path | None:
    from lrprof.report import check_writable

    check_writable(out if out is not None else Path("reports"))
    return out


def emit(report, out: Path | None, quiet: bool, paths=None) -> list[Path]:
    from lrprof.report import render_terminal, report_paths, write_report

    if not quiet:
        typer.echo(render_terminal(report))
    written = write_report(report, paths or report_paths(report.command, out))
    typer.echo("wrote " + ", ".join(str(p) for p in written))
    return written


def failures(records) -> int:
    """One stderr line per failed measurement or failed check; the exit status they mean."""
    failed = False
    for record in records:
        if record.error:
            typer.echo(f"lrprof: {record.name}: {record.error}", err=True)
            failed = True
        if record.checks.get("failed"):
            typer.echo(f"lrprof: {record.name}: check failed: {record.checks['verdict']}", err=True)
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


def main(args: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every usage error into one line and status 2."""
    layer.refresh()  # operators registered since import get their options
    command = typer.main.get_command(app)
    args = sys.argv[1:] if args is None else list(args)
    _invocation[:] = args
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
    except KeyboardInterrupt:
        typer.echo("lrprof: interrupted", err=True)
        return 130
    except Exception as exc:
        # Usage errors of the parser (unknown option, not an integer, ...) carry an exit
        # code and a message; anything else is a bug and keeps its traceback.
        code = getattr(exc, "exit_code", None)
        if code is None or not hasattr(exc, "format_message"):
            raise
        typer.echo(f"lrprof: error: {exc.format_message()}", err=True)
        return int(code)
    return int(result or 0)


from lrprof.cli import check, compare, layer, merge, net, ops, sweep  # noqa: E402,F401  (register the commands)

if __name__ == "__main__":
    sys.exit(main())
