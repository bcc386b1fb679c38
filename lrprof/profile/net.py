"""Profile whole networks: totals, a per-stage and (on request) a per-layer breakdown, each
held against the exact count from the operators' models, and the whole net against the
paper's table. Several networks (`net --vs`) are timed in one interleaved schedule.

    profiles = profile_nets([NetSpec("lr50"), NetSpec("resnet50")])
    report = net_report(profiles)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrprof.build.nets import RUNTIME_OPTIONS, STAGES, create_net, display_name, get_net, resolve_options
from lrprof.build.nets.cost import LayerCost, exact_by_layer
from lrprof.build.nets.paper import PAPER_INPUT, choice_rows, paper_checks
from lrprof.measure import counting
from lrprof.measure.device import Environment, collect
from lrprof.measure.parts import METHOD as HOOK_METHOD
from lrprof.measure.parts import Parts, time_parts_interleaved
from lrprof.measure.timing import Stats
from lrprof.profile.checks import count_checks, settle
from lrprof.profile.progress import NoProgress
from lrprof.profile.steps import Phase, add_stock_counts, measure_memory, phase_calls, run_step, time_rows
from lrprof.profile.where import add_energy, add_op_times, trace_path
from lrprof.record.records import Record
from lrprof.spec.errors import require_int
from lrprof.spec.layer import DTYPES, default_device, resolve_device, resolve_dtype
from lrprof.spec.options import MeasureOptions


@dataclass(frozen=True)
class NetSpec:
    name: str
    batch: int = 1
    height: int = 224
    width: int = 224
    dtype: str = "float32"
    device: str = "auto"  # cuda when present, else cpu
    options: tuple[tuple[str, Any], ...] = ()  # builder overrides, e.g. (("k", 5),)

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def label(self) -> str:
        return display_name(self.name, **self.overrides)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.height, self.width)

    @property
    def is_default_net(self) -> bool:
        """The network the papers' tables describe (overrides equal to the defaults count,
        and so do runtime options such as the implementation of its layers)."""
        def model(options: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}

        return model(resolve_options(self.name, **self.overrides)) == model(get_net(self.name).options)

    def config(self) -> dict[str, Any]:
        device = default_device() if self.device == "auto" else self.device
        return {"net": self.label, "batch": self.batch, "height": self.height,
                "width": self.width, "dtype": self.dtype, "device": torch.device(device).type}

    def validate(self) -> None:
        with torch.device("meta"):  # the builder checks its options; meta: no memory, no compute
            create_net(self.name, **self.overrides)
        for name in ("batch", "height", "width"):
            require_int(name if name == "batch" else "size", getattr(self, name), 1)
        resolve_dtype(self.dtype)


def net_costs(spec: NetSpec) -> list[LayerCost]:
    """Every layer's exact cost at this spec's input."""
    return exact_by_layer(spec.name, spec.overrides, spec.input_shape)


@dataclass
class NetProfile:
    spec: NetSpec
    net: Record  # kind "net"
    stages: list[Record] = field(default_factory=list)  # kind "stage"
    layers: list[Record] = field(default_factory=list)  # kind "net-layer"
    layer_costs: list[LayerCost] = field(default_factory=list)  # each layer's operator model
    model: nn.Module | None = None
    x: torch.Tensor | None = None
    phases: dict[str, Phase] = field(default_factory=dict)


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def profile_net(spec: NetSpec, options: MeasureOptions | None = None) -> NetProfile:
    return profile_nets([spec], options)[0]


def profile_nets(specs: list[NetSpec], options: MeasureOptions | None = None,
                 on_update: Callable[[list[NetProfile]], None] | None = None,
                 progress: Any = None,
                 on_start: Callable[[Environment], None] | None = None) -> list[NetProfile]:
    """Count, time and measure networks; their timings and breakdowns interleaved. Invalid
    specs raise SpecError before anything runs; failures while measuring are kept in each
    net record's `error`. `on_update(profiles)` runs after each step (partial reports);
    `progress` (a `lrprof.profile.progress.Progress`) hears of each step as it starts and ends;
    `on_start(environment)` gets the machine's facts before anything is measured."""
    options = options or MeasureOptions.for_net()
    progress = progress or NoProgress()
    for spec in specs:
        spec.validate()
    if on_start:
        on_start(collect(resolve_device(specs[0].device)))
    work = _plan(len(specs), options)
    progress.plan(len(specs) + 2 + (1 if options.per_layer else 0), sum(work.values()))
    profiles = []
    for spec in specs:
        device = resolve_device(spec.device)
        progress.start(f"building and counting {spec.label}")
        profiles.append(_prepare(dataclasses.replace(spec, device=str(device)), device, options))
        progress.advance(not profiles[-1].net.error, work=work["prepare"] / len(specs))
        if on_update:
            on_update(profiles)
    for device in {resolve_device(p.spec.device) for p in profiles}:
        group = [p for p in profiles if p.phases and resolve_device(p.spec.device) == device]
        progress.start(f"timing {' and '.join(p.spec.label for p in group)}, interleaved; memory")
        time_rows([(p.net, p.phases) for p in group], device, options.timing)
        for p in group:
            measure_memory(p.net, p.phases, device, options.memory_runs)
            for phase, stats in p.net.latency.items():
                p.net.derived[f"{phase}_images_per_s"] = p.spec.batch / (stats.median_ms / 1e3)
        progress.advance(True, work=work["timing"])
        if on_update:
            on_update(profiles)
        ready = [p for p in group if "fwd" in p.net.latency]
        if ready:
            _breakdowns(ready, device, options, progress, work)
        if on_update:
            on_update(profiles)
    return profiles


