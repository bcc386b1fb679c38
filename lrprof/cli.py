"""Command line: parse, validate, delegate to the API, print, write reports. Nothing else.

Bad input of any kind ends in one line on stderr naming the parameter and what is
allowed, and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lrprof.errors import InputError, SpecError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Profile spatially adaptive aggregation layers: latency, memory, MACs, and the "
    "complexity model they should follow.",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@app.callback()
def _group() -> None:
    """lrprof: layer, net and compare."""


def _argv() -> list[str]:
    return sys.argv[1:]


def _out_dir(out: Path | None) -> Path | None:
    from lrprof.report import check_writable

    if out is not None:
        check_writable(out)
    else:
        check_writable(Path("reports"))
    return out


def _emit(report, out: Path | None, quiet: bool, sections=None) -> list[Path]:
    from lrprof.report import render_terminal, report_paths, write_report

    if not quiet:
        typer.echo(render_terminal(report, sections))
    written = write_report(report, report_paths(report.command, out))
    typer.echo("wrote " + ", ".join(str(p) for p in written))
    return written


@app.command()
def layer(
    op: Annotated[str, typer.Option(help="operator (lr)")] = "lr",
    k: Annotated[int, typer.Option(help="window (kernel) size, odd")] = 7,
    m: Annotated[int, typer.Option(help="channels sharing one aggregation weight map")] = 8,
    channels: Annotated[int, typer.Option(help="channels C")] = 64,
    size: Annotated[str, typer.Option(help="input size N or HxW")] = "56",
    stride: Annotated[int, typer.Option(help="stride s (1..k)")] = 1,
    batch: Annotated[int, typer.Option(help="batch size B")] = 1,
    phi: Annotated[str, typer.Option(help="composability: sqdiff, absdiff or mul")] = "sqdiff",
    geometry_hidden: Annotated[
        int | None, typer.Option(help="hidden width of the geometry prior (default G)")
    ] = None,
    impl: Annotated[str, typer.Option(help="implementation (unfold)")] = "unfold",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N (default: cuda if present)")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16, bfloat16 or float64")] = "float32",
    backward: Annotated[bool, typer.Option("--backward", help="also time forward+backward")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
    min_runs: Annotated[int, typer.Option(help="fewest timed runs (>= 2)")] = 10,
    min_time: Annotated[float, typer.Option(help="CPU: seconds of timed runs at least")] = 1.0,
    stock: Annotated[bool, typer.Option(help="also run stock fvcore and FlopCounterMode")] = True,
    out: Annotated[Path | None, typer.Option(help="write DIR/layer.{md,csv,json}")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="print only the paths written")] = False,
) -> None:
    """Measure one layer configuration and check it against its cost models."""
    from lrprof.layer import MeasureOptions, layer_report, profile_layer
    from lrprof.measure.timing import TimingOptions
    from lrprof.ops import validate_spec
    from lrprof.spec import LayerSpec, parse_size, resolve_device

    height, width = parse_size(size)
    if min_runs < 2:
        raise SpecError("min-runs", "must be an integer >= 2", min_runs)
    if threads is not None and threads < 1:
        raise SpecError("threads", "must be an integer >= 1", threads)
    if min_time <= 0:
        raise SpecError("min-time", "must be a number of seconds > 0", min_time)
    resolved = resolve_device(device)
    spec = LayerSpec(op=op, channels=channels, height=height, width=width, k=k, m=m,
                     stride=stride, batch=batch, dtype=dtype, device=str(resolved), impl=impl)
    if op == "lr":
        spec = spec.with_options(phi=phi, geometry_hidden=geometry_hidden)
    validate_spec(spec)
    out = _out_dir(out)
    options = MeasureOptions(
        backward=backward,
        timing=TimingOptions(min_runs=min_runs, min_time_s=min_time, threads=threads),
        stock_counters=stock,
    )
    record = profile_layer(spec, options)
    report = layer_report([record], ["layer", *_argv()[1:]])
    _emit(report, out, quiet, report.sections[:3])
    if record.error:
        typer.echo(f"lrprof: measuring failed: {record.error}", err=True)
        raise typer.Exit(EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every usage error into one line and status 2."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = command.main(args=args, prog_name="lrprof", standalone_mode=False)
    except SpecError as exc:
        name = exc.param if exc.param.startswith("-") else f"--{exc.param.replace('_', '-')}"
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


if __name__ == "__main__":
    sys.exit(main())
