"""`lrprof layer`: options shared by every operator, plus one option per operator parameter,
generated from the operators' schemas (`lrprof ops` lists them)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from lrprof.cli import app, argv, emit, failures, out_dir, set_threads
from lrprof.errors import SpecError

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
    ("out", Path | None, None, "write DIR/layer.{md,csv,json}"),
]
FLAGS: list[tuple[str, str, bool, str]] = [
    ("backward", "--backward", False, "also count and time forward+backward"),
    ("stock", "--stock/--no-stock", True, "also run stock fvcore and FlopCounterMode"),
    ("check_output", "--check-output/--no-check-output", True,
     "check each output against the operator's float64 reference"),
    ("roofline", "--roofline/--no-roofline", True,
     "measure the device's copy and matmul ceilings (once per run) and place each row"),
    ("quiet", "--quiet", False, "print only the paths written"),
]


def operator_params() -> dict[str, Any]:
    """Every operator parameter by name, with the operators that take it (a name two
    operators share must mean the same type)."""
    from lrprof.ops import list_ops

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


def _signature() -> inspect.Signature:
    reserved = {name for name, *_ in COMMON} | {name for name, *_ in FLAGS}
    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=Annotated[kind, typer.Option(help=text)])
        for name, kind, default, text in COMMON
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=Annotated[bool, typer.Option(flag, help=text)])
        for name, flag, default, text in FLAGS
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
    from lrprof.grid import layer_grid
    from lrprof.layer import MeasureOptions, layer_report, prepare_spec, profile_layers
    from lrprof.measure.device import collect
    from lrprof.measure.timing import TimingOptions
    from lrprof.spec import resolve_device

    common = {name: options.pop(name) for name, *_ in COMMON}
    flags = {name: options.pop(name) for name, *_ in FLAGS}
    op_params = {name: value for name, value in options.items() if value is not None}
    if common["baseline"] not in ("conv3x3", "none"):
        raise SpecError("baseline", "conv3x3 or none", common["baseline"])
    timing = TimingOptions(min_runs=common["min_runs"], min_time_s=common["min_time"])
    set_threads(common["threads"])
    device = resolve_device(common["device"])
    grid = layer_grid(common["op"], op_params, common["impl"], common["channels"], common["size"],
                      common["batch"], common["dtype"], str(device))
    specs = [prepare_spec(spec) for spec in grid.specs]  # every row valid before anything runs
    out = out_dir(common["out"])
    measure = MeasureOptions(backward=flags["backward"], timing=timing, stock_counters=flags["stock"],
                             check_output=flags["check_output"], baseline=common["baseline"] != "none",
                             roofline=flags["roofline"])
    environment = collect(device)  # before measuring: a failure here loses nothing
    records = profile_layers(specs, measure)
    report = layer_report(records, argv(), environment, grid.unavailable)
    emit(report, out, flags["quiet"])
    raise typer.Exit(failures(records))


layer.__signature__ = _signature()  # type: ignore[attr-defined]
layer.__annotations__ = {name: p.annotation for name, p in layer.__signature__.parameters.items()}
app.command("layer", help=HELP)(layer)