def _plan(nets: int, options: MeasureOptions) -> dict[str, float]:
    """Each step's estimated seconds on the CPU at 224x224 (the ETA's weights; the ETA
    corrects itself from the steps done)."""
    phases = 2 if options.backward else 1
    return {
        "prepare": 8.0 * nets,
        "timing": nets * phases * (options.timing.min_time_s + 2.0 * options.timing.min_runs),
        "stages": 2.0 * nets * options.hooked_runs,
        "layers": 3.0 * nets * options.hooked_runs if options.per_layer else 0.0,
    }


def _breakdowns(ready: list[NetProfile], device: torch.device, options: MeasureOptions, progress: Any,
                work: dict[str, float]) -> None:
    progress.start("stage breakdown (hooked runs, interleaved)")
    _run_for(ready, "stage breakdown", lambda: _stages(ready, device, options), device)
    progress.advance(True, work=work["stages"])
    if options.op_times or options.trace:
        progress.start("where each stage's time goes: per-op times (torch.profiler)")
        _run_for(ready, "per-op times", lambda: _stage_op_times(ready, device, options), device)
    if options.energy:
        add_energy([(p.net, p.phases) for p in ready], device)
    if options.per_layer:
        progress.start("layer breakdown (hooked runs, interleaved)")
        _run_for(ready, "layer breakdown", lambda: _layers(ready, device, options), device)
        progress.advance(True, work=work["layers"])


def _run_for(profiles: list[NetProfile], what: str, step: Callable[[], None], device: torch.device) -> None:
    """A step shared by several nets: its failure is recorded in each of them."""
    ok = run_step(profiles[0].net, what, step, device)
    if not ok:
        for p in profiles[1:]:
            p.net.error = f"{p.net.error}; {what}: see {profiles[0].net.name}" if p.net.error \
                else f"{what}: failed, see {profiles[0].net.name}"


