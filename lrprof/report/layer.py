"""The tables of a layer report: one row per configuration, with its baseline ratios, the
model check, the stock counters like for like, and (markdown) the exact terms, the ops
met with their rules, and memory."""

from __future__ import annotations

from typing import Any

import torch

from lrprof.measure import device as device_facts
from lrprof.measure import roofline
from lrprof.record import Record, Report, Section
from lrprof.report import latency_text

MIB = 2**20
MEMORY_NOTE = (
    "resident: on CUDA everything the allocator held before the call; on the CPU the module's "
    "weights and buffers plus the call's inputs (and output gradient for fwd_bwd)."
)


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def _m(value: float | int | None) -> float | None:
    return None if value is None else value / 1e6


def summary_rows(records: list[Record]) -> list[dict[str, Any]]:
    backward = any("fwd_bwd" in r.latency for r in records)
    baseline = any("baseline" in r.derived for r in records)
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "layer": r.name,
            "role": r.derived.get("role"),
            "params": r.exact.get("params"),
            "fwd MACs (M)": _m(r.exact.get("fwd_MACs")),
            "work ratio (counted / exact MACs)": r.checks.get("work_ratio"),
            "fwd ms median [IQR] n": latency_text(r.latency.get("fwd")),
        }
        if backward:
            row["bwd MACs (M)"] = _m(r.exact.get("bwd_MACs"))
            row["fwd+bwd ms median [IQR] n"] = latency_text(r.latency.get("fwd_bwd"))
        row["fwd peak MiB"] = _mib(r.memory["fwd"].peak_bytes) if "fwd" in r.memory else None
        if backward:
            m = r.memory.get("fwd_bwd")
            row["fwd+bwd peak MiB"] = _mib(m.peak_bytes) if m else None
        if baseline:
            row["fwd latency / 3x3 conv"] = r.derived.get("fwd_latency_vs_baseline")
            if backward:
                row["fwd+bwd latency / 3x3 conv"] = r.derived.get("fwd_bwd_latency_vs_baseline")
            row["fwd peak / 3x3 conv"] = r.derived.get("fwd_peak_vs_baseline")
        row["output rel. error"] = r.checks.get("output_max_rel_err")
        row["fwd GMAC/s"] = r.derived.get("fwd_GMAC_per_s")
        if any("setup_s" in x.derived for x in records):
            row["setup s (compile/build, once)"] = r.derived.get("setup_s")
        row["verdict"] = r.checks.get("verdict")
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return rows


def check_rows(records: list[Record]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = {
            "layer": r.name,
            "counted fwd MACs": r.exact.get("fwd_MACs"),
            "exact MACs": r.exact.get("exact_MACs"),
            "work ratio": r.checks.get("work_ratio"),
            "published model MACs": r.exact.get("paper_O_MACs"),
            "counted / published": r.checks.get("counted_over_paper_O"),
            "expected band": r.checks.get("paper_O_band"),
            "exps counted/exact": f"{r.exact.get('fwd_exps')}/{r.exact.get('exact_exps')}",
            "output rel. error (tolerance)": _error_text(r),
            "verdict": r.checks.get("verdict", r.error),
        }
        if "bwd_MACs" in r.exact:
            row["counted bwd MACs"] = r.exact["bwd_MACs"]
        rows.append(row)
    return rows


def _error_text(r: Record) -> str:
    err, tol = r.checks.get("output_max_rel_err"), r.checks.get("output_tolerance")
    return "" if err is None else f"{err:.2g} ({tol:g})"


def stock_rows(records: list[Record]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        stock = r.detail.get("stock")
        if not stock:
            continue
        for family in stock["like_for_like"]:
            rows.append({
                "layer": r.name,
                "op family": family["family"],
                "lrprof MACs": family["lrprof_MACs"],
                "fvcore MACs": family["fvcore_MACs"],
                "FlopCounterMode MACs (FLOPs/2)": family["flopcounter_MACs"],
            })
        rows.append({
            "layer": r.name,
            "op family": "total (missed share of lrprof's count)",
            "lrprof MACs": r.exact.get("fwd_MACs"),
            "fvcore MACs": _with_missed(r.exact.get("fvcore_stock_MACs"), r.checks.get("fvcore_missed_pct"),
                                        stock.get("fvcore_error")),
            "FlopCounterMode MACs (FLOPs/2)": _with_missed(
                r.exact.get("torch_flopcounter_MACs"), r.checks.get("flopcounter_missed_pct"),
                stock.get("flopcounter_error"), r.exact.get("torch_flopcounter_FLOPs")),
        })
    return rows


def _with_missed(total: float | None, missed: float | None, error: str | None,
                 flops: int | None = None) -> str:
    if error:
        return f"failed: {error}"
    if total is None:
        return ""
    parts = ([f"{flops:,} FLOPs"] if flops is not None else []) + (
        [f"misses {missed:.1f}%"] if missed is not None else [])
    return f"{total:,.0f} ({'; '.join(parts)})" if parts else f"{total:,.0f}"


def memory_rows(records: list[Record]) -> list[dict[str, Any]]:
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
                "operator's activations, analytic (bytes)": r.derived.get("analytic_activation_bytes"),
                "method": m.method,
            })
    return rows


