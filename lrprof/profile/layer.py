"""Profile layer configurations: build each, count it (forward, and backward on request),
check its output against the operator's float64 reference, time all of them in one
interleaved schedule beside a dense 3x3 convolution of the same shape, measure memory,
and hold the count against the exact and the published cost models.

    records = profile_layers([LayerSpec(op="lr", k=7, m=8)])   # the layer, then its baseline
    report = layer_report(records)                             # a Report: render or write it
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrprof.build.ops import CostModel, OpDef, get_op, resolve_spec
from lrprof.build.ops.registry import spec_label
from lrprof.measure import counting, roofline
from lrprof.measure.accuracy import METHOD as OUTPUT_METHOD
from lrprof.measure.device import Environment, collect
from lrprof.profile.checks import count_checks, reference_check, settle
from lrprof.profile.choice import Choice, is_auto, resolve_auto
from lrprof.profile.instructions import count_rows
from lrprof.profile.progress import NoProgress
from lrprof.profile.replicate import build_row, time_in_processes
from lrprof.profile.steps import Phase, add_stock_counts, measure_memory, phase_calls, run_step, time_rows
from lrprof.profile.where import add_energy, add_op_times, trace_path
from lrprof.record.records import Record
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import LayerSpec, resolve_device
from lrprof.spec.options import MeasureOptions

BASELINE_K = 3
MEASURED, BASELINE = "measured", "baseline"


def available_impls(op: OpDef, device: torch.device, dtype: str) -> tuple[list[str], dict[str, str]]:
    """The implementations that can run here, and why each other one cannot."""
    ok, missing = [], {}
    for impl in op.impls:
        reason = impl.unavailable_reason(device, dtype)
        if reason is None:
            ok.append(impl.name)
        else:
            missing[impl.name] = reason
    return ok, missing


def prepare_spec(spec: LayerSpec, instructions: bool = False) -> LayerSpec:
    """Resolved and validated, on a concrete device, with an implementation that runs there
    (`auto`: the one `profile.choice` picks; with `instructions`, one valgrind can run)."""
    return prepare_and_choose(spec, instructions)[0]


def prepare_and_choose(spec: LayerSpec, instructions: bool = False) -> tuple[LayerSpec, Choice | None]:
    """`prepare_spec`, and what `auto` chose and why (None where the spec named its
    implementation)."""
    device = resolve_device(spec.device)
    choice = None
    if is_auto(spec.impl):  # resolved (defaults filled in) first: auto chooses for these parameters
        spec = resolve_spec(spec.replace(device=str(device), impl=None)).replace(impl=spec.impl)
        spec, choice = resolve_auto(spec, instructions)
    spec = resolve_spec(spec.replace(device=str(device)))
    op = get_op(spec.op)
    reason = op.impl(spec.impl).unavailable_reason(device, spec.dtype)
    if reason is not None:
        ok, _ = available_impls(op, device, spec.dtype)
        raise SpecError("impl", f"{spec.impl} cannot run here ({reason}); available: "
                        f"{', '.join(ok) or 'none'}", spec.impl)
    return spec, choice


def baseline_spec(spec: LayerSpec) -> LayerSpec | None:
    """A dense 3x3 convolution of the row's channels, size, stride, batch, dtype and device."""
    op = get_op(spec.op)
    if not op.spatial:
        return None
    stride = spec.param(op.stride_param, 1) if op.stride_param else 1
    return resolve_spec(LayerSpec(op="conv", channels=spec.channels, height=spec.height,
                                  width=spec.width, batch=spec.batch, dtype=spec.dtype,
                                  device=spec.device, k=BASELINE_K, stride=stride))


@dataclass
class _Row:
    spec: LayerSpec
    record: Record
    roles: list[str]
    device: torch.device
    module: nn.Module | None = None
    inputs: tuple[Any, ...] = ()
    phases: dict[str, Phase] = field(default_factory=dict)
    baseline: _Row | None = None


def _key(spec: LayerSpec) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in spec.config().items()))


