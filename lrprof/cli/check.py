"""`lrprof check`: audit your implementation of an operator against lrprof's (output shape,
receptive field, equivariance, borders, registration, dtypes, determinism, cost, latency
and memory), one row per check; exit 0 when all pass, 1 when any fails, 2 for bad input."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import EXIT_FAILED, EXIT_OK, app, argv, emit, out_dir, say, set_threads
from lrprof.cli.byo import user_code
from lrprof.cli.options import schema_options, shared
from lrprof.spec.errors import SpecError

HELP = """Audit your implementation of an operator against lrprof's.

The operator's parameters are mapped onto your constructor's argument names (shown in the
report; --init adds or overrides arguments), then every check runs and is one row:

  lrprof check path/to/layers.py:LocalRelationalLayer --op lr --channels 64 --k 7 --m 8

  lrprof check mypkg.attention:AttentionConv --op sasa --channels 64 --k 7 --heads 8
"""

COMMON: list[tuple] = [
    *shared("op", op="the operator your class implements (lrprof ops lists them)"),
    ("channels", int, 64, "channels C"),
    *shared("size", size="input size N or HxW"),
    ("batch", int, 1, "batch size B of the counted and timed runs"),
    *shared("device", "dtype", "init",
            dtype="dtype of the counted and timed runs (probes run in float64, and float16 and bfloat16)",
            init="constructor arguments as a JSON object: added to, and overriding, the ones mapped "
                 "from the operator's parameters"),
    ("max_work_ratio", float, 1.5, "the cost check fails above this many times the operator's exact "
                                   "MACs (or exponentials), and below 1"),
    *shared("threads", "min_runs", "min_time", "out",
            min_runs="fewest timed runs per implementation and phase (>= 2)",
            min_time="CPU: seconds of timed calls per implementation and phase, at least",
            out="write DIR/check.{md,csv,json}"),
]
FLAGS: list[tuple[str, str, bool, str]] = [
    ("backward", "--backward", False, "also time forward+backward"),
    ("stock", "--stock/--no-stock", True, "also run stock fvcore and FlopCounterMode"),
    ("quiet", "--quiet", False, "print only the paths written"),
]
ARGUMENTS = (inspect.Parameter(
    "target", inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[str, typer.Argument(
        metavar="CLASS", help="your class: path/to/file.py:ClassName or package.module:ClassName")]),)


def check(**options: Any) -> None:
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.audit import run_audit
    from lrprof.report.audit import audit_report
    from lrprof.spec.layer import LayerSpec, parse_size, resolve_device
    from lrprof.spec.options import MeasureOptions

    target = options.pop("target")
    common = {name: options.pop(name) for name, *_ in COMMON}
    flags = {name: options.pop(name) for name, *_ in FLAGS}
    op_params = {name: value for name, value in options.items() if value is not None}
    for name, value in op_params.items():
        if isinstance(value, str) and ("," in value or ":" in value):
            raise SpecError(name, "one value: check audits one configuration (layer and sweep take "
                            "comma lists and ranges)", value)
    height, width = parse_size(common["size"])
    set_threads(common["threads"])
    device = resolve_device(common["device"])
    spec = LayerSpec(op=common["op"], channels=common["channels"], height=height, width=width,
                     batch=common["batch"], dtype=common["dtype"], device=str(device), **op_params)
    audit_options = MeasureOptions.for_audit(
        max_work_ratio=common["max_work_ratio"], backward=flags["backward"],
        timing=TimingOptions(min_runs=common["min_runs"], min_time_s=common["min_time"]),
        stock_counters=flags["stock"])
    out = out_dir(common["out"])
    with user_code():  # run_audit checks every input before anything runs
        audit = run_audit(target, spec, common["init"], audit_options)
    emit(audit_report(audit, argv()), out, flags["quiet"])
    for result in audit.results:
        if result.passed is False:
            say(f"lrprof: check failed: {result.check}: {result.measured}")
    raise typer.Exit(EXIT_FAILED if audit.failed else EXIT_OK)


schema_options(check, COMMON, FLAGS, ARGUMENTS, lists=False)
app.command("check", help=HELP, epilog=helptext.CHECK)(check)
