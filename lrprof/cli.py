"""Command line: parse, validate, delegate to the API, print, write reports. Nothing else.

Bad input of any kind ends in one line on stderr naming the parameter and what is
allowed, and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    """lrprof: layer, net and compare."""


_invocation: list[str] = []  # the arguments main() was given, recorded in every report


def _argv() -> list[str]:
    return list(_invocation)


def _set_threads(threads: int | None) -> None:
    """--threads applies to the whole run (counting, timing, memory), so the report's
    environment and every timing agree on it."""
    if threads is None:
        return
    require_int("threads", threads, 1)
    import torch

    torch.set_num_threads(threads)


def _out_dir(out: Path | None) -> Path | None:
    from lrprof.report import check_writable

    if out is not None:
        check_writable(out)
    else:
        check_writable(Path("reports"))
    return out


def _emit(report, out: Path | None, quiet: bool, paths=None) -> list[Path]:
    from lrprof.report import render_terminal, report_paths, write_report

    if not quiet:
        typer.echo(render_terminal(report))
    written = write_report(report, paths or report_paths(report.command, out))
    typer.echo("wrote " + ", ".join(str(p) for p in written))
    return written


def _failures(records) -> int:
    """One stderr line per failed measurement or failed count; the exit status they mean."""
    failed = False
    for record in records:
        if record.error:
            typer.echo(f"lrprof: {record.name}: {record.error}", err=True)
            failed = True
        if record.checks.get("counting_ok") is False:
            typer.echo(f"lrprof: {record.name}: counting check failed: {record.checks['verdict']}",
                       err=True)
            failed = True
    return EXIT_FAILED if failed else EXIT_OK


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
    min_time: Annotated[float, typer.Option(help="CPU: seconds of timed runs at least")] = 0.5,
    stock: Annotated[bool, typer.Option(help="also run stock fvcore and FlopCounterMode")] = True,
    out: Annotated[Path | None, typer.Option(help="write DIR/layer.{md,csv,json}")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="print only the paths written")] = False,
) -> None:
    """Measure one layer configuration and check it against its cost models."""
    from lrprof.layer import MeasureOptions, layer_report, profile_layer
    from lrprof.measure.device import collect
    from lrprof.measure.timing import TimingOptions
    from lrprof.ops import validate_spec
    from lrprof.spec import LayerSpec, parse_size, resolve_device

    height, width = parse_size(size)
    timing = TimingOptions(min_runs=min_runs, min_time_s=min_time)
    _set_threads(threads)
    resolved = resolve_device(device)
    spec = LayerSpec(op=op, channels=channels, height=height, width=width, k=k, m=m,
                     stride=stride, batch=batch, dtype=dtype, device=str(resolved), impl=impl)
    if op == "lr":
        spec = spec.with_options(phi=phi, geometry_hidden=geometry_hidden)
    validate_spec(spec)
    out = _out_dir(out)
    options = MeasureOptions(backward=backward, timing=timing, stock_counters=stock)
    environment = collect(resolved)  # before measuring: a failure here loses nothing
    record = profile_layer(spec, options)
    report = layer_report([record], _argv(), environment)
    _emit(report, out, quiet)
    raise typer.Exit(_failures([record]))


@app.command()
def net(
    name: Annotated[str | None, typer.Argument(help="network, e.g. lr50 (see --list)")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the registered networks")] = False,
    vs: Annotated[str | None, typer.Option(help="profile this network too, same run")] = None,
    k: Annotated[int | None, typer.Option(help="LR-Net: window size of the bottleneck layers")] = None,
    m: Annotated[int | None, typer.Option(help="LR-Net: channels per aggregation group")] = None,
    batch: Annotated[int, typer.Option(help="batch size B")] = 1,
    size: Annotated[str, typer.Option(help="input size N or HxW")] = "224",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N (default: cuda if present)")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16, bfloat16 or float64")] = "float32",
    backward: Annotated[bool, typer.Option("--backward", help="also time forward+backward")] = False,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="break down by layer too")] = False,
    min_runs: Annotated[int, typer.Option(help="fewest timed runs of the whole net (>= 2)")] = 5,
    min_time: Annotated[float, typer.Option(help="CPU: seconds of timed runs at least")] = 0.5,
    hooked_runs: Annotated[int, typer.Option(help="runs for the stage/layer breakdown (>= 2)")] = 5,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
    stock: Annotated[bool, typer.Option(help="also run stock fvcore and FlopCounterMode")] = True,
    out: Annotated[Path | None, typer.Option(help="write DIR/net.{md,csv,json}")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="print only the paths written")] = False,
) -> None:
    """Profile a whole network: totals, stages, layers, and the paper's table."""
    from lrprof.measure.device import collect
    from lrprof.measure.timing import TimingOptions
    from lrprof.netprofile import NetOptions, NetSpec, net_report, profile_net
    from lrprof.nets import list_nets
    from lrprof.report import report_paths, write_report
    from lrprof.spec import parse_size, resolve_device

    if list_:
        for net_def in list_nets():
            typer.echo(f"{net_def.name:10s} {net_def.summary}")
        return
    if name is None:
        raise SpecError("net", "a network name (lrprof net --list shows them)", None)
    options = NetOptions(
        backward=backward,
        per_layer=per_layer,
        timing=TimingOptions(warmup=1, warmup_s=0.0, min_runs=min_runs, min_time_s=min_time),
        hooked_runs=hooked_runs,
        stock_counters=stock,
    )
    _set_threads(threads)
    height, width = parse_size(size)
    resolved = resolve_device(device)
    overrides = tuple((key, v) for key, v in (("k", k), ("m", m)) if v is not None)
    specs = [NetSpec(name, batch, height, width, dtype, str(resolved), overrides)]
    specs[0].validate()
    if vs is not None:
        specs.append(NetSpec(vs, batch, height, width, dtype, str(resolved)))
        try:
            specs[1].validate()
        except SpecError as exc:  # name the option, not the positional NAME
            raise SpecError("vs", exc.allowed, exc.got) from None
    out = _out_dir(out)
    paths = report_paths("net", out)
    environment = collect(resolved)  # before measuring: a failure here loses nothing
    profiles = []
    for spec in specs:
        profiles.append(profile_net(spec, options))
        report = net_report(profiles, _argv(), environment)
        write_report(report, paths)  # after each net: an interrupted run keeps what it measured
    _emit(report, out, quiet, paths)
    raise typer.Exit(_failures([p.net for p in profiles]))