def profile_layers(specs: list[LayerSpec], options: MeasureOptions | None = None,
                   on_update: Callable[[list[Record]], None] | None = None,
                   progress: Any = None,
                   on_start: Callable[[Environment], None] | None = None) -> list[Record]:
    """Measure every configuration (and, with `options.baseline`, its 3x3 conv baseline),
    timed in one interleaved schedule. Invalid specs raise SpecError before anything is
    measured; failures while measuring are kept in each record's `error`.
    `on_update(records)` runs after each step (partial reports of an interrupted run);
    `progress` (a `lrprof.profile.progress.Progress`) hears of each step as it starts and ends;
    `on_start(environment)` gets the machine's facts, collected before anything is measured
    (so a failure there loses nothing), the roofline's ceilings added once they are measured."""
    options = options or MeasureOptions()
    progress = progress or NoProgress()
    rows: dict[tuple, _Row] = {}

    def update() -> None:
        if on_update:
            on_update([row.record for row in rows.values()])

    def add(spec: LayerSpec, role: str) -> _Row:
        row = rows.get(_key(spec))
        if row is None:
            record = Record(kind="layer", name=spec_label(spec), config=spec.config())
            if options.timing.identity():  # --cold, --cuda-graphs: another measurement
                record.config["timing"] = options.timing.identity()
            row = rows[_key(spec)] = _Row(spec, record, [], resolve_device(spec.device))
        if role not in row.roles:
            row.roles.append(role)
        return row

    for asked in specs:
        spec, choice = prepare_and_choose(asked, options.instructions)
        row = add(spec, MEASURED)
        if choice is not None:
            row.record.detail["impl_choice"] = choice.to_dict()
    if options.baseline:
        for row in list(rows.values()):
            reference = baseline_spec(row.spec)
            if reference is not None:
                row.baseline = add(reference, BASELINE)
    for row in rows.values():
        row.record.derived["role"] = ", ".join(row.roles)
    environment = collect(next(iter(rows.values())).device if rows else resolve_device("auto"))
    if on_start:
        on_start(environment)
    steps, plan = _plan(len(rows), options)
    progress.plan(steps, plan["total"])
    update()
    for row in rows.values():
        progress.start(f"counting and checking {row.record.name}")
        _prepare(row, options)
        progress.advance(not row.record.error, work=plan["prepare"])
        update()
    for device in {row.device for row in rows.values()}:
        timed = [r for r in rows.values() if r.device == device and r.phases]
        progress.start(f"timing {len(timed)} rows interleaved on {device}")
        if options.repeat > 1:
            time_in_processes([(r.spec, r.record) for r in timed], device, options.repeat,
                              options.timing, options.backward, options.seed,
                              on_process=lambda _: update())
        else:
            time_rows([(r.record, r.phases) for r in timed], device, options.timing)
        progress.advance(True, work=plan["timing"])
        update()
    for row in rows.values():
        progress.start(f"memory of {row.record.name}")
        if row.phases:
            measure_memory(row.record, row.phases, row.device, options.memory_runs)
        progress.advance(True, work=plan["memory"])
    measured = [r for r in rows.values() if r.phases]
    for device in {row.device for row in measured}:
        group = [(r.record, r.phases) for r in measured if r.device == device]
        if options.op_times or options.trace:
            progress.start("where the time goes: per-op times (torch.profiler)")
            add_op_times(group, device, trace_path(options, "layer"))
            progress.advance(True, work=plan["where"])
        if options.energy:
            add_energy(group, device)
    for row in rows.values():
        _derive(row)
        if options.roofline:
            run_step(row.record, "roofline", lambda row=row: _roofline(row), row.device)
    environment.ceilings = [c.to_dict() for c in roofline.measured()]
    update()
    if options.instructions:
        progress.start("counting instructions under callgrind")
        cpu = [r for r in rows.values() if r.phases and r.device.type == "cpu"]
        count_rows([(r.spec, r.record) for r in cpu], options.backward, options.seed)
        progress.advance(True, work=plan["instructions"])
        update()
    return [row.record for row in rows.values()]