def roofline_rows(records: list[Record]) -> list[dict[str, Any]]:
    """Forward pass against the device's measured ceilings (lrprof.measure.roofline)."""
    rows = []
    for r in records:
        if "bound" not in r.derived:  # not placed: --no-roofline, or no timing
            continue
        fraction = r.derived.get("roofline_fraction")
        fwd = r.memory.get("fwd")
        minimal = r.derived.get("minimal_bytes")
        rows.append({
            "layer": r.name,
            "min bytes (MB)": _m(minimal),
            "design bytes (MB)": _m(r.derived.get("design_bytes")),
            "GB/s (design bytes)": r.derived.get("achieved_GBps"),
            "GB/s (min bytes)": r.derived.get("minimal_GBps"),
            "GFLOP/s (2 per MAC)": r.derived.get("achieved_GFLOPs"),
            "FLOP/byte (design)": r.derived.get("intensity_FLOP_per_byte"),
            "bound": r.derived.get("bound"),
            "% of roofline": 100 * fraction if fraction is not None else None,
            "fwd peak / min bytes": fwd.peak_bytes / minimal if fwd and minimal else None,
        })
    return rows


def _ceilings_note(records: list[Record]) -> str:
    seen = {}
    for r in records:
        c = r.detail.get("ceilings")
        if c:
            key = (c["device"], c["dtype"], c["threads"])
            seen[key] = (f"{c['device']} {c['dtype']} {c['bandwidth_GBps']:.1f} GB/s, "
                         f"{c['compute_GFLOPs']:.1f} GFLOP/s")
    return "ceilings measured once per run (a large copy, a large matmul): " + "; ".join(seen.values())


def _unavailable_note(unavailable: dict[str, dict[str, str]] | None) -> list[str]:
    return [f"{op}: implementation {name} not measured: {reason}"
            for op, reasons in (unavailable or {}).items() for name, reason in reasons.items()]


def layer_report(records: list[Record], argv: list[str] | None = None,
                 environment: device_facts.Environment | None = None,
                 unavailable: dict[str, dict[str, str]] | None = None) -> Report:
    if environment is None:
        device = records[0].detail.get("device", records[0].config["device"]) if records else "cpu"
        environment = device_facts.collect(torch.device(device))
    if not environment.ceilings:
        environment.ceilings = [c.to_dict() for c in roofline.measured()]
    sections = [
        Section("Layers", summary_rows(records),
                "latency: milliseconds per call, median [first-third quartile], n timed runs "
                "(RxC: R runs, each the mean of C calls); rows timed in one interleaved schedule; "
                "'/ 3x3 conv': ratio to the dense 3x3 convolution of the same shape, same run"),
        Section("Model check (MACs: multiply-accumulates, 1 MAC = 2 FLOPs)", check_rows(records),
                "work ratio: counted / exact minimal MACs (above 1: the implementation does more than "
                "the operator needs); published model: the operator's authors' complexity formula; "
                "expected band: where counted / published should lie"),
        Section("What stock counters see (same forward pass, by op family)", stock_rows(records)),
    ]
    for r in records:
        total = r.exact.get("exact_MACs") or 0
        terms = [{**t, "share (%)": 100 * t["MACs"] / total if total else None}
                 for t in r.detail.get("terms", [])]
        note = "; ".join(r.detail.get("cost_notes", []) + [f"published: {r.detail.get('paper_formula')}"])
        sections.append(Section(f"Exact terms: {r.name}", terms, note, show="markdown"))
        ops = [{"op": o["op"], "phase": o["phase"], "family": o["family"], "calls": o["calls"],
                "MACs": o["macs"], "exps": o["exps"], "rule": o["rule"]} for o in r.detail.get("ops", [])]
        if ops:
            sections.append(Section(f"Ops met at the dispatcher: {r.name}", ops,
                                    f"uncounted: {r.checks.get('uncounted_ops', 'n/a')}",
                                    show="markdown"))
    roof = roofline_rows(records)
    if roof:
        sections.insert(2, Section(
            "Roofline (forward)", roof,
            "min bytes: x, query, key read once, y written once (the operator's minimum); design bytes: "
            "what the implementation moves by design, 1x1 convs included; bound: the ceiling that "
            "limits the row at its design bytes and counted FLOPs; " + _ceilings_note(records)))
    sections.append(Section("Memory", memory_rows(records), MEMORY_NOTE, show="markdown"))
    notes = [
        "MACs count one forward pass (and one backward pass with --backward) at the dispatcher; "
        "exponentials are counted apart, not as MACs.",
        "output rel. error: max |y - y_ref| / max |y_ref| against the operator's reference "
        "implementation in float64, same weights and input.",
    ]
    notes += _unavailable_note(unavailable)
    timed = [s for r in records for s in r.latency.values()]
    notes.append(f"timing: {timed[0].method}" if timed else "timing: not measured")
    threads = sorted({s.threads for s in timed if s.threads})
    if threads:
        notes.append(f"CPU timings ran on {', '.join(map(str, threads))} torch thread(s).")
    return Report("layer", environment, list(records), sections, notes, argv or [])
