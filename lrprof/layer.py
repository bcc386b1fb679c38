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

from lrprof.measure import counting
from lrprof.measure import device as device_facts
from lrprof.measure.memory import peak_memory, tensor_bytes
from lrprof.measure.timing import TimingOptions, time_callable
from lrprof.ops import CostModel, validate_spec
from lrprof.record import Record, Report, Section
from lrprof.spec import LayerSpec, resolve_device

MIB = 2**20


@dataclass(frozen=True)
class MeasureOptions:
    backward: bool = False
    timing: TimingOptions = field(default_factory=TimingOptions)
    memory_runs: int = 3
    stock_counters: bool = True
    seed: int = 0


def error_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def model_checks(counted: counting.CountResult, cost: CostModel) -> dict:
    """Counted MACs against the exact term-by-term model and the paper's O-model."""
    low, high = cost.paper_band
    exact_match = counted.macs == cost.macs and counted.softmax_exps == cost.softmax_exps
    checks: dict = {
        "counted_over_exact": counted.macs / cost.macs if cost.macs else None,
        "exact_match": exact_match,
        "uncounted_ops": counting.uncounted_text(counted.uncounted),
    }
    problems = []
    if not exact_match:
        problems.append("counted != exact")
    if not counted.complete:
        problems.append("uncounted ops")
    if cost.paper_macs:
        ratio = counted.macs / cost.paper_macs
        within = low <= ratio <= high
        checks.update({"counted_over_paper_O": ratio, "paper_O_band": f"{low:g}-{high:g}",
                       "paper_O_within_band": within})
        if not within:
            problems.append("outside O-model band")
    checks["verdict"] = "ok" if not problems else "; ".join(problems)
    return checks


def profile_layer(spec: LayerSpec, options: MeasureOptions | None = None) -> Record:
    """Measure one configuration. Invalid specs raise SpecError; failures while measuring
    (out of memory, a kernel error) are kept in `record.error` with what was measured."""
    options = options or MeasureOptions()
    op = validate_spec(spec)
    device = resolve_device(spec.device)
    spec = spec.replace(device=str(device))
    cost = op.cost(spec)
    record = Record(kind="layer", name=spec.label(), config=spec.config())
    record.exact.update({"params": cost.params, "exact_MACs": cost.macs,
                         "exact_softmax_exps": cost.softmax_exps,
                         "paper_O_MACs": cost.paper_macs})
    record.detail["terms"] = [
        {"term": t.name, "MACs": t.macs, "formula": t.formula} for t in cost.terms
    ]
    record.detail["cost_notes"] = list(cost.notes)
    record.derived["analytic_activation_bytes"] = sum(cost.activation_bytes.values())
    record.detail["activation_bytes"] = cost.activation_bytes
    torch.manual_seed(options.seed)
    try:
        module = op.build(spec).to(device=device, dtype=spec.torch_dtype).eval()
        x = op.make_input(spec)
        record.exact["params"] = sum(p.numel() for p in module.parameters())
        if record.exact["params"] != cost.params:
            record.checks["params_model"] = f"module {record.exact['params']} != model {cost.params}"
        _count(record, module, x, cost, options)
        _measure(record, module, x, device, options)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        record.error = error_text(exc)
    finally:
        _free(device)
    return record


def _count(record: Record, module: torch.nn.Module, x: torch.Tensor, cost: CostModel,
           options: MeasureOptions) -> None:
    counted = counting.count(module, x)
    record.exact.update({"counted_MACs": counted.macs, "counted_softmax_exps": counted.softmax_exps})
    record.checks.update(model_checks(counted, cost))
    record.detail["ops"] = [dataclasses.asdict(o) for o in counted.by_op]
    if options.stock_counters:
        stock = counting.stock_counts(module, x)
        record.exact.update({
            "fvcore_stock_MACs": stock.fvcore_macs,
            "torch_flopcounter_FLOPs": stock.flopcounter_flops,
            "torch_flopcounter_MACs": stock.flopcounter_macs,
        })
        record.checks["stock_missed_pct"] = (
            100.0 * (1 - stock.fvcore_macs / counted.macs) if counted.macs else None
        )
        record.detail["fvcore_stock_skipped"] = stock.fvcore_skipped


