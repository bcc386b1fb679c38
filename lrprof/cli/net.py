"""`lrprof net`: whole networks, totals, stages, layers and the paper's table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import app, argv, failures, noise_warnings, on_interrupt, out_dir, set_threads, show
from lrprof.cli.layer import PROGRESS_DELAY_S
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import AUTO_IMPL


@app.command(epilog=helptext.NET)
def net(
    name: Annotated[str | None, typer.Argument(help="network, e.g. lr50 (see --list)")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the registered networks")] = False,
    vs: Annotated[str | None, typer.Option(help="profile this network too, same run, interleaved")] = None,
    k: Annotated[int | None, typer.Option(help="LR-Net: window size of the bottleneck layers")] = None,
    m: Annotated[int | None, typer.Option(help="LR-Net: channels per aggregation group")] = None,
    impl: Annotated[str | None, typer.Option(
        help="LR-Net: implementation of its local relation layers (lrprof ops lists them), or auto "
             "(the default: the fastest ready on the device that passes a small output check; the "
             "report says which and why); also applied to --vs when that network has them")] = None,
    batch: Annotated[int, typer.Option(help="batch size B")] = 1,
    size: Annotated[str, typer.Option(help="input size N or HxW")] = "224",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N (default: cuda if present)")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16, bfloat16 or float64")] = "float32",
    backward: Annotated[
        bool, typer.Option("--backward", help="also count and time forward+backward")
    ] = False,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="break down by layer too")] = False,
    min_runs: Annotated[int, typer.Option(help="fewest timed runs of the whole net (>= 2)")] = 5,
    min_time: Annotated[float, typer.Option(help="CPU: seconds of timed runs at least")] = 0.5,
    hooked_runs: Annotated[int, typer.Option(help="runs for the stage/layer breakdown (>= 2)")] = 5,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
    stock: Annotated[bool, typer.Option(help="also run stock fvcore and FlopCounterMode")] = True,
    out: Annotated[Path | None, typer.Option(help="write DIR/net.{md,csv,json}")] = None,
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="draw PNG plots beside the markdown")
    ] = True,
    op_times: Annotated[bool, typer.Option(
        "--op-times/--no-op-times",
        help="per-op self time of each stage beside its MACs (torch.profiler)")] = True,
    energy: Annotated[bool, typer.Option(
        "--energy/--no-energy", help="joules per pass from the device's energy counter (NVML, RAPL)")] = True,
    trace: Annotated[Path | None, typer.Option(
        help="write DIR/net-trace.json.gz: the profiled runs as a Chrome/Perfetto trace")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="print only the paths written")] = False,
) -> None:
    """Profile a whole network: totals, stages, layers, and the paper's table."""
    from lrprof.build.nets import list_nets
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.net import NetSpec, partial_nets, profile_nets
    from lrprof.profile.progress import Progress
    from lrprof.report import report_paths
    from lrprof.report.net import net_report
    from lrprof.report.run import RunningReport
    from lrprof.spec.layer import parse_size, resolve_device
    from lrprof.spec.options import MeasureOptions

    if list_:
        from lrprof.report import terminal_width, wrapped_table

        table = wrapped_table([[n.name, n.summary] for n in list_nets()], ["network", "what"],
                              terminal_width(), narrowest=26)
        typer.echo(table)
        return
    if name is None:
        raise SpecError("net", "a network name (lrprof net --list shows them)", None)
    options = MeasureOptions.for_net(
        backward=backward,
        per_layer=per_layer,
        timing=TimingOptions(warmup=1, warmup_s=0.0, min_runs=min_runs, min_time_s=min_time),
        hooked_runs=hooked_runs,
        stock_counters=stock,
        op_times=op_times,
        energy=energy,
        trace=str(trace) if trace else None,
    )
    set_threads(threads)
    height, width = parse_size(size)
    resolved = resolve_device(device)
    known = {n.name: n for n in list_nets()}
    for key, value in (("k", k), ("m", m), ("impl", impl)):
        if value is not None and name in known and key not in known[name].options:
            takes = ", ".join(n for n, d in known.items() if key in d.options) or "none"
            raise SpecError(key, f"not an option of {name}: it has no layer this option sets (networks "
                            f"that take --{key}: {takes})", value)
    choice = None
    impl_op = known[name].impl_op if name in known else None
    if impl_op is not None and impl in (None, AUTO_IMPL):
        from lrprof.build.ops.registry import get_op
        from lrprof.profile.choice import choose_impl

        params = {key: v for key, v in (("k", k), ("m", m)) if v is not None}
        choice = choose_impl(get_op(impl_op), resolved, dtype, params)
        impl = choice.impl
    if impl is not None:
        _check_impl(impl, resolved, dtype)
    overrides = tuple((key, v) for key, v in (("k", k), ("m", m), ("impl", impl)) if v is not None)
    specs = [NetSpec(name, batch, height, width, dtype, str(resolved), overrides)]
    specs[0].validate()
    if vs is not None:
        same_op = choice is None or (vs in known and known[vs].impl_op == impl_op)
        vs_options = (("impl", impl),) if impl is not None and "impl" in _net_options(vs) and same_op else ()
        specs.append(NetSpec(vs, batch, height, width, dtype, str(resolved), vs_options))
        try:
            specs[1].validate()
        except SpecError as exc:  # name the option, not the positional NAME
            raise SpecError("vs", exc.allowed, exc.got) from None
    out = out_dir(out)
    running = RunningReport(
        "net", report_paths("net", out),
        lambda profiles, env: net_report(profiles, argv(), env,
                                              impl_choices=[choice.text()] if choice else []),
        lambda why, profiles: partial_nets(why, profiles, [s.label for s in specs]))
    on_interrupt(running.keep)
    with Progress(total=len(specs), what="steps", title="lrprof net", quiet=quiet,
                  delay_s=PROGRESS_DELAY_S) as reporter:
        profiles = profile_nets(specs, options, on_update=running.update, progress=reporter,
                                on_start=running.start)
    report, written = running.finish(profiles, plots=plots)
    show(report, written, quiet)
    noise_warnings([p.net for p in profiles])
    raise typer.Exit(failures([p.net for p in profiles]))


def _net_options(name: str) -> dict:
    from lrprof.build.nets import get_net

    try:
        return get_net(name).options
    except SpecError:
        return {}  # an unknown name: validate() below says so, naming --vs


def _check_impl(impl: str, device, dtype: str) -> None:
    """The local relation implementation exists and runs on this device and dtype."""
    from lrprof.build.ops.registry import get_op
    from lrprof.profile.layer import available_impls

    op = get_op("lr")
    reason = op.impl(impl).unavailable_reason(device, dtype)
    if reason is not None:
        ok, _ = available_impls(op, device, dtype)
        raise SpecError("impl", f"{impl} cannot run here ({reason}); available: {', '.join(ok)}", impl)
