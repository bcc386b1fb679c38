"""Profile one layer configuration: build it, count it, time it, measure its memory, and
check the count against the exact and the published cost models.

    spec = LayerSpec(op="lr", k=7, m=8)
    record = profile_layer(spec)             # a Record
    report = layer_report([record])          # a Report: render or write it
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from lrprof.checks import count_checks
from lrprof.errors import require_int
from lrprof.measure import counting
from lrprof.measure import device as device_facts
from lrprof.measure.timing import TimingOptions
from lrprof.ops import CostModel, validate_spec
from lrprof.record import Record, Report, Section
from lrprof.report import latency_text
from lrprof.spec import LayerSpec, resolve_device
from lrprof.steps import add_stock_counts, measure_phases, run_step

MIB = 2**20
MEMORY_NOTE = (
    "resident: on CUDA everything the allocator held before the call; on the CPU the module's "
    "weights and buffers plus the call's inputs (and output gradient for fwd_bwd)."
)


@dataclass(frozen=True)
class MeasureOptions:
    backward: bool = False
    timing: TimingOptions = field(default_factory=TimingOptions)
    memory_runs: int = 3
    stock_counters: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        require_int("memory-runs", self.memory_runs, 1)


def profile_layer(spec: LayerSpec, options: MeasureOptions | None = None) -> Record:
    """Measure one configuration. Invalid specs raise SpecError; failures while measuring
    are kept in `record.error` beside what was measured."""
    options = options or MeasureOptions()
    op = validate_spec(spec)
    device = resolve_device(spec.device)
    spec = spec.replace(device=str(device))
    cost = op.cost(spec)
    record = Record(kind="layer", name=spec.label(), config=spec.config())
    record.exact.update({"params": cost.params, "exact_MACs": cost.macs,
                         "exact_softmax_exps": cost.softmax_exps,
                         "paper_O_MACs": cost.paper_macs})
    record.detail.update({
        "device": str(device),
        "terms": [{"term": t.name, "MACs": t.macs, "formula": t.formula} for t in cost.terms],
        "cost_notes": list(cost.notes),
        "activation_bytes": cost.activation_bytes,
        "implementation_bytes": cost.implementation_bytes,
    })
    record.derived["analytic_activation_bytes"] = sum(cost.activation_bytes.values())
    record.derived["implementation_buffer_bytes"] = sum(cost.implementation_bytes.values())
    torch.manual_seed(options.seed)
    built: dict = {}

    def build() -> None:
        built["module"] = op.build(spec).to(device=device, dtype=spec.torch_dtype).eval()
        built["x"] = op.make_input(spec)

    if not run_step(record, "building", build, device):
        return record
    module, x = built["module"], built["x"]
    record.exact["params"] = sum(p.numel() for p in module.parameters())
    run_step(record, "counting", lambda: _count(record, module, x, cost, options), device)
    _measure(record, module, x, device, options)
    return record


def _count(record: Record, module: torch.nn.Module, x: torch.Tensor, cost: CostModel,
           options: MeasureOptions) -> None:
    counted = counting.count(module, x)
    record.exact.update({"counted_MACs": counted.macs, "counted_softmax_exps": counted.softmax_exps})
    record.checks.update(count_checks(counted, cost.macs, cost.softmax_exps,
                                      record.exact["params"], cost.params,
                                      cost.paper_macs, cost.paper_band))
    record.detail["ops"] = [dataclasses.asdict(o) for o in counted.by_op]
    if options.stock_counters:
        add_stock_counts(record, module, x)
        fvcore = record.exact["fvcore_stock_MACs"]
        record.checks["stock_missed_pct"] = 100.0 * (1 - fvcore / counted.macs) if counted.macs else None


def _measure(record: Record, module: torch.nn.Module, x: torch.Tensor, device: torch.device,
             options: MeasureOptions) -> None:
    measure_phases(record, module, x, device, options.timing, options.memory_runs, options.backward)
    if "fwd" in record.latency and record.exact.get("counted_MACs"):
        median_s = record.latency["fwd"].median_ms / 1e3
        record.derived["fwd_GMAC_per_s"] = record.exact["counted_MACs"] / median_s / 1e9


# ---- the report people read -------------------------------------------------------------


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def summary_rows(records: list[Record]) -> list[dict]:
    rows = []
    for r in records:
        backward = any("fwd_bwd" in x.latency for x in records)
        row = {
            "layer": r.name,
            "params": r.exact.get("params"),
            "counted MACs (M)": _m(r.exact.get("counted_MACs")),
            "fwd ms median [IQR] n": latency_text(r.latency.get("fwd")),
        }
        if backward:
            row["fwd+bwd ms median [IQR] n"] = latency_text(r.latency.get("fwd_bwd"))
        row["fwd peak MiB"] = _mib(r.memory["fwd"].peak_bytes) if "fwd" in r.memory else None
        if backward:
            m = r.memory.get("fwd_bwd")
            row["fwd+bwd peak MiB"] = _mib(m.peak_bytes) if m else None
        row["fwd GMAC/s"] = r.derived.get("fwd_GMAC_per_s")
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return rows


def _m(value: float | int | None) -> float | None:
    return None if value is None else value / 1e6


def check_rows(records: list[Record]) -> list[dict]:
    return [
        {
            "layer": r.name,
            "counted MACs": r.exact.get("counted_MACs"),
            "exact MACs": r.exact.get("exact_MACs"),
            "paper O MACs": r.exact.get("paper_O_MACs"),
            "counted/exact": r.checks.get("counted_over_exact"),
            "counted/O": r.checks.get("counted_over_paper_O"),
            "O band": r.checks.get("paper_O_band"),
            "softmax exps counted/exact": (
                f"{r.exact.get('counted_softmax_exps')}/{r.exact.get('exact_softmax_exps')}"
            ),
            "verdict": r.checks.get("verdict", r.error),
        }
        for r in records
    ]


def stock_rows(records: list[Record]) -> list[dict]:
    return [
        {
            "layer": r.name,
            "lrprof counted MACs": r.exact.get("counted_MACs"),
            "fvcore default MACs": r.exact.get("fvcore_stock_MACs"),
            "torch FlopCounterMode FLOPs": r.exact.get("torch_flopcounter_FLOPs"),
            "FlopCounterMode as MACs (FLOPs/2)": r.exact.get("torch_flopcounter_MACs"),
            "missed by fvcore default (%)": r.checks.get("stock_missed_pct"),
            "ops fvcore default skips": ", ".join(
                f"{k} x{v}" for k, v in sorted(r.detail.get("fvcore_stock_skipped", {}).items())
            ),
        }
        for r in records
        if "fvcore_stock_MACs" in r.exact
    ]


def memory_rows(records: list[Record]) -> list[dict]:
    rows = []
    for r in records:
        for phase, m in r.memory.items():
            rows.append({
                "layer": r.name,
                "phase": phase,
                "peak above resident (bytes)": m.peak_bytes,
                "min-max (bytes)": f"{m.min_bytes}-{m.max_bytes}",
                "runs": m.runs,
                "resident before the call (bytes)": m.resident_bytes,
                "official 3-pass kernel activations (bytes)": r.derived.get("analytic_activation_bytes"),
                "lrprof impl. largest buffers (bytes)": r.derived.get("implementation_buffer_bytes"),
                "method": m.method,
            })
    return rows


def layer_report(records: list[Record], argv: list[str] | None = None,
                 environment: device_facts.Environment | None = None) -> Report:
    if environment is None:
        device = records[0].detail.get("device", records[0].config["device"]) if records else "cpu"
        environment = device_facts.collect(torch.device(device))
    env = environment
    sections = [
        Section("Layer", summary_rows(records),
                "latency: milliseconds per call, median [first-third quartile], n timed runs "
                "(RxC: R runs, each the mean of C calls)"),
        Section("Model check (MACs: multiply-accumulates, 1 MAC = 2 FLOPs)", check_rows(records)),
        Section("What stock counters see (same forward pass)", stock_rows(records)),
    ]
    for r in records:
        total = r.exact.get("exact_MACs") or 0
        terms = [{**t, "share (%)": 100 * t["MACs"] / total if total else None}
                 for t in r.detail.get("terms", [])]
        sections.append(Section(f"Exact terms: {r.name}", terms,
                                "; ".join(r.detail.get("cost_notes", [])), show="markdown"))
        ops = [{"aten op": o["op"], "category": o["category"], "calls": o["calls"],
                "count": o["count"], "rule": o["rule"]} for o in r.detail.get("ops", [])]
        if ops:
            sections.append(Section(f"Ops in the traced forward: {r.name}", ops,
                                    f"uncounted ops: {r.checks.get('uncounted_ops', 'n/a')}",
                                    show="markdown"))
    sections.append(Section("Memory", memory_rows(records), MEMORY_NOTE, show="markdown"))
    notes = [
        "MACs count one forward pass; softmax exponentials are counted apart, not as MACs.",
        "The paper's O-model leaves out the geometry prior (constant in H, W) and rounds neither "
        "G = C/m nor H/s up: on tiny maps or with C < m it underestimates, and the verdict says so.",
        f"timing: {records[0].latency['fwd'].method}" if records and "fwd" in records[0].latency
        else "timing: not measured",
    ]
    threads = sorted({s.threads for r in records for s in r.latency.values() if s.threads})
    if threads:
        notes.append(f"CPU timings ran on {', '.join(map(str, threads))} torch thread(s).")
    return Report("layer", env, list(records), sections, notes, argv or [])
