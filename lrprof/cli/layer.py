"""`lrprof layer`: options shared by every operator, plus one option per operator parameter,
generated from the operators' schemas (`lrprof ops` lists them)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import app, argv, failures, noise_warnings, on_interrupt, out_dir, set_threads, show
from lrprof.spec.errors import SpecError

UNFINISHED_EVERY_S = 2.0  # the unfinished report is rewritten at most this often
PROGRESS_DELAY_S = 2.0  # shorter work shows no progress at all
HELP = "Measure layer configurations beside a 3x3 conv baseline, and check them against their cost models."

# name, type, default, help: the options every operator shares
COMMON: list[tuple[str, Any, Any, str]] = [
    ("op", str, "lr", "operator(s), comma-separated (lrprof ops lists them)"),
    ("impl", str | None, None, "implementation(s), comma-separated, or all (default: the operator's first)"),
    ("channels", str, "64", "channels C (comma-separated for several)"),
    ("size", str, "56", "input size N or HxW (comma-separated for several)"),
    ("batch", str, "1", "batch size B"),
    ("device", str, "auto", "cpu, cuda, cuda:N (default: cuda if present)"),
    ("dtype", str, "float32", "float32, float16, bfloat16 or float64"),
    ("baseline", str, "conv3x3", "conv3x3 (a dense 3x3 conv of each row's shape, same run) or none"),
    ("threads", int | None, None, "CPU threads (default: torch's)"),
    ("min_runs", int, 10, "fewest timed runs per row and phase (>= 2)"),
    ("min_time", float, 0.5, "CPU: seconds of timed calls per row and phase, at least"),
    ("repeat", int, 1, "time all rows in N fresh processes (interleaved in each) and pool their runs; "
     "the report gives the spread between processes beside the spread within one"),
    ("out", Path | None, None, "write DIR/layer.{md,csv,json}"),
    # a user's own nn.Module instead of an operator (lrprof/cli/byo.py)
    ("module", str | None, None, "profile your own nn.Module: path/to/file.py:Class or "
                                 "package.module:Class (instead of --op)"),
    ("init", str | None, None, "--module: constructor arguments as a JSON object"),
    ("input", list[str] | None, None, "--module: input shape(s) such as 1x64x56x56 (comma-separated "
                                      "or repeated, one per input tensor)"),
    ("compile", str | None, None, "--module: torch.compile it first with this backend (inductor, "
                                  "aot_eager, eager ...)"),
]
FLAGS: list[tuple[str, str, bool, str]] = [
    ("backward", "--backward", False, "also count and time forward+backward"),
    ("instructions", "--instructions", False,
     "also count instructions per call under callgrind (CPU rows; needs valgrind; slow: one "
     "valgrind process for all rows, a minute or more)"),
    ("stock", "--stock/--no-stock", True, "also run stock fvcore and FlopCounterMode"),
    ("check_output", "--check-output/--no-check-output", True,
     "check each output against the operator's float64 reference"),
    ("plots", "--plots/--no-plots", True, "draw PNG plots beside the markdown (several rows)"),
    ("roofline", "--roofline/--no-roofline", True,
     "measure the device's copy and matmul ceilings (once per run) and place each row"),
    ("quiet", "--quiet", False, "print only the paths written"),
]


def operator_params() -> dict[str, Any]:
    """Every operator parameter by name, with the operators that take it (a name two
    operators share must mean the same type)."""
    from lrprof.build.ops.registry import list_ops

    found: dict[str, Any] = {}
    for op in list_ops():
        for param in op.schema.params:
            entry = found.setdefault(param.name, {"param": param, "ops": [], "helps": []})
            if entry["param"].type is not param.type:
                raise TypeError(f"parameter {param.name}: {op.name} declares {param.type.__name__}, "
                                f"{entry['ops'][0]} {entry['param'].type.__name__}")
            entry["ops"].append(op.name)
            if param.help not in entry["helps"]:
                entry["helps"].append(param.help)
    return found


def command_signature(common: list[tuple] = COMMON, flags: list[tuple] = FLAGS,
                      arguments: tuple[inspect.Parameter, ...] = ()) -> inspect.Signature:
    """The options of a command that takes every operator's parameters (`layer`, `sweep`):
    `common` entries are (name, type, default, help[, flag]), `flags` (name, flag, default, help);
    `arguments` are positional parameters that come first (`check`'s class)."""
    reserved = {name for name, *_ in common} | {name for name, *_ in flags}
    params = list(arguments) + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=Annotated[kind, typer.Option(*decls, help=text)])
        for name, kind, default, text, *decls in common
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=Annotated[bool, typer.Option(flag, help=text)])
        for name, flag, default, text in flags
    ]
    for name, entry in sorted(operator_params().items()):
        if name in reserved:
            raise TypeError(f"operator parameter {name} clashes with a common option")
        param = entry["param"]
        text = f"{'; '.join(entry['helps'])} [{', '.join(entry['ops'])}]"
        if param.type is bool:
            option = typer.Option(f"{param.flag}/--no-{param.flag[2:]}", help=text, show_default=False)
            annotation = Annotated[bool | None, option]
        else:
            annotation = Annotated[str | None, typer.Option(help=text + " (comma-separated for several)",
                                                           show_default=False)]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=annotation))
    return inspect.Signature(params)