def _prepare(spec: NetSpec, device: torch.device, options: MeasureOptions) -> NetProfile:
    netdef = get_net(spec.name)
    exact = net_costs(spec)
    record = Record(kind="net", name=spec.label, config=spec.config())
    record.detail["device"] = str(device)
    profile = NetProfile(spec, record, layer_costs=exact)
    record.counted["params"] = sum(c.params for c in exact)
    record.model.update({"exact_MACs": sum(c.macs for c in exact),
                         "exact_exps": sum(c.softmax_exps for c in exact)})
    record.checks.update(dict.fromkeys(("paper_params_diff_pct", "paper_MACs_diff_pct", "paper_verdict")))
    figures = netdef.paper if spec.is_default_net else ()
    if figures:  # the tables are for 224x224, batch 1: count that input whatever this run's is
        paper_costs = exact if spec.input_shape == PAPER_INPUT else exact_by_layer(
            spec.name, spec.overrides, PAPER_INPUT)
        rows = paper_checks(record.counted["params"], sum(c.macs for c in paper_costs), figures)
        record.detail["paper_check"] = rows
        record.checks.update({"paper_params_diff_pct": rows[0]["params diff (%)"],
                              "paper_MACs_diff_pct": rows[0]["MACs diff (%)"],
                              "paper_verdict": rows[0]["verdict"],
                              "paper_failed": any(r["verdict"] == "fail" for r in rows)})
    reconstructed = netdef.reconstructed
    if reconstructed and spec.is_default_net:  # the figures a reimplementation printed
        macs = sum(c.macs for c in exact_by_layer(spec.name, {}, PAPER_INPUT))
        record.detail["reconstructed_check"] = paper_checks(record.counted["params"], macs, [reconstructed])
    if spec.is_default_net:  # which of the choices the paper leaves open reproduces its table
        record.detail["paper_choices"] = choice_rows(spec.name)
    torch.manual_seed(options.seed)

    def build() -> None:
        dtype = DTYPES[spec.dtype]
        profile.model = create_net(spec.name, **spec.overrides).to(device=device, dtype=dtype).eval()
        profile.x = torch.randn(spec.input_shape, device=device, dtype=dtype)

    if not run_step(record, "building", build, device):
        return profile
    net, x = profile.model, profile.x
    run_step(record, "counting", lambda: _count(profile, net, x, options), device)
    settle(record.checks)
    run_step(record, "preparing timing", lambda: profile.phases.update(
        phase_calls(net, (x,), options.backward, input_grad=False, train_for_backward=True)), device)
    if options.backward:
        record.detail["backward_mode"] = "train mode (batch norm uses batch statistics)"
    return profile


def _count(profile: NetProfile, net: nn.Module, x: torch.Tensor, options: MeasureOptions) -> None:
    record = profile.net
    counted = counting.count(net, x, per_module=True, backward=options.backward,
                             input_grad=False, train_for_backward=True)
    record.counted.update({"fwd_MACs": counted.macs, "fwd_exps": counted.softmax_exps})
    if options.backward:
        record.counted.update({"bwd_MACs": counted.bwd_macs, "bwd_exps": counted.bwd_exps})
    record.checks.update(count_checks(counted, record.model["exact_MACs"], record.model["exact_exps"]))
    record.detail["ops"] = [dataclasses.asdict(o) for o in counted.by_op]
    record.detail["module_macs"] = counted.module_macs
    if options.stock_counters:
        add_stock_counts(record, net, (x,), counted)


def _stages(profiles: list[NetProfile], device: torch.device, options: MeasureOptions) -> None:
    entries = [Parts(p.model, (p.x,), STAGES) for p in profiles]
    for profile, times in zip(profiles, time_parts_interleaved(entries, device, options.hooked_runs),
                              strict=True):
        _stage_records(profile, times)


def _stage_records(profile: NetProfile, stage_times: dict[str, list[float]]) -> None:
    record = profile.net
    module_macs: dict[str, int] = record.detail.get("module_macs", {})
    total_counted = record.counted.get("fwd_MACs")
    modules = dict(profile.model.named_modules())
    hooked_total = [sum(run) for run in zip(*stage_times.values(), strict=True)]
    stage_stats = {s: Stats.from_times(t, 1, HOOK_METHOD) for s, t in stage_times.items()}
    total_median = sum(st.median_ms for st in stage_stats.values())
    record.derived["hooked_fwd_median_ms"] = Stats.from_times(hooked_total, 1, HOOK_METHOD).median_ms
    for stage in STAGES:
        exact_stage = sum(c.macs for c in profile.layer_costs if _stage_of(c.name) == stage)
        r = Record(kind="stage", name=f"{profile.spec.label}:{stage}",
                   config={**record.config, "stage": stage})
        r.counted.update({"params": sum(p.numel() for p in modules[stage].parameters()),
                          "fwd_MACs": module_macs.get(stage)})
        r.model["exact_MACs"] = exact_stage
        r.checks["exact_match"] = module_macs.get(stage) == exact_stage
        r.latency["fwd"] = stage_stats[stage]
        r.derived.update({
            "MACs_share_pct": _pct(module_macs.get(stage), total_counted),
            "latency_share_pct": _pct(stage_stats[stage].median_ms, total_median),
        })
        profile.stages.append(r)


