"""What every command shares: the app they register on, exit statuses, the invocation
recorded in reports, threads, output directories, one stderr line per failure, and the
interrupt a measuring command turns into a partial report."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from lrprof.spec.errors import SpecError, require_int

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Profile spatially adaptive aggregation layers: latency, memory, MACs, and the "
    "complexity model they should follow.",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
_ARGUMENTS = {"net": "NAME"}  # API parameter names that are positional arguments here


def _version(value: bool) -> None:
    if value:
        import platform
        from importlib.metadata import PackageNotFoundError, version

        from lrprof.spec.version import __version__

        try:  # the installed torch's version, without importing torch (seconds)
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = "not installed"
        typer.echo(f"lrprof {__version__} (torch {torch_version}, python {platform.python_version()})")
        raise typer.Exit(0)


@app.callback()
def _group(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """lrprof: layer, net, count, sweep, merge, compare, ops and check."""


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


def _empty_out() -> bool:
    """`--out ""` (or `--out=`): a Path of "" is ".", so the typed text is looked at."""
    args = _invocation
    for i, arg in enumerate(args):
        if (arg == "--out" and i + 1 < len(args) and not args[i + 1].strip()) or arg.strip() == "--out=":
            return True
    return False


def out_dir(out: Path | None) -> Path | None:
    from lrprof.report import check_writable

    if out is not None and _empty_out():
        raise SpecError("out", "a directory name, not empty (leave --out out for reports/)", "")
    check_writable(out if out is not None else Path("reports"))
    return out


def emit(report, out: Path | None, quiet: bool, paths=None, plots: bool = True) -> list[Path]:
    """Write the report (its plots beside the markdown), print its terminal view and the
    paths written."""
    from lrprof.report import report_paths
    from lrprof.report.run import finish_report

    paths = paths or report_paths(report.command, out)
    report, written = finish_report(report, paths, plots)
    show(report, written, quiet)
    return written


def show(report, written: list[Path], quiet: bool) -> None:
    """The terminal view (unless quiet) and the paths written."""
    from lrprof.report import render_terminal

    if not quiet:
        typer.echo(render_terminal(report))
    typer.echo(wrote_text(written))


def wrote_text(written: list[Path]) -> str:
    """'wrote A, B, C': one line, unless a terminal width is known (COLUMNS, a terminal) and
    the line would pass it; then a path a line (a path itself is never broken)."""
    import shutil
    import textwrap

    text = "wrote " + ", ".join(str(p) for p in written)
    width = shutil.get_terminal_size((0, 0)).columns
    if not width or len(text) <= width:
        return text
    return "\n".join(textwrap.wrap(text, width, subsequent_indent="  ", break_long_words=False,
                                   break_on_hyphens=False))


def write_sweep_report(merged, out: Path | None, quiet: bool, plots: bool,
                       wall_s: float | None = None) -> int:
    """Fits, plots and the report of merged rows; the exit status they mean."""
    from lrprof.report import report_paths
    from lrprof.report.run import finish_sweep
    from lrprof.sweep.fits import fit_records

    report, written = finish_sweep(merged, fit_records(merged.records), report_paths("sweep", out),
                                   plots, argv(), wall_s)
    show(report, written, quiet)
    code = failures(merged.records)
    if merged.missing:
        say(f"lrprof: {len(merged.missing)} grid row(s) missing from the rows files, e.g. "
            f"{merged.missing[0]}")
        code = EXIT_FAILED
    return code


def cuda_only(flags: dict, device) -> None:
    """--cold and --cuda-graphs time what only a GPU has: an L2 to flush, graphs to replay."""
    for name, what in (("cold", "flushes the GPU's L2 cache before each timed call"),
                       ("cuda_graphs", "times CUDA graph replays")):
        if flags.get(name) and device.type != "cuda":
            raise SpecError(name.replace("_", "-"), f"CUDA only ({what}); use it with --device cuda",
                            str(device))


def say(text: str) -> None:
    """A message on stderr (a warning, a failed row), wrapped to the terminal's width where
    one is known (one line into a pipe or a log)."""
    from lrprof.report import fit_lines

    typer.echo(fit_lines(text), err=True)


def noise_warnings(records) -> None:
    """Oversubscription seen while timing: one stderr message each."""
    from lrprof.measure import noise

    for warning in noise.warnings(records):
        say(f"lrprof: warning: {warning}")


def failures(records) -> int:
    """One stderr line per failed measurement or failed check; the exit status they mean."""
    failed = False
    for record in records:
        if record.error:
            say(f"lrprof: {record.name}: {record.error}")
            failed = True
        if record.checks.get("failed"):
            say(f"lrprof: {record.name}: check failed: {record.checks['verdict']}")
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
keepers: list[Callable[[str], tuple[int, int, Path]]] = []


def on_interrupt(keep: Callable[[str], tuple[int, int, Path]]) -> None:
    keepers[:] = [keep]