def _plan(rows: int, options: MeasureOptions) -> tuple[int, dict[str, float]]:
    """How many steps a profile takes (each row prepared, one timing schedule, each row's
    memory, the instruction count) and each kind's estimated seconds, the ETA's weights."""
    phases = 2 if options.backward else 1
    work = {
        "prepare": 1.5 + (1.0 if options.stock_counters else 0.0),
        "timing": rows * phases * (options.timing.min_time_s + options.timing.warmup_s) * 1.3
        * options.repeat,
        "memory": 0.4 * phases * options.memory_runs,
        "instructions": 60.0 * rows,
        "where": 0.3 * rows * phases,
    }
    where = options.op_times or options.trace
    steps = 2 * rows + 1 + (1 if options.instructions else 0) + (1 if where else 0)
    total = rows * (work["prepare"] + work["memory"]) + work["timing"] + work["where"] + (
        work["instructions"] if options.instructions else 0.0)
    return steps, {**work, "total": total}



def partial_layers(signal_name: str | None, records: list, planned: int, repeat: int) -> dict[str, Any]:
    """What an interrupted layer report holds: a row counts as measured when it was timed
    (with --repeat, in at least one process) or failed with its error recorded."""
    measured = [r for r in records if r.latency or r.error]
    info: dict[str, Any] = {
        "interrupted_by": signal_name,
        "rows_total": len(records) or planned,
        "rows_kept": len(measured),
        "not_measured": [r.name for r in records if r not in measured],
    }
    if repeat > 1:
        done = [s.processes for r in measured for s in r.latency.values()]
        info["processes_done"] = min(done, default=0)
        info["processes_planned"] = repeat
    return info


def profile_layer(spec: LayerSpec, options: MeasureOptions | None = None) -> Record:
    """One configuration's record (its baseline, when measured, gives it its ratios)."""
    return profile_layers([spec], options)[0]


def _prepare(row: _Row, options: MeasureOptions) -> None:
    spec, record, device = row.spec, row.record, row.device
    op = get_op(spec.op)
    cost = op.cost(spec)
    record.counted["params"] = cost.params
    record.model.update({"exact_MACs": cost.macs, "exact_exps": cost.softmax_exps,
                         "paper_O_MACs": cost.paper_macs})
    impl = op.impl(spec.impl)
    record.detail.update({
        "device": str(device),
        "impl": {"name": impl.name, "summary": impl.summary, "backward": impl.backward},
        "terms": [{"term": t.name, "MACs": t.macs, "formula": t.formula} for t in cost.terms],
        "cost_notes": list(cost.notes),
        "paper_formula": cost.paper_formula,
        "activation_bytes": cost.activation_bytes,
        "implementation_bytes": cost.implementation_bytes,
        "minimal_bytes": cost.minimal_bytes,
        "design_bytes": cost.design_bytes,
    })
    record.derived["analytic_activation_bytes"] = sum(cost.activation_bytes.values())
    if cost.minimal_bytes:
        record.derived["minimal_bytes"] = sum(cost.minimal_bytes.values())
    if cost.design_bytes:
        record.derived["design_bytes"] = sum(cost.design_bytes.values())

    def build() -> None:
        row.module, row.inputs = build_row(spec, options.seed, device)

    if not run_step(record, "building", build, device):
        return
    module, inputs = row.module, row.inputs
    prepare = getattr(module, "prepare", None)
    if callable(prepare) and not run_step(record, "preparing (compile, build)",
                                          lambda: _setup(record, prepare, inputs, options), device):
        return
    record.counted["params"] = sum(p.numel() for p in module.parameters())
    run_step(record, "counting", lambda: _count(record, module, inputs, cost, options), device)
    if options.check_output:
        run_step(record, "checking output", lambda: _check_output(row, op, options), device)
    settle(record.checks)
    run_step(record, "preparing timing",
             lambda: row.phases.update(phase_calls(module, inputs, options.backward)), device)


def _setup(record: Record, prepare: Any, inputs: tuple, options: MeasureOptions) -> None:
    """An implementation's one-time work (torch.compile, a C++ build), timed on its own:
    never inside a latency."""
    done = prepare(inputs, options.backward) or {}
    if "setup_s" in done:
        record.derived["setup_s"] = done["setup_s"]
        record.detail["setup"] = done.get("setup", "")


