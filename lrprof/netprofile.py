"""Profile a whole network: totals, a per-stage and (on request) a per-layer breakdown,
each held against the exact formula count, and the whole net against the paper's table.

    profile = profile_net(NetSpec("lr50"))
    report = net_report([profile])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrprof.checks import count_checks
from lrprof.errors import require_int
from lrprof.measure import counting
from lrprof.measure import device as device_facts
from lrprof.measure.timing import Stats, TimingOptions, synchronize
from lrprof.nets import STAGES, PaperFigures, create_net, display_name, get_net, resolve_options
from lrprof.nets.cost import LayerCost, exact_costs
from lrprof.record import Record, Report, Section
from lrprof.report import latency_text
from lrprof.spec import DTYPES, default_device, resolve_device, resolve_dtype
from lrprof.steps import add_stock_counts, measure_phases, run_step

PARAMS_TOLERANCE_PCT = 1.0
MACS_TOLERANCE_PCT = 3.0
HOOK_METHOD = "forward pre/post hooks, clock read after synchronize; median over hooked runs"


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
    def is_default_net(self) -> bool:
        """The network the papers' tables describe (overrides equal to the defaults count)."""
        return resolve_options(self.name, **self.overrides) == get_net(self.name).options

    def config(self) -> dict[str, Any]:
        device = default_device() if self.device == "auto" else self.device
        return {"net": self.label, "batch": self.batch, "height": self.height,
                "width": self.width, "dtype": self.dtype, "device": torch.device(device).type}

    def validate(self) -> None:
        build_meta(self)  # the builder checks its options; meta: no memory, no compute
        for name in ("batch", "height", "width"):
            require_int(name if name == "batch" else "size", getattr(self, name), 1)
        resolve_dtype(self.dtype)


@dataclass(frozen=True)
class NetOptions:
    backward: bool = False
    per_layer: bool = False
    timing: TimingOptions = field(
        default_factory=lambda: TimingOptions(warmup=1, warmup_s=0.0, min_runs=5, min_time_s=0.5)
    )
    hooked_runs: int = 5
    memory_runs: int = 2
    stock_counters: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("hooked-runs", self.hooked_runs, 2)
        require_int("memory-runs", self.memory_runs, 1)


@dataclass
class NetProfile:
    spec: NetSpec
    net: Any  # Record of kind "net"
    stages: list = field(default_factory=list)  # Records of kind "stage"
    layers: list = field(default_factory=list)  # Records of kind "net-layer"


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def build_meta(spec: NetSpec) -> nn.Module:
    with torch.device("meta"):
        return create_net(spec.name, **spec.overrides).eval()


