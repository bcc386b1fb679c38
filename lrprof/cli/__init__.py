"""Command line: parse, validate, delegate to the API, print, write reports. Nothing else.

One module per command; this one holds the app, the entry point and what the commands
share. Bad input of any kind ends in one line on stderr naming the parameter and what is
allowed, and exit status 2, never a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lrprof.spec.errors import InputError, SpecError, require_int

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Profile spatially adaptive aggregation layers: latency, memory, MACs, and the "
    "complexity model they should follow.",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_ARGUMENTS = {"net": "NAME"}  # API parameter names that are positional arguments here


def _version(value: bool) -> None:
    if value:
        import platform

        import torch

        from lrprof import __version__

        typer.echo(f"lrprof {__version__} (torch {torch.__version__}, python {platform.python_version()})")
        raise typer.Exit(0)


@app.callback()
def _group(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
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


def emit(report, out: Path | None, quiet: bool, paths=None, plots: bool = True) -> list[Path]:
    """Print the terminal view, draw the plots beside the markdown, write the reports."""
    from lrprof.report import render_terminal, report_paths, write_report
    from lrprof.spec.errors import describe

    paths = paths or report_paths(report.command, out)
    if plots:
        try:
            from lrprof.report.plots import report_figures

            report.figures = report_figures(report, paths["md"])
        except Exception as exc:  # a picture that cannot be drawn costs no figure
            report.notes.append(f"plots not drawn: {describe(exc)}")
    if not quiet:
        typer.echo(render_terminal(report))
    written = write_report(report, paths)
    written += [paths["md"].parent / f["file"] for f in report.figures]
    typer.echo("wrote " + ", ".join(str(p) for p in written))
    return written


def noise_warnings(records) -> None:
    """Oversubscription seen while timing: one stderr line each."""
    from lrprof.measure import noise

    for warning in noise.warnings(records):
        typer.echo(f"lrprof: warning: {warning}", err=True)


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


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, like KeyboardInterrupt, so no `except Exception`
    of a measuring step swallows it, and raised by our own handler so the command-line
    parser does not turn it into its own abort."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM


# What a measuring command has kept so far: called on an interrupt, it writes a partial
# report and returns (rows kept, rows planned, directory written).
_keepers: list[Callable[[str], tuple[int, int, Path]]] = []


def on_interrupt(keep: Callable[[str], tuple[int, int, Path]]) -> None:
    _keepers[:] = [keep]


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _interrupted(exc: Interrupted) -> int:
    """One line, the partial report written; a second signal meanwhile is ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if not _keepers:
        typer.echo("interrupted: nothing measured yet", err=True)
        return exc.exit_code
    try:
        kept, total, where = _keepers[0](str(exc))
    except Exception as failure:  # the partial report is a courtesy: say why it is missing
        typer.echo(f"interrupted: partial report not written ({failure})", err=True)
        return exc.exit_code
    typer.echo(f"interrupted: kept {kept} of {total} rows in {where}", err=True)
    return exc.exit_code


def main(args: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every usage error into one line and status 2,
    and an interrupt (Ctrl-C, SIGTERM) into one line and status 130 or 143."""
    layer.refresh()  # operators registered since import get their options
    command = typer.main.get_command(app)
    helptext.tidy(command)
    args = sys.argv[1:] if args is None else list(args)
    if not args:  # bare `lrprof`: the help, and a clean exit
        with typer.Context(command, info_name="lrprof") as ctx:
            typer.echo(command.get_help(ctx))
        return EXIT_OK
    _invocation[:] = args
    _keepers.clear()
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
        _keepers.clear()


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


from lrprof.cli import check, compare, helptext, layer, merge, net, ops, sweep  # noqa: E402,F401  (register the commands)

if __name__ == "__main__":
    sys.exit(main())
