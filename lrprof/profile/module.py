"""Profile a user's own nn.Module the way lrprof profiles its own layers: latency (forward,
and forward+backward), peak memory, parameters, MACs counted at the dispatcher forward and
backward (uncounted ops listed), the stock counters beside them family by family, a table
of every submodule (its share of the MACs and of the time), and a dense 3x3 convolution of
the input's shape timed in the same interleaved schedule.

    spec = ModuleSpec.create("layers.py:MyLayer", '{"channels": 64}', "1x64x56x56")
    profile = profile_module(spec)                  # or profile_instance(module, inputs)
    report = module_report(profile)

A `torch.compile`d module is profiled too: its count is of the eager ops dynamo runs (see
lrprof.measure.counting), its latency that of the compiled code; its submodules run fused,
so they get MACs but no time of their own.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from lrprof.build.usermodule import (
    ModuleFailure,
    ModuleSpec,
    build_module,
    check_arguments,
    load_target,
    random_inputs,
    run_once,
)
from lrprof.measure import counting
from lrprof.measure.counting import missing_text
from lrprof.measure.device import Environment, collect
from lrprof.measure.parts import METHOD as HOOK_METHOD
from lrprof.measure.parts import Parts, time_parts_interleaved
from lrprof.measure.timing import Stats
from lrprof.profile.checks import settle
from lrprof.profile.steps import Phase, add_stock_counts, measure_memory, phase_calls, run_step, time_rows
from lrprof.profile.where import add_energy, add_op_times, trace_path
from lrprof.record.records import Record
from lrprof.spec.layer import DTYPES, LayerSpec, resolve_device
from lrprof.spec.options import MeasureOptions

WHOLE = "(whole module)"  # the part name of the root module
COMPILED_PREFIX = "_orig_mod"


@dataclass
class ModuleProfile:
    record: Record  # kind "module": the whole module
    parts: list[Record] = field(default_factory=list)  # kind "module-part": every submodule
    baseline: Record | None = None
    module: nn.Module | None = None
    inputs: tuple[Any, ...] = ()
    phases: dict[str, Phase] = field(default_factory=dict)
    environment: Environment | None = None  # collected before anything was measured

    @property
    def records(self) -> list[Record]:
        return [self.record] + ([self.baseline] if self.baseline else []) + self.parts


def eager_module(module: nn.Module) -> nn.Module:
    """The module a `torch.compile` wrapper holds, or the module itself."""
    inner = getattr(module, COMPILED_PREFIX, None)
    return inner if isinstance(inner, nn.Module) else module


def is_compiled(module: nn.Module) -> bool:
    return eager_module(module) is not module


def _part_name(name: str) -> str:
    """Counting a compiled module names its parts '_orig_mod.x': the eager module's 'x'."""
    if name == COMPILED_PREFIX:
        return ""
    if name.startswith(COMPILED_PREFIX + "."):
        return name[len(COMPILED_PREFIX) + 1:]
    return name


def _first_tensor(value: Any) -> torch.Tensor | None:
    return next((t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)), None)


def _kind(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__} with no tensor in it"


def count_module(record: Record, module: nn.Module, inputs: Sequence[Any], options: MeasureOptions) -> None:
    """Forward MACs per submodule (inclusive); with `options.backward`, the backward pass's
    totals. Two counting passes: torch's ModuleTracker cannot follow `autograd.grad` into
    the input's gradient, so the backward count runs without it."""
    with warnings.catch_warnings():  # dynamo warns that the tracker's global hooks fire twice
        warnings.simplefilter("ignore", UserWarning)
        counted = counting.count(module, *inputs, per_module=True)
        backward = counting.count(module, *inputs, backward=True) if options.backward else None
        if options.stock_counters:
            add_stock_counts(record, module, inputs, counted)
    record.counted.update({"fwd_MACs": counted.macs, "fwd_exps": counted.softmax_exps})
    ops = list(counted.by_op)
    uncounted = dict(counted.uncounted)
    opaque = list(counted.opaque)
    if backward is not None:
        record.counted.update({"bwd_MACs": backward.bwd_macs, "bwd_exps": backward.bwd_exps})
        ops += [o for o in backward.by_op if o.phase == counting.BWD]
        uncounted.update({k: v for k, v in backward.uncounted.items() if k.endswith("(backward)")})
        opaque += [o for o in backward.opaque if o not in opaque]
    complete = dataclasses.replace(counted, uncounted=uncounted, opaque=tuple(opaque))
    record.checks.update({"uncounted_ops": missing_text(complete), "uncounted": bool(uncounted),
                          "opaque": bool(opaque)})
    module_macs: dict[str, int] = {}
    for name, macs in counted.module_macs.items():
        part = _part_name(name)
        module_macs[part] = max(module_macs.get(part, 0), macs)  # '' and '_orig_mod' are one
    record.detail.update({"ops": [dataclasses.asdict(o) for o in ops], "uncounted": uncounted,
                          "opaque": opaque, "module_macs": module_macs,
                          "counting_method": counting.METHOD})