def exact_by_layer(spec: NetSpec, overrides: dict[str, Any] | None = None) -> list[LayerCost]:
    """Formula counts of every layer, from a meta-device build (no weights, no compute)."""
    options = spec.overrides if overrides is None else overrides
    with torch.device("meta"):
        net = create_net(spec.name, **options).eval()
    return exact_costs(net, (spec.batch, 3, spec.height, spec.width))


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def time_parts(net: nn.Module, x: torch.Tensor, names: Iterable[str], device: torch.device,
               runs: int) -> dict[str, list[float]]:
    """Milliseconds spent inside each named module, per hooked forward pass. The clock is
    read after a synchronize on entry and exit, so each part's time is its own; the
    synchronizations themselves make the hooked pass slower than an unhooked one."""
    modules = dict(net.named_modules())
    started: dict[str, float] = {}
    current: dict[str, float] = {}  # this pass: name -> ms (summed if a module runs twice)
    times: dict[str, list[float]] = {n: [] for n in names}

    def pre(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            synchronize(device)
            started[name] = time.perf_counter()
        return hook

    def post(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            synchronize(device)
            current[name] = current.get(name, 0.0) + (time.perf_counter() - started[name]) * 1e3
        return hook

    handles = []
    for name in times:
        handles.append(modules[name].register_forward_pre_hook(pre(name)))
        handles.append(modules[name].register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            for _ in range(runs):  # the net is warm: it was timed whole just before
                current.clear()
                net(x)
                for name in times:
                    times[name].append(current.get(name, 0.0))
    finally:
        for h in handles:
            h.remove()
    return times


def paper_checks(params: int, macs: int, figures: Iterable[PaperFigures]) -> list[dict[str, Any]]:
    rows = []
    for fig in figures:
        dp = 100.0 * (params - fig.params) / fig.params
        dm = 100.0 * (macs - fig.macs) / fig.macs
        ok = abs(dp) <= PARAMS_TOLERANCE_PCT and abs(dm) <= MACS_TOLERANCE_PCT
        rows.append({
            "source": fig.source,
            "printed params (M)": fig.params / 1e6,
            "ours params (M)": params / 1e6,
            "params diff (%)": dp,
            "printed MACs (G)": fig.macs / 1e9,
            "ours MACs (G)": macs / 1e9,
            "MACs diff (%)": dm,
            "verdict": "pass" if ok else "fail",
        })
    return rows


def profile_net(spec: NetSpec, options: NetOptions | None = None) -> NetProfile:
    """Count, time and measure one network. Invalid specs raise SpecError; failures while
    measuring are kept in the net record's `error` beside what was measured."""
    options = options or NetOptions()
    spec.validate()
    device = resolve_device(spec.device)
    spec = dataclasses.replace(spec, device=str(device))
    netdef = get_net(spec.name)
    exact = exact_by_layer(spec)
    record = Record(kind="net", name=spec.label, config=spec.config())
    record.detail["device"] = str(device)
    profile = NetProfile(spec, record)
    record.exact.update({"params": sum(c.params for c in exact),
                         "exact_MACs": sum(c.macs for c in exact),
                         "exact_softmax_exps": sum(c.softmax_exps for c in exact)})
    record.checks.update(dict.fromkeys(("paper_params_diff_pct", "paper_MACs_diff_pct", "paper_verdict")))
    figures = netdef.paper if spec.is_default_net else ()
    if figures:  # the tables are for 224x224, batch 1: count that input whatever this run's is
        at_paper_input = (spec.batch, spec.height, spec.width) == (1, 224, 224)
        paper_costs = exact if at_paper_input else exact_by_layer(NetSpec(spec.name))
        rows = paper_checks(record.exact["params"], sum(c.macs for c in paper_costs), figures)
        record.detail["paper_check"] = rows
        record.checks.update({"paper_params_diff_pct": rows[0]["params diff (%)"],
                              "paper_MACs_diff_pct": rows[0]["MACs diff (%)"],
                              "paper_verdict": rows[0]["verdict"]})
    torch.manual_seed(options.seed)
    built: dict[str, Any] = {}

    def build() -> None:
        dtype = DTYPES[spec.dtype]
        built["net"] = create_net(spec.name, **spec.overrides).to(device=device, dtype=dtype).eval()
        built["x"] = torch.randn(spec.batch, 3, spec.height, spec.width, device=device, dtype=dtype)

    if not run_step(record, "building", build, device):
        return profile
    net, x = built["net"], built["x"]
    run_step(record, "counting", lambda: _count(profile, net, x, options), device)
    _measure(profile, net, x, device, options)
    run_step(record, "stage breakdown",
             lambda: _stages(profile, net, x, device, exact, options), device)
    if options.per_layer:
        run_step(record, "layer breakdown",
                 lambda: _layers(profile, net, x, device, exact, options), device)
    return profile


def _count(profile: NetProfile, net: nn.Module, x: torch.Tensor, options: NetOptions) -> None:
    record = profile.net
    counted = counting.count(net, x, per_module=True)
    record.exact.update({"counted_MACs": counted.macs, "counted_softmax_exps": counted.softmax_exps})
    record.checks.update(count_checks(counted, record.exact["exact_MACs"],
                                      record.exact["exact_softmax_exps"]))
    record.detail["ops"] = [dataclasses.asdict(o) for o in counted.by_op]
    record.detail["module_macs"] = counted.module_macs
    if options.stock_counters:
        add_stock_counts(record, net, x)


def _measure(profile: NetProfile, net: nn.Module, x: torch.Tensor, device: torch.device,
             options: NetOptions) -> None:
    record = profile.net
    measure_phases(record, net, x, device, options.timing, options.memory_runs, options.backward,
                   input_grad=False, train_for_backward=True)
    for phase, stats in record.latency.items():
        record.derived[f"{phase}_images_per_s"] = x.shape[0] / (stats.median_ms / 1e3)
    if options.backward:
        record.detail["backward_mode"] = "train mode (batch norm uses batch statistics)"


def _stages(profile: NetProfile, net: nn.Module, x: torch.Tensor, device: torch.device,
            exact: list[LayerCost], options: NetOptions) -> None:
    record = profile.net
    module_macs: dict[str, int] = record.detail.get("module_macs", {})
    total_counted = record.exact.get("counted_MACs")
    modules = dict(net.named_modules())
    stage_times = time_parts(net, x, STAGES, device, options.hooked_runs)
    hooked_total = [sum(run) for run in zip(*stage_times.values(), strict=True)]
    stage_stats = {s: Stats.from_times(t, 1, HOOK_METHOD) for s, t in stage_times.items()}
    total_median = sum(st.median_ms for st in stage_stats.values())
    record.derived["hooked_fwd_median_ms"] = Stats.from_times(hooked_total, 1, HOOK_METHOD).median_ms
    for stage in STAGES:
        exact_stage = sum(c.macs for c in exact if _stage_of(c.name) == stage)
        r = Record(kind="stage", name=f"{profile.spec.label}:{stage}",
                   config={**record.config, "stage": stage})
        r.exact.update({"params": sum(p.numel() for p in modules[stage].parameters()),
                        "counted_MACs": module_macs.get(stage), "exact_MACs": exact_stage})
        r.checks["exact_match"] = module_macs.get(stage) == exact_stage
        r.latency["fwd"] = stage_stats[stage]
        r.derived.update({
            "MACs_share_pct": _pct(module_macs.get(stage), total_counted),
            "latency_share_pct": _pct(stage_stats[stage].median_ms, total_median),
        })
        profile.stages.append(r)


def _layers(profile: NetProfile, net: nn.Module, x: torch.Tensor, device: torch.device,
            exact: list[LayerCost], options: NetOptions) -> None:
    record = profile.net
    module_macs: dict[str, int] = record.detail.get("module_macs", {})
    total_counted = record.exact.get("counted_MACs")
    layer_times = time_parts(net, x, [c.name for c in exact], device, options.hooked_runs)
    layer_stats = {n: Stats.from_times(t, 1, HOOK_METHOD) for n, t in layer_times.items()}
    layers_total = sum(st.median_ms for st in layer_stats.values())
    record.derived["hooked_layers_sum_ms"] = layers_total
    for c in exact:
        r = Record(kind="net-layer", name=f"{profile.spec.label}:{c.name}",
                   config={**record.config, "layer": c.name})
        r.exact.update({"params": c.params, "counted_MACs": module_macs.get(c.name),
                        "exact_MACs": c.macs})
        r.checks["exact_match"] = module_macs.get(c.name) == c.macs
        r.latency["fwd"] = layer_stats[c.name]
        r.derived.update({
            "layer_type": c.kind,
            "MACs_share_pct": _pct(module_macs.get(c.name), total_counted),
            "latency_share_pct": _pct(layer_stats[c.name].median_ms, layers_total),
        })
        profile.layers.append(r)


# ---- the report people read -------------------------------------------------------------


def summary_rows(profiles: list[NetProfile]) -> list[dict[str, Any]]:
    rows = []
    for p in profiles:
        r = p.net
        row = {
            "net": r.name,
            "params (M)": r.exact.get("params", 0) / 1e6,
            "counted MACs (G)": (r.exact.get("counted_MACs") or 0) / 1e9,
            "exact MACs (G)": r.exact.get("exact_MACs", 0) / 1e9,
            "counted == exact": r.checks.get("exact_match"),
            "fwd ms median [IQR] n": latency_text(r.latency.get("fwd"), 2),
            "fwd images/s": r.derived.get("fwd_images_per_s"),
        }
        if "fwd_bwd" in r.latency:
            row["fwd+bwd ms median [IQR] n"] = latency_text(r.latency.get("fwd_bwd"), 2)
            row["fwd+bwd images/s"] = r.derived.get("fwd_bwd_images_per_s")
        for phase, m in r.memory.items():
            row[f"{phase.replace('_', '+')} peak MiB"] = m.peak_bytes / 2**20
        if "fvcore_stock_MACs" in r.exact:
            row["fvcore default MACs (G)"] = r.exact["fvcore_stock_MACs"] / 1e9
            row["FlopCounterMode MACs (G, FLOPs/2)"] = r.exact["torch_flopcounter_MACs"] / 1e9
        row["verdict"] = r.error or r.checks.get("verdict")
        rows.append(row)
    return rows


def stage_rows(profiles: list[NetProfile]) -> list[dict[str, Any]]:
    """MACs vs time per stage: where the work is against where the time goes."""
    rows = []
    for p in profiles:
        for s in p.stages:
            mac_share, time_share = s.derived.get("MACs_share_pct"), s.derived.get("latency_share_pct")
            rows.append({
                "net": p.net.name,
                "stage": s.config["stage"],
                "params (M)": s.exact["params"] / 1e6,
                "counted MACs (M)": (s.exact.get("counted_MACs") or 0) / 1e6,
                "counted == exact": s.checks.get("exact_match"),
                "MACs share (%)": mac_share,
                "hooked fwd ms median": s.latency["fwd"].median_ms,
                "latency share (%)": time_share,
                "latency share / MACs share": time_share / mac_share if mac_share else None,
            })
    return rows


def versus_rows(a: NetProfile, b: NetProfile) -> list[dict[str, Any]]:
    """a / b per stage and in total, for MACs and for time, from the same run."""
    rows = []
    b_stages = {s.config["stage"]: s for s in b.stages}
    for s in a.stages:
        other = b_stages.get(s.config["stage"])
        if other is None:
            continue
        am, bm = s.exact.get("counted_MACs"), other.exact.get("counted_MACs")
        at, bt = s.latency["fwd"].median_ms, other.latency["fwd"].median_ms
        rows.append({"stage": s.config["stage"], f"{a.net.name} / {b.net.name} MACs":
                     am / bm if am and bm else None,
                     f"{a.net.name} / {b.net.name} latency": at / bt if bt else None})
    am, bm = a.net.exact.get("counted_MACs"), b.net.exact.get("counted_MACs")
    al, bl = a.net.latency.get("fwd"), b.net.latency.get("fwd")
    rows.append({"stage": "whole net (unhooked)",
                 f"{a.net.name} / {b.net.name} MACs": am / bm if am and bm else None,
                 f"{a.net.name} / {b.net.name} latency":
                 al.median_ms / bl.median_ms if al and bl else None})
    return rows


def layer_rows(profile: NetProfile, limit: int | None = None) -> list[dict[str, Any]]:
    layers = sorted(profile.layers, key=lambda r: -(r.derived.get("latency_share_pct") or 0))
    rows = [{
        "layer": r.config["layer"],
        "type": r.derived.get("layer_type"),
        "params": r.exact["params"],
        "counted MACs": r.exact.get("counted_MACs"),
        "counted == exact": r.checks.get("exact_match"),
        "MACs share (%)": r.derived.get("MACs_share_pct"),
        "hooked fwd ms median": r.latency["fwd"].median_ms,
        "latency share (%)": r.derived.get("latency_share_pct"),
    } for r in layers]
    return rows[:limit] if limit else rows


def choice_rows(spec: NetSpec) -> list[dict[str, Any]]:
    """The architecture choices the LR-Net paper leaves open, each counted from formulas,
    against the printed figures: which one reproduces the table."""
    netdef = get_net(spec.name)
    if not netdef.paper or "widths" not in netdef.options or not spec.is_default_net:
        return []
    printed = netdef.paper[0]
    variants = [
        ("G = ceil(C/m), LR stem (lrprof's choice)", {}),
        ("res2 width rounded down to 96 (a multiple of m)", {"widths": (96, 200, 400, 800)}),
        ("res2 width rounded up to 104 (a multiple of m)", {"widths": (104, 200, 400, 800)}),
        ("plain 7x7 conv stem instead of the LR stem", {"stem": "conv"}),
    ]
    rows = []
    for label, overrides in variants:
        costs = exact_by_layer(NetSpec(spec.name), overrides)
        check = paper_checks(sum(c.params for c in costs), sum(c.macs for c in costs), [printed])[0]
        rows.append({"choice": label, **{k: v for k, v in check.items() if k != "source"}})
    return rows


def net_report(profiles: list[NetProfile], argv: list[str] | None = None,
               environment: device_facts.Environment | None = None,
               terminal_layers: int = 15) -> Report:
    """All sections go to markdown; the terminal gets the summary views and the slowest
    layers only."""
    env = environment or device_facts.collect(torch.device(profiles[0].spec.device))
    sections = [Section("Networks (MACs: multiply-accumulates; 1 MAC = 2 FLOPs)", summary_rows(profiles),
                        "latency: milliseconds per forward pass of the batch, median [quartiles], "
                        "n runs (RxC: R runs, each the mean of C calls)")]
    sums = "; ".join(
        f"{p.net.name}: stage medians sum to {sum(s.latency['fwd'].median_ms for s in p.stages):.2f} ms, "
        f"unhooked whole-net median {p.net.latency['fwd'].median_ms:.2f} ms"
        for p in profiles if p.stages and "fwd" in p.net.latency)
    sections.append(Section("MACs vs time per stage", stage_rows(profiles),
                            f"stage latency: {HOOK_METHOD}; shares are of the summed stage medians "
                            f"({sums})"))
    if len(profiles) >= 2 and profiles[0].stages and profiles[1].stages:
        sections.append(Section(f"{profiles[0].net.name} vs {profiles[1].net.name}, same run",
                                versus_rows(profiles[0], profiles[1]),
                                "stage rows use hooked stage latencies; the whole-net row the "
                                "unhooked timing"))
    paper = _paper_section(profiles)
    if paper:
        sections.append(paper)
    for p in profiles:
        choices = choice_rows(p.spec)
        if choices:
            sections.append(Section(f"Choices the paper leaves open: {p.net.name}", choices,
                                    "each counted from formulas at 224x224, batch 1", show="markdown"))
    for p in profiles:
        if not p.layers:
            continue
        unhooked = p.net.latency.get("fwd")
        sections.append(Section(
            f"Per layer: {p.net.name}", layer_rows(p),
            f"layer latency: {HOOK_METHOD}; shares are of the summed layer medians "
            f"({p.net.derived.get('hooked_layers_sum_ms', 0):.2f} ms) against the unhooked "
            f"whole-net median ({unhooked.median_ms if unhooked else float('nan'):.2f} ms)",
            show="markdown"))
        sections.append(Section(f"Per layer: {p.net.name}, {terminal_layers} slowest",
                                layer_rows(p, terminal_layers), "all layers in the markdown and CSV",
                                show="terminal"))
    records = []
    for p in profiles:
        records += [p.net, *p.stages, *p.layers]
    notes = [
        "The nets are built by lrprof (no torchvision): ResNet v1.5 bottlenecks; LR-Net with "
        "G = ceil(C/m), geometry prior hidden width G, LR stem (1x1 conv 3->64, 7x7 LR m=1 stride 2).",
        "MACs count one forward pass (counted = fvcore trace with lrprof's rules; exact = per-layer "
        "formulas on a meta-device pass).",
    ]
    if any("fwd_bwd" in p.net.latency for p in profiles):
        notes.append("forward+backward runs in train mode (batch norm on batch statistics).")
    return Report("net", env, records, sections, notes, argv or [])


def _paper_section(profiles: list[NetProfile]) -> Section | None:
    rows = []
    for p in profiles:
        for row in p.net.detail.get("paper_check", []):
            rows.append({"net": p.net.name, **row})
        reconstructed = get_net(p.spec.name).reconstructed
        if reconstructed and p.spec.is_default_net:
            macs = sum(c.macs for c in exact_by_layer(NetSpec(p.spec.name)))
            for row in paper_checks(p.net.exact["params"], macs, [reconstructed]):
                rows.append({"net": p.net.name, **row})
    if not rows:
        return None
    note = (f"verdict: params within {PARAMS_TOLERANCE_PCT:g}%, MACs within {MACS_TOLERANCE_PCT:g}% "
            "(ours: exact formula count at the tables' input, 224x224 and batch 1, whatever this "
            "run's input; BN, ReLU, pooling and residual adds count 0)")
    for p in profiles:
        checks = p.net.detail.get("paper_check", [])
        if len(checks) > 1:
            matched = [c["source"] for c in checks if c["verdict"] == "pass"]
            note += (f". {p.net.name}: {len(checks)} printed figures; ours matches "
                     f"{' and '.join(matched) if matched else 'none of them'}")
    return Section("Paper check", rows, note)
