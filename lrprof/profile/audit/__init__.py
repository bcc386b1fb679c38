"""`lrprof check`: audit an implementation of an operator that lrprof did not write.

The user's class is built from the operator's parameters mapped onto its constructor's
argument names (`mapping`), then held against lrprof's own implementation of the operator:
behavioural probes (`probes`: output shape, receptive field, equivariance, border
behaviour, registration, dtypes, determinism), the cost (lrprof's complete count of the
user's module against the operator's exact model at that shape, and what the stock
counters see of it), and latency and peak memory beside lrprof's implementation, timed in
one interleaved schedule.

    audit = run_audit("layers.py:LocalRelationalLayer", LayerSpec(op="lr", channels=64, k=7, m=8))
    audit.failed                      # any check failed
    report = audit_report(audit)

The cost check fails when the count is incomplete (an uncounted op, an opaque kernel), when
the module does less than the operator's exact minimal work (it is not that operator: a
missing term, fewer output positions), or more than `max_work_ratio` times it (filters
computed at every pixel, a softmax per channel instead of per head: exponentials are held
to the model too).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lrprof.build.ops.registry import get_op
from lrprof.build.usermodule import (
    ModuleSpec,
    Target,
    build_module,
    check_arguments,
    load_target,
    parse_init,
    run_once,
)
from lrprof.measure.device import Environment, collect
from lrprof.profile.audit import module_probes, probes
from lrprof.profile.audit.mapping import Mapping, map_arguments
from lrprof.profile.audit.probes import Result, Subject
from lrprof.profile.steps import measure_memory, time_rows
from lrprof.record.records import Record
from lrprof.spec.errors import SpecError, describe
from lrprof.spec.layer import LayerSpec, resolve_device
from lrprof.spec.options import MeasureOptions

DTYPES_PROBED = (torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Audit:
    target: Target
    spec: LayerSpec  # resolved: the operator, its parameters, the input's shape
    mapping: Mapping
    results: list[Result] = field(default_factory=list)
    user: Record | None = None  # kind "module": the user's class, counted and timed
    own: Record | None = None  # kind "layer": lrprof's implementation, same schedule
    checks: list[Record] = field(default_factory=list)  # kind "check": one per result
    environment: Environment | None = None  # collected before anything was measured

    @property
    def failed(self) -> bool:
        return any(r.passed is False for r in self.results)

    @property
    def records(self) -> list[Record]:
        return self.checks + [r for r in (self.user, self.own) if r is not None]


def prepare_audit(target: str, spec: LayerSpec,
                  init: str | dict | None = None) -> tuple[Target, LayerSpec, Mapping]:
    """Validate everything before anything runs: SpecError for bad input (exit 2),
    ModuleFailure when the user's file fails to import."""
    from lrprof.profile.layer import prepare_spec

    kwargs = parse_init(init)
    spec = prepare_spec(spec)
    op = get_op(spec.op)
    if not op.spatial:
        raise SpecError("op", "an operator on (B, C, H, W) maps (lrprof ops lists them)", spec.op)
    loaded = load_target(target)
    mapping = map_arguments(loaded, op, spec, kwargs)
    check_arguments(loaded, mapping.kwargs)
    return loaded, spec, mapping


def run_audit(target: str, spec: LayerSpec, init: str | dict | None = None,
              options: MeasureOptions | None = None) -> Audit:
    """Every check of the user's class against lrprof's implementation of `spec.op`. The
    user's class failing to build or to run once raises ModuleFailure; a probe that fails
    on it is a failed row, and the others still run."""
    options = options or MeasureOptions.for_audit()
    loaded, spec, mapping = prepare_audit(target, spec, init)
    op = get_op(spec.op)
    device = resolve_device(spec.device)
    inputs = op.make_inputs(spec, torch.Generator().manual_seed(options.seed))
    module = build_module(loaded, mapping.kwargs, device, spec.torch_dtype, options.seed)
    run_once(module, inputs, loaded.call_text(mapping.kwargs))
    audit = Audit(loaded, spec, mapping, environment=collect(device))
    reference = spec.replace(impl=op.reference_impl)
    user = Subject(loaded.name, lambda: loaded.obj(**mapping.kwargs), device)
    own = Subject(f"lrprof {op.name}[{op.reference_impl}]",
                  lambda: op.impl(op.reference_impl).build(reference), device)
    audit.results += _probes(user, own, spec, options.seed)
    _measure(audit, module, inputs, device, options)
    audit.results += _cost_results(audit, options)
    audit.checks = [_check_record(audit, r) for r in audit.results]
    return audit