def prepare_module_row(record: Record, module: nn.Module, inputs: Sequence[Any], device: torch.device,
                       options: MeasureOptions) -> dict[str, Phase]:
    """Count the module and get its phases ready to time beside other rows; failures stay
    in the record's `error`."""
    record.counted["params"] = sum(p.numel() for p in module.parameters())
    record.detail["device"] = str(device)
    run_step(record, "counting", lambda: count_module(record, module, inputs, options), device)
    settle(record.checks)
    phases: dict[str, Phase] = {}
    run_step(record, "preparing timing",
             lambda: phases.update(phase_calls(module, inputs, options.backward)), device)
    return phases


def baseline_spec(inputs: Sequence[Any], output: Any, device: torch.device) -> LayerSpec | None:
    """A dense 3x3 conv, C -> C, of the first input's shape (B, C, H, W), its dtype and
    device; stride 2 when the module's output halves the map, else 1."""
    from lrprof.build.ops.registry import resolve_spec
    from lrprof.profile.layer import BASELINE_K

    x = inputs[0] if inputs else None
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype not in DTYPES.values():
        return None
    b, c, h, w = x.shape
    y = _first_tensor(output)
    stride = 1
    if y is not None and y.dim() == 4 and (y.shape[2], y.shape[3]) == ((h + 1) // 2, (w + 1) // 2) \
            and (h, w) != (1, 1):
        stride = 2
    dtype = next(name for name, value in DTYPES.items() if value == x.dtype)
    return resolve_spec(LayerSpec(op="conv", channels=c, height=h, width=w, batch=b, dtype=dtype,
                                  device=str(device), k=BASELINE_K, stride=stride))


def profile_module(spec: ModuleSpec, options: MeasureOptions | None = None) -> ModuleProfile:
    """Load, build and profile the class `spec` names. Bad input raises SpecError; the
    user's code failing to import, build or run raises ModuleFailure; failures while
    measuring stay in the records."""
    options = options or MeasureOptions()
    target = load_target(spec.target)
    kwargs = spec.kwargs
    check_arguments(target, kwargs)
    device = resolve_device(spec.device)
    module = build_module(target, kwargs, device, spec.torch_dtype, options.seed)
    if spec.compile:
        module = torch.compile(module, backend=spec.compile)
    inputs = random_inputs(spec.inputs, spec.torch_dtype, device, options.seed)
    record = Record(kind="module", name=spec.label(), config=spec.config())
    record.detail.update({"source": target.source, "source_sha256": target.sha256,
                          "class": target.attribute, "init": kwargs})
    return profile_instance(module, inputs, options, record=record, device=device,
                            what=target.call_text(kwargs))


def profile_instance(module: nn.Module, inputs: Sequence[Any], options: MeasureOptions | None = None,
                     record: Record | None = None, device: torch.device | None = None,
                     what: str | None = None) -> ModuleProfile:
    """Profile a module you built (eager or `torch.compile`d) on `inputs`."""
    options = options or MeasureOptions()
    inputs = tuple(inputs)
    if device is None:
        device = next((t.device for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)),
                      torch.device("cpu"))
    name = what or type(eager_module(module)).__name__
    output = run_once(module, inputs, name)  # the user's failure: ModuleFailure, before anything
    if _first_tensor(output) is None:  # nothing to time a backward through, nothing to check
        raise ModuleFailure(f"running {name}: forward returned {_kind(output)}, not a tensor: lrprof "
                            "measures a module whose forward returns its output tensor(s)")
    if record is None:
        shapes = ",".join("x".join(map(str, t.shape)) for t in inputs if isinstance(t, torch.Tensor))
        record = Record(kind="module", name=f"{name} {shapes}",
                        config={"module": name, "input": shapes, "device": device.type})
    record.derived["role"] = "measured"
    record.detail["compiled"] = is_compiled(module)
    out = _first_tensor(output)
    record.detail["output_shape"] = list(out.shape) if out is not None else None
    profile = ModuleProfile(record, module=module, inputs=inputs, environment=collect(device))
    profile.phases = prepare_module_row(record, module, inputs, device, options)
    timed = [(record, profile.phases)] if profile.phases else []
    if options.baseline:
        spec = baseline_spec(inputs, output, device)
        if spec is not None:
            from lrprof.profile.layer import BASELINE, prepare_row

            measure = MeasureOptions(backward=options.backward, timing=options.timing,
                                     memory_runs=options.memory_runs,
                                     stock_counters=options.stock_counters, baseline=False,
                                     seed=options.seed)
            profile.baseline, base_phases = prepare_row(spec, measure, BASELINE)
            if base_phases:
                timed.append((profile.baseline, base_phases))
    time_rows(timed, device, options.timing)
    for r, phases in timed:
        measure_memory(r, phases, device, options.memory_runs)
    if options.op_times or options.trace:
        add_op_times(timed, device, trace_path(options, "layer"))
    if options.energy:
        add_energy(timed, device)
    derive(record, profile.baseline)
    if profile.baseline is not None:
        derive(profile.baseline, None)
    run_step(record, "module breakdown", lambda: _parts(profile, device, options), device)
    return profile


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def derive(record: Record, baseline: Record | None) -> None:
    """Throughput, and the ratios to the baseline row timed in the same schedule."""
    fwd = record.latency.get("fwd")
    if fwd and record.counted.get("fwd_MACs"):
        record.derived["fwd_GMAC_per_s"] = record.counted["fwd_MACs"] / (fwd.median_ms / 1e3) / 1e9
    if baseline is None:
        return
    record.derived["baseline"] = baseline.name
    for phase in sorted(set(record.latency) | set(record.memory)):
        mine, theirs = record.latency.get(phase), baseline.latency.get(phase)
        record.derived[f"{phase}_latency_vs_baseline"] = _ratio(
            mine.median_ms if mine else None, theirs.median_ms if theirs else None)
        m, t = record.memory.get(phase), baseline.memory.get(phase)
        record.derived[f"{phase}_peak_vs_baseline"] = _ratio(
            m.peak_bytes if m else None, t.peak_bytes if t else None)