def layer(**options: Any) -> None:
    import lrprof.cli.byo as byo
    from lrprof.build.grid import layer_grid
    from lrprof.measure import instructions
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.layer import MeasureOptions, partial_layers, prepare_spec, profile_layers
    from lrprof.profile.progress import Progress
    from lrprof.report import report_paths
    from lrprof.report.layer import layer_report
    from lrprof.report.run import RunningReport
    from lrprof.spec.layer import resolve_device

    common = {name: options.pop(name) for name, *_ in COMMON}
    flags = {name: options.pop(name) for name, *_ in FLAGS}
    op_params = {name: value for name, value in options.items() if value is not None}
    if byo.module_mode(common):
        byo.module_layer(common, flags, op_params, COMMON)
        return
    if common["baseline"] not in ("conv3x3", "none"):
        raise SpecError("baseline", "conv3x3 or none", common["baseline"])
    timing = TimingOptions(min_runs=common["min_runs"], min_time_s=common["min_time"])
    set_threads(common["threads"])
    device = resolve_device(common["device"])
    grid = layer_grid(common["op"], op_params, common["impl"], common["channels"], common["size"],
                      common["batch"], common["dtype"], str(device))
    specs = [prepare_spec(spec) for spec in grid.specs]  # every row valid before anything runs
    if flags["instructions"]:
        if device.type != "cpu":
            raise SpecError("instructions", "counts CPU instructions: use it with --device cpu",
                            str(device))
        instructions.check_available()
    out = out_dir(common["out"])
    measure = MeasureOptions(backward=flags["backward"], timing=timing, stock_counters=flags["stock"],
                             check_output=flags["check_output"], baseline=common["baseline"] != "none",
                             repeat=common["repeat"], instructions=flags["instructions"],
                             roofline=flags["roofline"])
    paths = report_paths("layer", out)
    running = RunningReport(
        "layer", paths, lambda records, env: layer_report(records, argv(), env, grid.unavailable),
        lambda why, records: partial_layers(why, records, len(specs), measure.repeat),
        every_s=UNFINISHED_EVERY_S)
    on_interrupt(running.keep)
    with Progress(total=len(specs), what="steps", title="lrprof layer", quiet=flags["quiet"],
                  delay_s=PROGRESS_DELAY_S) as reporter:
        records = profile_layers(specs, measure, on_update=running.update, progress=reporter,
                                 on_start=running.start)
    report, written = running.finish(records, plots=flags["plots"])
    show(report, written, flags["quiet"])
    noise_warnings(records)
    raise typer.Exit(failures(records))


_SCHEMA_COMMANDS: list[tuple[Any, list[tuple], list[tuple], tuple[inspect.Parameter, ...]]] = []


def _apply(fn: Any, common: list[tuple], flags: list[tuple],
           arguments: tuple[inspect.Parameter, ...] = ()) -> None:
    fn.__signature__ = command_signature(common, flags, arguments)
    fn.__annotations__ = {name: p.annotation for name, p in fn.__signature__.parameters.items()}


def schema_options(fn: Any, common: list[tuple] = COMMON, flags: list[tuple] = FLAGS,
                   arguments: tuple[inspect.Parameter, ...] = ()) -> Any:
    """Give a command its common options plus one option per operator parameter (kept in
    step with the registry by `refresh`)."""
    _SCHEMA_COMMANDS.append((fn, common, flags, arguments))
    _apply(fn, common, flags, arguments)
    return fn


def refresh() -> None:
    """Options from the operators registered now (one registered after import, by a test or
    a user's package, gets its options on the next invocation)."""
    for fn, common, flags, arguments in _SCHEMA_COMMANDS:
        _apply(fn, common, flags, arguments)


schema_options(layer)
app.command("layer", help=HELP, epilog=helptext.LAYER)(layer)
