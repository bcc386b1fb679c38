"""`lrprof count`: the dispatcher counter on its own, no timing and no memory runs: a user's
module, an lrprof operator or a network; totals, the module tree, and every counting
convention family by family. Takes `layer`'s options where they apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import EXIT_FAILED, app, argv, emit, failures, out_dir
from lrprof.cli.layer import COMMON, schema_options
from lrprof.spec.errors import SpecError

HELP = ("Count parameters, MACs (forward, backward) and exponentials of a module, an operator or a "
        "network, and its module tree: no timing, seconds not minutes.")
_SHARED = ("op", "impl", "channels", "size", "batch", "device", "dtype", "module", "init", "input")
COUNT_COMMON: list[tuple[str, Any, Any, str]] = [
    (name, kind, None if name == "op" else default, text)
    for name, kind, default, text in COMMON if name in _SHARED
] + [
    ("net", str | None, None, "count a network lrprof builds (lrprof net --list) instead of --op"),
    ("depth", int, 2, "module tree down to this depth (0: the whole model only)"),
    ("convention", str, "lrprof", "lrprof (the papers'), fvcore (its default handles) or flopcounter "
                                  "(torch's FlopCounterMode, in FLOPs and MACs)"),
    ("out", Path | None, None, "write DIR/count.{md,csv,json}"),
]
COUNT_FLAGS: list[tuple[str, str, bool, str]] = [
    ("backward", "--backward", False, "also count the backward pass"),
    ("input_grad", "--input-grad/--no-input-grad", True,
     "--backward: differentiate the inputs too (off: parameters only, as in training)"),
    ("meta", "--meta", False, "count on the meta device: no weights allocated, no compute (for models "
                              "too large to run); ops that need real values are refused"),
    ("plots", "--plots/--no-plots", True, "accepted as `layer` takes it; a count draws no plots"),
    ("quiet", "--quiet", False, "print only the paths written"),
]


def count(**options: Any) -> None:
    from lrprof.build.usermodule import ModuleFailure
    from lrprof.measure.counting import NeedsValues
    from lrprof.profile.count import count as count_target
    from lrprof.report.count import count_report
    from lrprof.spec.options import MeasureOptions

    common = {name: options.pop(name) for name, *_ in COUNT_COMMON}
    flags = {name: options.pop(name) for name, *_ in COUNT_FLAGS}
    op_params = {name: value for name, value in options.items() if value is not None}
    if common["module"] is None:
        for name in ("init", "input") if common["net"] is None else ("init",):
            if common[name] not in (None, [], ()):
                raise SpecError(name, "only with --module (or --input with --net)", common[name])
    if common["module"] is not None or common["net"] is not None:
        if op_params:
            name = sorted(op_params)[0]
            raise SpecError(name, "an operator parameter: only with --op", op_params[name])
        defaults = {name: default for name, _, default, *_ in COUNT_COMMON}
        for name in ("impl", "channels", "size", "batch"):
            if common[name] != defaults[name]:
                raise SpecError(name, "only with --op (--input gives the shape of a module's or a "
                                "network's input)", common[name])
    if not flags["backward"] and not flags["input_grad"]:
        raise SpecError("input_grad", "only with --backward", False)
    settings = MeasureOptions(backward=flags["backward"], input_grad=flags["input_grad"],
                            convention=common["convention"], meta=flags["meta"], depth=common["depth"])
    out = out_dir(common["out"])
    try:
        profile = count_target(common["module"], init=common["init"], input=common["input"],
                               op=common["op"], op_params=op_params, impl=common["impl"],
                               channels=common["channels"], size=common["size"], batch=common["batch"],
                               net=common["net"], device=common["device"], dtype=common["dtype"],
                               options=settings)
    except (ModuleFailure, NeedsValues) as exc:
        typer.echo(f"lrprof: error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    emit(count_report(profile, argv()), out, flags["quiet"], plots=False)
    record = profile.record
    if record.checks.get("uncounted") or record.checks.get("opaque"):
        typer.echo(f"lrprof: {record.name}: {record.checks['uncounted_ops']} (register a rule with "
                   "lrprof.measure.rules.register_rule)", err=True)
    raise typer.Exit(failures(profile.records[:1]))


schema_options(count, COUNT_COMMON, COUNT_FLAGS)
app.command("count", help=HELP, epilog=helptext.COUNT)(count)