def _roofline(row: _Row) -> None:
    record, fwd = row.record, row.record.latency.get("fwd")
    if fwd is None or "design_bytes" not in record.derived:
        return
    ceiling = roofline.ceilings(row.device, row.spec.dtype)
    macs = record.counted.get("fwd_MACs")
    figures = roofline.roofline(2 * macs if macs is not None else None, record.derived["design_bytes"],
                                record.derived.get("minimal_bytes"), fwd.median_ms / 1e3, ceiling,
                                exps=record.counted.get("fwd_exps"))
    record.derived.update(figures)
    record.detail["ceilings"] = ceiling.to_dict()


def _count(record: Record, module: nn.Module, inputs: tuple, cost: CostModel,
           options: MeasureOptions) -> None:
    counted = counting.count(module, *inputs, backward=options.backward)
    record.counted.update({"fwd_MACs": counted.macs, "fwd_exps": counted.softmax_exps})
    if options.backward:
        record.counted.update({"bwd_MACs": counted.bwd_macs, "bwd_exps": counted.bwd_exps})
    record.checks.update(count_checks(counted, cost.macs, cost.softmax_exps, record.counted["params"],
                                      cost.params, cost.paper_macs, cost.paper_band))
    record.detail["ops"] = [dataclasses.asdict(o) for o in counted.by_op]
    record.detail["uncounted"] = counted.uncounted
    record.detail["opaque"] = list(counted.opaque)
    if options.stock_counters:
        add_stock_counts(record, module, inputs, counted)


def _check_output(row: _Row, op: OpDef, options: MeasureOptions) -> None:
    spec = row.spec
    reference_name = op.reference_impl
    inputs = op.make_inputs(spec, torch.Generator().manual_seed(options.seed + 1))
    check = reference_check(op, spec, row.module, inputs)
    row.record.checks.update({"output_max_rel_err": check.max_rel_err,
                              "output_tolerance": check.tolerance, "output_ok": check.ok})
    row.record.detail["output_check"] = f"{OUTPUT_METHOD} ({reference_name})"
    if check.note:
        row.record.detail["output_check_note"] = check.note


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _derive(row: _Row) -> None:
    record = row.record
    fwd = record.latency.get("fwd")
    if fwd and record.counted.get("fwd_MACs"):
        record.derived["fwd_GMAC_per_s"] = record.counted["fwd_MACs"] / (fwd.median_ms / 1e3) / 1e9
    base = row.baseline
    if base is None:
        return
    record.derived["baseline"] = base.record.name
    for phase in sorted(set(record.latency) | set(record.memory)):
        mine, theirs = record.latency.get(phase), base.record.latency.get(phase)
        record.derived[f"{phase}_latency_vs_baseline"] = _ratio(
            mine.median_ms if mine else None, theirs.median_ms if theirs else None)
        m, t = record.memory.get(phase), base.record.memory.get(phase)
        record.derived[f"{phase}_peak_vs_baseline"] = _ratio(
            m.peak_bytes if m else None, t.peak_bytes if t else None)


def prepare_row(spec: LayerSpec, options: MeasureOptions | None = None,
                role: str = MEASURED) -> tuple[Record, dict[str, Phase]]:
    """One configuration built, counted and (with `options.check_output`) checked, its phases
    ready to time: for a caller that times it in one schedule beside rows of its own (the
    baseline of `layer --module`, lrprof's own implementation in `lrprof check`). Failures
    are kept in the record's `error`, as in `profile_layers`."""
    options = options or MeasureOptions()
    spec = prepare_spec(spec)
    record = Record(kind="layer", name=spec_label(spec), config=spec.config())
    record.derived["role"] = role
    row = _Row(spec, record, [role], resolve_device(spec.device))
    _prepare(row, options)
    return record, row.phases

__all__ = ["available_impls", "baseline_spec", "partial_layers", "prepare_row",
           "prepare_spec", "profile_layer", "profile_layers"]