def _measure(record: Record, module: torch.nn.Module, x: torch.Tensor, device: torch.device,
             options: MeasureOptions) -> None:
    def forward() -> None:
        with torch.no_grad():
            module(x)

    resident = tensor_bytes(module, x)
    record.latency["fwd"] = time_callable(forward, device, options.timing)
    record.memory["fwd"] = peak_memory(forward, device, options.memory_runs, resident)
    median_s = record.latency["fwd"].median_ms / 1e3
    if record.exact.get("counted_MACs"):
        record.derived["fwd_GMAC_per_s"] = record.exact["counted_MACs"] / median_s / 1e9
    if options.backward:
        x_grad = x.detach().clone().requires_grad_(True)
        inputs = [x_grad, *module.parameters()]
        with torch.no_grad():
            grad_out = torch.randn_like(module(x))

        def forward_backward() -> None:
            torch.autograd.grad(module(x_grad), inputs, grad_out)

        record.latency["fwd_bwd"] = time_callable(forward_backward, device, options.timing)
        record.memory["fwd_bwd"] = peak_memory(
            forward_backward, device, options.memory_runs, resident + tensor_bytes(grad_out)
        )


# ---- the report people read -------------------------------------------------------------


def _latency_text(record: Record, phase: str) -> str:
    s = record.latency.get(phase)
    if s is None:
        return ""
    return f"{s.median_ms:.3f} [{s.q1_ms:.3f}-{s.q3_ms:.3f}] n={s.runs}"


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
            "fwd ms median [IQR] n": _latency_text(r, "fwd"),
        }
        if backward:
            row["fwd+bwd ms median [IQR] n"] = _latency_text(r, "fwd_bwd")
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
                "resident inputs+weights (bytes)": m.resident_bytes,
                "analytic activations (bytes)": r.derived.get("analytic_activation_bytes"),
                "method": m.method,
            })
    return rows


def layer_report(records: list[Record], argv: list[str] | None = None,
                 environment: device_facts.Environment | None = None) -> Report:
    if environment is None:
        device = torch.device(records[0].config["device"]) if records else torch.device("cpu")
        environment = device_facts.collect(device)
    env = environment
    sections = [
        Section("Layer", summary_rows(records),
                "latency: milliseconds per call, median [first-third quartile], n timed runs"),
        Section("Model check (MACs: multiply-accumulates, 1 MAC = 2 FLOPs)", check_rows(records)),
        Section("What stock counters see (same forward pass)", stock_rows(records)),
    ]
    for r in records:
        total = r.exact.get("exact_MACs") or 0
        terms = [{**t, "share (%)": 100 * t["MACs"] / total if total else None}
                 for t in r.detail.get("terms", [])]
        sections.append(Section(f"Exact terms: {r.name}", terms,
                                "; ".join(r.detail.get("cost_notes", []))))
        ops = [{"aten op": o["op"], "category": o["category"], "calls": o["calls"],
                "count": o["count"], "rule": o["rule"]} for o in r.detail.get("ops", [])]
        if ops:
            sections.append(Section(f"Ops in the traced forward: {r.name}", ops,
                                    f"uncounted ops: {r.checks.get('uncounted_ops', 'n/a')}"))
    sections.append(Section("Memory", memory_rows(records)))
    notes = [
        "MACs count one forward pass; softmax exponentials are counted apart, not as MACs.",
        f"timing: {records[0].latency['fwd'].method}" if records and "fwd" in records[0].latency
        else "timing: not measured",
    ]
    threads = sorted({s.threads for r in records for s in r.latency.values() if s.threads})
    if threads:
        notes.append(f"CPU timings ran on {', '.join(map(str, threads))} torch thread(s).")
    return Report("layer", env, list(records), sections, notes, argv or [])