@app.command()
def compare(
    old: Annotated[Path, typer.Argument(help="baseline report (.json or .csv)")],
    new: Annotated[Path, typer.Argument(help="current report (.json or .csv)")],
    max_slowdown: Annotated[str, typer.Option(help="latency growth allowed, e.g. 10%")] = "10%",
    max_memory_growth: Annotated[str, typer.Option(help="peak memory growth allowed")] = "5%",
    allow_model_change: Annotated[
        bool, typer.Option("--allow-model-change", help="do not fail when params or MACs change")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="different device or versions: error, not a warning")
    ] = False,
    require_all: Annotated[
        bool, typer.Option("--require-all", help="fail when a baseline row is missing from NEW")
    ] = False,
    format_: Annotated[str, typer.Option("--format", help="text, markdown or json")] = "text",
    out: Annotated[Path | None, typer.Option(help="also write DIR/compare.{md,json}")] = None,
) -> None:
    """Compare two reports: exit 0 without regression, 1 with one, 2 on bad input."""
    from lrprof import compare as cmp
    from lrprof.report import write_atomic

    if format_ not in cmp.RENDERERS:
        raise SpecError("format", f"one of {', '.join(cmp.RENDERERS)}", format_)
    thresholds = cmp.Thresholds(
        max_slowdown=cmp.parse_percent(max_slowdown, "max-slowdown"),
        max_memory_growth=cmp.parse_percent(max_memory_growth, "max-memory-growth"),
        allow_model_change=allow_model_change,
        require_all=require_all,
    )
    if out is not None:
        _out_dir(out)
    result = cmp.compare(old, new, thresholds, strict=strict)
    typer.echo(cmp.RENDERERS[format_](result), nl=format_ == "text")
    if out is not None:
        write_atomic(out / "compare.md", cmp.render_markdown(result))
        write_atomic(out / "compare.json", cmp.render_json(result))
    if result.regression:
        raise typer.Exit(EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every usage error into one line and status 2."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
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


if __name__ == "__main__":
    sys.exit(main())
