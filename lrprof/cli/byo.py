"""`lrprof layer --module`: a user's own nn.Module profiled like lrprof's layers, and what it
shares with `lrprof check`: the user's code failing (import, build, forward) is one line on
stderr and exit 1, bad input one line naming the option and exit 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import typer

from lrprof.cli.app import EXIT_FAILED, argv, cuda_only, emit, failures, out_dir, set_threads
from lrprof.spec.errors import SpecError

MODULE_ONLY = ("init", "input", "compile")  # options that mean nothing without --module
NOT_WITH_MODULE = ("op", "impl", "channels", "size", "batch")  # the module and --input say these
NOT_WITH_MODULE_FLAGS = ("instructions",)  # replicated and callgrind runs rebuild lrprof's rows


@contextlib.contextmanager
def user_code() -> Iterator[None]:
    """The user's class failing to import, build or run: one line, exit 1 (the
    implementation failed, not the command line)."""
    from lrprof.build.usermodule import ModuleFailure

    try:
        yield
    except ModuleFailure as exc:
        typer.echo(f"lrprof: error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != ()


def module_mode(common: dict[str, Any]) -> bool:
    """True with --module; the module-only options without it are an error."""
    if common.get("module") is not None:
        return True
    for name in MODULE_ONLY:
        if _given(common.get(name)):
            raise SpecError(name, "only with --module (a user's own nn.Module)", common[name])
    return False


def module_layer(common: dict[str, Any], flags: dict[str, Any], op_params: dict[str, Any],
                 declared: list[tuple]) -> None:
    """`lrprof layer --module ...`: raises typer.Exit with the run's status."""
    from lrprof.build.usermodule import ModuleSpec
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.module import profile_module
    from lrprof.report.module import module_report
    from lrprof.spec.layer import resolve_device
    from lrprof.spec.options import MeasureOptions

    if op_params:
        name = sorted(op_params)[0]
        raise SpecError(name, "an operator parameter: with --module, give the constructor's "
                        "arguments in --init", op_params[name])
    for name in NOT_WITH_MODULE_FLAGS:
        if flags.get(name):
            raise SpecError(name, "not with --module (it measures lrprof's own operators only)", True)
    defaults = {name: default for name, _, default, *_ in declared}
    if common.get("repeat", 1) != 1:
        raise SpecError("repeat", "not with --module (it measures lrprof's own operators only)",
                        common["repeat"])
    for name in NOT_WITH_MODULE:
        if common[name] != defaults[name]:
            raise SpecError(name, "not with --module: the constructor's arguments come from --init, "
                            "the input's shape from --input", common[name])
    if common["baseline"] not in ("conv3x3", "none"):
        raise SpecError("baseline", "conv3x3 or none", common["baseline"])
    if not _given(common["input"]):
        raise SpecError("input", "with --module, the shape of each input tensor, such as 1x64x56x56", None)
    timing = TimingOptions(min_runs=common["min_runs"], min_time_s=common["min_time"],
                           cold=flags["cold"], cuda_graphs=flags["cuda_graphs"])
    set_threads(common["threads"])
    device = resolve_device(common["device"])
    cuda_only(flags, device)
    spec = ModuleSpec.create(common["module"], common["init"], common["input"], common["dtype"],
                             str(device), common["compile"])
    out = out_dir(common["out"])
    options = MeasureOptions(backward=flags["backward"], timing=timing, stock_counters=flags["stock"],
                             baseline=common["baseline"] != "none", op_times=flags["op_times"],
                             energy=flags["energy"], trace=str(common["trace"]) if common["trace"] else None)
    with user_code():
        profile = profile_module(spec, options)
    emit(module_report(profile, argv()), out, flags["quiet"], plots=flags["plots"])
    raise typer.Exit(failures(profile.records))