def _layers(profiles: list[NetProfile], device: torch.device, options: MeasureOptions) -> None:
    entries = [Parts(p.model, (p.x,), [c.name for c in p.layer_costs]) for p in profiles]
    for profile, times in zip(profiles, time_parts_interleaved(entries, device, options.hooked_runs),
                              strict=True):
        _layer_records(profile, times)


def _layer_records(profile: NetProfile, layer_times: dict[str, list[float]]) -> None:
    record = profile.net
    module_macs: dict[str, int] = record.detail.get("module_macs", {})
    total_counted = record.counted.get("fwd_MACs")
    layer_stats = {n: Stats.from_times(t, 1, HOOK_METHOD) for n, t in layer_times.items()}
    layers_total = sum(st.median_ms for st in layer_stats.values())
    record.derived["hooked_layers_sum_ms"] = layers_total
    for c in profile.layer_costs:
        r = Record(kind="net-layer", name=f"{profile.spec.label}:{c.name}",
                   config={**record.config, "layer": c.name})
        r.counted.update({"params": c.params, "fwd_MACs": module_macs.get(c.name, 0)})
        r.model["exact_MACs"] = c.macs
        r.checks["exact_match"] = module_macs.get(c.name, 0) == c.macs
        r.latency["fwd"] = layer_stats[c.name]
        r.derived.update({
            "layer_type": c.kind,
            "MACs_share_pct": _pct(module_macs.get(c.name, 0), total_counted),
            "latency_share_pct": _pct(layer_stats[c.name].median_ms, layers_total),
        })
        profile.layers.append(r)


def partial_nets(why: str | None, profiles: list, planned: list[str]) -> dict:
    """A network counts as measured once it was timed whole (or failed with its error);
    the others, and those never started, are listed."""
    measured = [p.net.name for p in profiles if p.net.latency or p.net.error]
    return {"interrupted_by": why, "rows_total": len(planned), "rows_kept": len(measured),
            "not_measured": [name for name in planned if name not in measured]}



def _stage_op_times(profiles: list[NetProfile], device: torch.device, options: MeasureOptions) -> None:
    """Each stage run alone on the input it saw in a forward pass of the net, counted and
    profiled op by op: `detail.op_times` of the stage records (the stem's says which ops
    hold its time)."""
    rows = []
    for profile in profiles:
        modules = dict(profile.model.named_children())
        seen: dict[str, tuple] = {}
        hooks = [modules[name].register_forward_pre_hook(
            lambda _m, args, name=name, seen=seen: seen.setdefault(name, args))
            for name in STAGES if name in modules]
        try:
            with torch.no_grad():
                profile.model(profile.x)
        finally:
            for hook in hooks:
                hook.remove()
        for record in profile.stages:
            stage = record.config["stage"]
            if stage not in seen:
                continue
            module, args = modules[stage], seen[stage]
            counted = counting.count(module, *args)
            record.detail["ops"] = [dataclasses.asdict(o) for o in counted.by_op]

            def forward(module: nn.Module = module, args: tuple = args) -> None:
                with torch.no_grad():
                    module(*args)

            rows.append((record, {"fwd": Phase(forward, 0)}))
    add_op_times(rows, device, trace_path(options, "net"))


__all__ = ["NetProfile", "NetSpec", "net_costs", "partial_nets", "profile_net", "profile_nets"]