def _calls(module: nn.Module, inputs: tuple[Any, ...]) -> dict[str, int]:
    """How often each submodule runs in one eager forward pass."""
    counts: dict[str, int] = {}
    handles = []
    for name, sub in module.named_modules():
        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            counts[name] = counts.get(name, 0) + 1
        handles.append(sub.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return counts


def _children(names: list[str]) -> dict[str, list[str]]:
    """Each module's direct children among `names` ('' is the root)."""
    out: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        if n:
            parent = n.rpartition(".")[0]
            out.setdefault(parent, []).append(n)
    return out


def _parts(profile: ModuleProfile, device: torch.device, options: MeasureOptions) -> None:
    """One record per submodule: MACs (inclusive, and its own ops'), parameters, calls and,
    for an eager module, the time inside it from forward hooks."""
    record = profile.record
    base = eager_module(profile.module)
    modules = dict(base.named_modules())
    names = list(modules)
    children = _children(names)
    module_macs: dict[str, int] = record.detail.get("module_macs", {})
    total = record.counted.get("fwd_MACs")
    calls = _calls(base, profile.inputs)
    stats: dict[str, Stats] = {}
    own_ms: dict[str, float] = {}
    if not is_compiled(profile.module):
        times = time_parts_interleaved([Parts(base, profile.inputs, names)], device,
                                       options.hooked_runs)[0]
        for n in names:
            if calls.get(n):
                stats[n] = Stats.from_times(times[n], 1, HOOK_METHOD)
                own = [t - sum(times[c][i] for c in children[n]) for i, t in enumerate(times[n])]
                own_ms[n] = sorted(own)[len(own) // 2]
        record.derived["hooked_fwd_median_ms"] = stats[""].median_ms if "" in stats else None
    root_ms = stats[""].median_ms if "" in stats else None
    for n in names:
        macs = module_macs.get(n, 0)
        own = macs - sum(module_macs.get(c, 0) for c in children[n])
        r = Record(kind="module-part", name=f"{record.name}:{n or WHOLE}",
                   config={**record.config, "part": n or WHOLE})
        r.counted.update({"params": sum(p.numel() for p in modules[n].parameters()),
                        "fwd_MACs": macs, "own_fwd_MACs": own})
        if n in stats:
            r.latency["fwd"] = stats[n]
        r.derived.update({
            "type": type(modules[n]).__name__,
            "depth": n.count(".") + 1 if n else 0,
            "calls": calls.get(n, 0),
            "MACs_share_pct": 100.0 * macs / total if total else None,
            "own_MACs_share_pct": 100.0 * own / total if total else None,
            "own_ms": own_ms.get(n),
            "latency_share_pct": (100.0 * stats[n].median_ms / root_ms
                                  if n in stats and root_ms else None),
        })
        profile.parts.append(r)

__all__ = ["ModuleProfile", "count_module", "derive", "eager_module", "is_compiled",
           "prepare_module_row", "profile_instance", "profile_module"]
