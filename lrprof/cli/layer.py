"""`lrprof layer`: options shared by every operator, plus one option per operator parameter,
generated from the operators' schemas (`lrprof ops` lists them)."""

from __future__ import annotations

from typing import Any

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import (
    app,
    argv,
    cuda_only,
    failures,
    noise_warnings,
    on_interrupt,
    out_dir,
    set_threads,
    show,
)
from lrprof.cli.options import schema_options, shared
from lrprof.spec.errors import SpecError

UNFINISHED_EVERY_S = 2.0  # the unfinished report is rewritten at most this often
PROGRESS_DELAY_S = 2.0  # shorter work shows no progress at all
HELP = "Measure layer configurations beside a 3x3 conv baseline, and check them against their cost models."

# the options every operator shares (cli/options.py defines each once)
COMMON = shared("op", "impl", "channels", "size", "batch", "device", "dtype", "baseline", "threads",
                "min_runs", "min_time", "repeat", "out", "trace", "module", "init", "input", "compile",
                out="write DIR/layer.{md,csv,json}",
                impl=("auto", "implementation(s), comma-separated, or all; auto: the fastest one ready on "
                              "the device that passes a small output check (the report says which and why; "
                              "lrprof ops lists them, lrprof build readies the fused kernel)"))
FLAGS: list[tuple[str, str, bool, str]] = [
    ("backward", "--backward", False, "also count and time forward+backward"),
    ("instructions", "--instructions", False,
     "also count instructions per call under callgrind (CPU rows; needs valgrind; slow: one "
     "valgrind process for all rows, a minute or more)"),
    ("stock", "--stock/--no-stock", True, "also run stock fvcore and FlopCounterMode"),
    ("check_output", "--check-output/--no-check-output", True,
     "check each output against the operator's float64 reference"),
    ("plots", "--plots/--no-plots", True, "draw PNG plots beside the markdown (several rows)"),
    ("op_times", "--op-times/--no-op-times", True,
     "per-op self time beside per-op MACs, in profiled runs after the timed ones (torch.profiler)"),
    ("energy", "--energy/--no-energy", True, "joules per pass from the device's energy counter (NVML, RAPL)"),
    ("roofline", "--roofline/--no-roofline", True,
     "measure the device's copy and matmul ceilings (once per run) and place each row"),
    ("cold", "--cold", False, "CUDA: flush the L2 cache before each timed call (cold-cache latency)"),
    ("cuda_graphs", "--cuda-graphs", False, "CUDA: time each call as a CUDA graph replay (launch overhead "
                                            "apart)"),
    ("quiet", "--quiet", False, "print only the paths written"),
]


def layer(**options: Any) -> None:
    import lrprof.cli.byo as byo
    from lrprof.build.grid import layer_grid
    from lrprof.build.ops.registry import get_op
    from lrprof.measure import instructions
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.layer import partial_layers, prepare_spec, profile_layers
    from lrprof.profile.progress import Progress
    from lrprof.report import report_paths
    from lrprof.report.layer import layer_report
    from lrprof.report.run import RunningReport
    from lrprof.spec.layer import resolve_device
    from lrprof.spec.options import MeasureOptions

    common = {name: options.pop(name) for name, *_ in COMMON}
    flags = {name: options.pop(name) for name, *_ in FLAGS}
    op_params = {name: value for name, value in options.items() if value is not None}
    if byo.module_mode(common):
        byo.module_layer(common, flags, op_params, COMMON)
        return
    if common["baseline"] not in ("conv3x3", "none"):
        raise SpecError("baseline", "conv3x3 or none", common["baseline"])
    timing = TimingOptions(min_runs=common["min_runs"], min_time_s=common["min_time"],
                           cold=flags["cold"], cuda_graphs=flags["cuda_graphs"])
    set_threads(common["threads"])
    device = resolve_device(common["device"])
    cuda_only(flags, device)
    grid = layer_grid(common["op"], op_params, common["impl"], common["channels"], common["size"],
                      common["batch"], common["dtype"], str(device))
    # every row valid before anything runs (auto chosen)
    specs = [prepare_spec(spec, flags["instructions"]) for spec in grid.specs]
    if flags["instructions"]:
        if device.type != "cpu":
            raise SpecError("instructions", "counts CPU instructions: use it with --device cpu",
                            str(device))
        instructions.check_available()
        for spec in specs:
            problem = get_op(spec.op).impl(spec.impl).valgrind_problem()
            if problem is not None:
                raise SpecError("impl", f"one valgrind can run with --instructions ({spec.impl}: {problem})",
                                spec.impl)
    out = out_dir(common["out"])
    measure = MeasureOptions(backward=flags["backward"], timing=timing, stock_counters=flags["stock"],
                             check_output=flags["check_output"], baseline=common["baseline"] != "none",
                             repeat=common["repeat"], instructions=flags["instructions"],
                             roofline=flags["roofline"], op_times=flags["op_times"], energy=flags["energy"],
                             trace=str(common["trace"]) if common["trace"] else None)
    paths = report_paths("layer", out)
    running = RunningReport(
        "layer", paths, lambda records, env: layer_report(records, argv(), env, grid.unavailable),
        lambda why, records: partial_layers(why, records, len(specs), measure.repeat),
        every_s=UNFINISHED_EVERY_S)
    on_interrupt(running.keep)
    with Progress(total=len(specs), what="steps", title="lrprof layer", quiet=flags["quiet"],
                  delay_s=PROGRESS_DELAY_S) as reporter:
        records = profile_layers(grid.specs, measure, on_update=running.update, progress=reporter,
                                 on_start=running.start)
    report, written = running.finish(records, plots=flags["plots"])
    show(report, written, flags["quiet"])
    noise_warnings(records)
    raise typer.Exit(failures(records))


schema_options(layer, COMMON, FLAGS)
app.command("layer", help=HELP, epilog=helptext.LAYER)(layer)