def _guarded(name: str, probe: Any) -> Result:
    try:
        return probe()
    except Exception as exc:  # the probe's failure on the user's module is that row's result
        return Result(name, False, f"raised {describe(exc)}")


def _probes(user: Subject, own: Subject, spec: LayerSpec, seed: int) -> list[Result]:
    op = get_op(spec.op)
    c, h, w = spec.channels, spec.height, spec.width
    x = probes.random_input((2, c, h, w), seed, user.device)
    single = (1, c, h, w)
    k = spec.param("k")
    stride = spec.param(op.stride_param, 1) if op.stride_param else 1
    user64, own64 = user.make(seed), own.make(seed)
    results = [_guarded("output shape", lambda: probes.output_shape(user64, own64, x))]
    found: dict[str, Any] = {}

    def field_probe() -> Result:
        result, found["own"] = probes.receptive_field(user64, own64, x, k)
        return result

    results.append(_guarded("receptive field (gradient probe)", field_probe))
    footprint = found.get("own")
    reach = footprint.reach(stride) if footprint is not None and not footprint.is_global else None
    if reach is None and isinstance(k, int):  # a global operator with a local window (DRConv)
        reach = (k // 2,) * 4
    margin = max(reach) if reach else 0
    x1 = x[:1].contiguous()
    results.append(_guarded("equivariance",
                            lambda: probes.equivariance(user64, own64, x1, stride, reach, seed)))
    results.append(_guarded("border behaviour", lambda: probes.border(
        user64, own64, c, h, w, -(-margin // stride), user.device, seed)))
    results.append(_guarded("every tensor registered",
                            lambda: module_probes.registration(user, single, seed)))
    for dtype in DTYPES_PROBED:
        name = f"runs in {str(dtype).replace('torch.', '')}"
        results.append(_guarded(name, lambda dtype=dtype: module_probes.runs_in(user, own, single, dtype,
                                                                                 seed)))
    results.append(_guarded("deterministic on repeat",
                            lambda: module_probes.determinism(user, single, seed=seed)))
    return results


def _measure(audit: Audit, module: torch.nn.Module, inputs: tuple, device: torch.device,
             options: MeasureOptions) -> None:
    """Count the user's module and time it beside lrprof's default implementation, one
    interleaved schedule; memory of both."""
    from lrprof.profile.layer import prepare_row
    from lrprof.profile.module import prepare_module_row

    spec = audit.spec
    op = get_op(spec.op)
    identity = ModuleSpec(audit.target.text, json.dumps(audit.mapping.kwargs, sort_keys=True, default=str),
                          (tuple(inputs[0].shape),), spec.dtype, str(device))
    user = Record(kind="module", name=f"{audit.target.name} (yours)", config=identity.config())
    user.derived["role"] = "yours"
    user.detail.update({"source": audit.target.source, "source_sha256": audit.target.sha256,
                        "class": audit.target.attribute, "init": audit.mapping.kwargs})
    phases = prepare_module_row(user, module, inputs, device,
                                MeasureOptions(backward=options.backward, timing=options.timing,
                                              memory_runs=options.memory_runs,
                                              stock_counters=options.stock_counters, baseline=False,
                                              seed=options.seed))
    measure = MeasureOptions(backward=options.backward, timing=options.timing,
                             memory_runs=options.memory_runs, stock_counters=False, baseline=False,
                             seed=options.seed)
    own, own_phases = prepare_row(spec.replace(impl=op.default_impl), measure, role="lrprof")
    timed = [(r, p) for r, p in ((user, phases), (own, own_phases)) if p]
    time_rows(timed, device, options.timing)
    for record, record_phases in timed:
        measure_memory(record, record_phases, device, options.memory_runs)
    for phase in ("fwd", "fwd_bwd"):
        mine, theirs = user.latency.get(phase), own.latency.get(phase)
        if mine and theirs:
            user.derived[f"{phase}_latency_vs_lrprof"] = mine.median_ms / theirs.median_ms
        m, t = user.memory.get(phase), own.memory.get(phase)
        if m and t and t.peak_bytes:
            user.derived[f"{phase}_peak_vs_lrprof"] = m.peak_bytes / t.peak_bytes
    audit.user, audit.own = user, own


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3g}x"


def _cost_results(audit: Audit, options: MeasureOptions) -> list[Result]:
    user, own = audit.user, audit.own
    spec = audit.spec
    cost = get_op(spec.op).cost(spec)
    results = []
    counted, exps = user.counted.get("fwd_MACs"), user.counted.get("fwd_exps")
    band = f"1-{options.max_work_ratio:g}x"
    if counted is None:
        results.append(Result("cost (work ratio)", False, f"not counted: {user.error}",
                              f"{cost.macs:,} MACs"))
    else:
        ratio = counted / cost.macs if cost.macs else None
        exp_ratio = exps / cost.softmax_exps if cost.softmax_exps else (1.0 if not exps else math.inf)
        problems = []
        if user.checks.get("uncounted") or user.checks.get("opaque"):
            problems.append(f"incomplete count ({user.checks.get('uncounted_ops')})")
        if ratio is not None and ratio < 1:
            problems.append("less than the operator's exact work: not that operator at this shape")
        if ratio is not None and ratio > options.max_work_ratio:
            problems.append(f"{ratio:.3g}x the operator's work")
        if exp_ratio < 1 or exp_ratio > options.max_work_ratio:
            problems.append(f"{exps:,} exponentials where the operator has {cost.softmax_exps:,}")
        text = (f"{counted:,} MACs = {_ratio_text(ratio)} the exact {cost.macs:,}; exps {exps:,} "
                f"= {_ratio_text(exp_ratio)}; params {user.counted.get('params'):,} (model {cost.params:,})")
        if problems:
            text += ": " + "; ".join(problems)
        results.append(Result("cost (work ratio)", not problems, text,
                              f"complete count, MACs and exps {band} the exact model", ratio))
    if options.stock_counters and counted:
        fv, fc = user.checks.get("fvcore_missed_pct"), user.checks.get("flopcounter_missed_pct")
        stock = user.detail.get("stock") or {}
        parts = []
        for who, missed, error in (("fvcore", fv, stock.get("fvcore_error")),
                                   ("FlopCounterMode", fc, stock.get("flopcounter_error"))):
            parts.append(f"{who} failed ({error})" if error else
                         f"{who} sees {100 - missed:.0f}% of it" if missed is not None else f"{who}: n/a")
        results.append(Result("stock counters' share", None, "; ".join(parts),
                              "what fvcore and FlopCounterMode report of lrprof's count",
                              detail={"info": True}))
    results.append(_timing_result(user, own, "fwd", "latency beside lrprof's implementation"))
    if options.backward:
        results.append(_timing_result(user, own, "fwd_bwd", "fwd+bwd latency beside lrprof's implementation"))
    results.append(_memory_result(user, own))
    return results


def _timing_result(user: Record, own: Record, phase: str, name: str) -> Result:
    mine, theirs = user.latency.get(phase), own.latency.get(phase)
    if mine is None:
        return Result(name, False, f"not measured: {user.error or 'no timing'}")
    if theirs is None:
        return Result(name, None, f"{mine.median_ms:.3f} ms; lrprof's not measured ({own.error})",
                      detail={"info": True})
    ratio = mine.median_ms / theirs.median_ms
    return Result(name, None, f"{mine.median_ms:.3f} ms vs {theirs.median_ms:.3f} ms ({own.name}): "
                  f"{ratio:.3g}x", "same run, interleaved", ratio, detail={"info": True})


def _memory_result(user: Record, own: Record) -> Result:
    name = "peak memory beside lrprof's implementation"
    mine, theirs = user.memory.get("fwd"), own.memory.get("fwd")
    if mine is None:
        return Result(name, False, f"not measured: {user.error or 'no memory figure'}")
    if theirs is None:
        return Result(name, None, f"{mine.peak_bytes / 2**20:.2f} MiB; lrprof's not measured",
                      detail={"info": True})
    ratio = mine.peak_bytes / theirs.peak_bytes if theirs.peak_bytes else None
    return Result(name, None, f"{mine.peak_bytes / 2**20:.2f} MiB vs {theirs.peak_bytes / 2**20:.2f} MiB: "
                  f"{_ratio_text(ratio)}", "forward pass, above the resident inputs and weights", ratio,
                  detail={"info": True})


def _check_record(audit: Audit, result: Result) -> Record:
    config = {"module": audit.target.text,
              "init": json.dumps(audit.mapping.kwargs, sort_keys=True, default=str)}
    config.update({k: v for k, v in audit.spec.config().items() if k != "impl"})
    config["check"] = result.check
    record = Record(kind="check", name=f"{audit.target.name} as {audit.spec.op}: {result.check}",
                    config=config)
    record.checks.update({
        "status": result.status,
        "passed": result.passed,
        "measured": result.measured,
        "expected": result.expected,
        "value": result.figure,
        "failed": result.passed is False,
        "verdict": result.measured if result.passed is False else result.status,
    })
    return record

__all__ = ["Audit", "prepare_audit", "run_audit"]
