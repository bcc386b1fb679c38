"""The tables of a layer report: one row per configuration, with its baseline ratios, the
model check, the stock counters like for like, and (markdown) the exact terms, the ops
met with their rules, and memory."""

from __future__ import annotations

import math
from typing import Any

from lrprof.measure import device as device_facts
from lrprof.measure import noise
from lrprof.record.records import Record, Report, Section
from lrprof.report import latency_text
from lrprof.report.numbers import fmt, mib, runs_text
from lrprof.report.where import where_sections

MEMORY_NOTE = (
    "resident: on CUDA everything the allocator held before the call; on the CPU the module's "
    "weights and buffers plus the call's inputs (and output gradient for fwd_bwd)."
)
LAYER = "layer"
FWD_MACS, BWD_MACS = "fwd MACs (M)", "bwd MACs (M)"
FWD_MS, BWD_MS = "fwd ms, median [IQR]", "fwd+bwd ms, median [IQR]"
FWD_RUNS, BWD_RUNS = "fwd runs", "fwd+bwd runs"
FWD_MIB, BWD_MIB = "fwd peak (MiB)", "fwd+bwd peak (MiB)"
FWD_VS, BWD_VS, MEM_VS = "fwd time / conv3x3", "fwd+bwd time / conv3x3", "fwd peak / conv3x3"
LAYER_LEGEND = {
    "work ratio": "counted MACs / the operator's exact minimal MACs: 1 when the implementation does "
                  "exactly the operator's work, above 1 when it does more (recomputes, wastes); below "
                  "1 is a failure (a counting rule or the model is wrong)",
    FWD_MS: "milliseconds per call: median [first-third quartile], digits to the precision the "
            "quartiles support",
    FWD_RUNS: "timed runs (RxC: R runs, each the mean of C calls)",
    FWD_MIB: "peak MiB allocated during one call, above what was resident before it",
    FWD_VS: "this row's median over the dense 3x3 conv of the same channels, size, stride, batch, "
            "dtype and device, timed in the same interleaved schedule",
    MEM_VS: "this row's peak memory over that 3x3 conv's",
    "output error": "max |y - y_ref| / max |y_ref| against the operator's reference implementation in "
                    "float64, same weights and input",
    "fwd GMAC/s": "counted forward MACs / forward median latency",
}


def _m(value: float | int | None) -> float | None:
    return None if value is None else value / 1e6


def summary_rows(records: list[Record]) -> list[dict[str, Any]]:
    backward = any("fwd_bwd" in r.latency for r in records)
    baseline = any("baseline" in r.derived for r in records)
    replicated = any(s.processes > 1 for r in records for s in r.latency.values())
    flagged = any(r.derived.get("timing_unreliable") for r in records)
    instructions = any("fwd_instructions" in r.counted for r in records)
    rows = []
    for r in records:
        row: dict[str, Any] = {
            LAYER: r.name,
            "dtype": r.config.get("dtype"),
            "role": r.derived.get("role"),
            "params": r.counted.get("params"),
            FWD_MACS: _m(r.counted.get("fwd_MACs")),
            "work ratio": r.checks.get("work_ratio"),
            FWD_MS: latency_text(r.latency.get("fwd"), runs=False),
            FWD_RUNS: runs_text(r.latency.get("fwd")),
        }
        if backward:
            row[BWD_MACS] = _m(r.counted.get("bwd_MACs"))
            row[BWD_MS] = latency_text(r.latency.get("fwd_bwd"), runs=False)
            row[BWD_RUNS] = runs_text(r.latency.get("fwd_bwd"))
        if replicated:
            row["fwd spread"] = noise.spread_text(r.latency.get("fwd"))
        if flagged:
            row["timing"] = ("unreliable: " + r.derived["timing_unreliable"]
                             if r.derived.get("timing_unreliable") else "ok")
        if instructions:
            row["fwd instructions/call (M)"] = _m(r.counted.get("fwd_instructions"))
        row[FWD_MIB] = mib(r.memory["fwd"].peak_bytes) if "fwd" in r.memory else None
        if backward:
            m = r.memory.get("fwd_bwd")
            row[BWD_MIB] = mib(m.peak_bytes) if m else None
        if baseline:
            row[FWD_VS] = r.derived.get("fwd_latency_vs_baseline")
            if backward:
                row[BWD_VS] = r.derived.get("fwd_bwd_latency_vs_baseline")
            row[MEM_VS] = r.derived.get("fwd_peak_vs_baseline")
        row["output error"] = r.checks.get("output_max_rel_err")
        row["fwd GMAC/s"] = r.derived.get("fwd_GMAC_per_s")
        if any("setup_s" in x.derived for x in records):
            row["setup s (compile/build, once)"] = r.derived.get("setup_s")
        row["verdict"] = r.checks.get("verdict")
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return rows


def summary_essentials(records: list[Record]) -> tuple[str, ...]:
    """In priority order: what a narrow terminal keeps first."""
    backward = any("fwd_bwd" in r.latency for r in records)
    return (LAYER, FWD_MS, *((BWD_MS,) if backward else ()), FWD_VS, "verdict", "error", FWD_MACS,
            FWD_MIB, *((BWD_VS,) if backward else ()), MEM_VS)


CHECK_LEGEND = {
    "published MACs": "the operator's published complexity model evaluated at this configuration",
    "counted / published": "counted MACs over the published model; 'expected band' is where the authors' "
                           "model should put it (outside it is stated, not a failure)",
    "exps counted/exact": "exponentials (softmax), counted apart from MACs, against the exact model",
    "output error (tolerance)": "relative error against the float64 reference, and the dtype's tolerance",
}


def check_rows(records: list[Record]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = {
            LAYER: r.name,
            "counted fwd MACs": r.counted.get("fwd_MACs"),
            "exact MACs": r.model.get("exact_MACs"),
            "work ratio": r.checks.get("work_ratio"),
            "published MACs": r.model.get("paper_O_MACs"),
            "counted / published": r.checks.get("counted_over_paper_O"),
            "expected band": r.checks.get("paper_O_band"),
            "exps counted/exact": f"{fmt(r.counted.get('fwd_exps'))}/{fmt(r.model.get('exact_exps'))}",
            "output error (tolerance)": _error_text(r),
            "verdict": r.checks.get("verdict", r.error),
        }
        if "bwd_MACs" in r.counted:
            row["counted bwd MACs"] = r.counted["bwd_MACs"]
        rows.append(row)
    return rows


def _error_text(r: Record) -> str:
    err, tol = r.checks.get("output_max_rel_err"), r.checks.get("output_tolerance")
    return "" if err is None else f"{fmt(err)} ({fmt(tol)})"


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
            "lrprof MACs": r.counted.get("fwd_MACs"),
            "fvcore MACs": _with_missed(r.counted.get("fvcore_stock_MACs"), r.checks.get("fvcore_missed_pct"),
                                        stock.get("fvcore_error")),
            "FlopCounterMode MACs (FLOPs/2)": _with_missed(
                r.counted.get("torch_flopcounter_MACs"), r.checks.get("flopcounter_missed_pct"),
                stock.get("flopcounter_error"), r.counted.get("torch_flopcounter_FLOPs")),
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
                LAYER: r.name,
                "phase": phase,
                "peak above resident (MiB)": mib(m.peak_bytes),
                "min-max (MiB)": f"{fmt(mib(m.min_bytes))}-{fmt(mib(m.max_bytes))}",
                "runs": m.runs,
                "resident before the call (MiB)": mib(m.resident_bytes),
                "operator's activations, analytic (MiB)": mib(r.derived.get("analytic_activation_bytes")),
                "method": m.method,
            })
    return rows


def crossover_rows(records: list[Record]) -> tuple[list[dict[str, Any]], str]:
    """Where a global operator (non-local) overtakes each local one as H x W grows, in
    counted MACs and in measured latency, from the rows of this report; and the summary
    line. Empty without a global operator measured at two sizes or more."""
    from lrprof.report.plots.sweep import GLOBAL_OPS, crossings

    if not any(r.config.get("op") in GLOBAL_OPS for r in records):
        return [], ""

    def macs(r: Record) -> float | None:
        return r.counted.get("fwd_MACs")

    by_macs = {(c.channels, c.global_label, c.local_label): c for c in crossings(records, value=macs)}
    rows, summary = [], []
    for c in crossings(records):
        work = by_macs.get((c.channels, c.global_label, c.local_label))
        rows.append({"C": c.channels, "global": c.global_label, "local": c.local_label,
                     "MACs overtake at (pixels)": _where(work), "latency overtakes at (pixels)": _where(c)})
        if c.pixels is not None:
            summary.append(f"{c.local_label}'s at ~{math.sqrt(c.pixels):.0f}x{math.sqrt(c.pixels):.0f}")
    line = ""
    if rows:
        line = (f"{rows[0]['global']}'s quadratic term overtakes the local operators as H x W grows: "
                + ("its latency passes " + ", ".join(summary) if summary else
                   "no latency crossing within the measured sizes")
                + " (interpolated between the measured sizes; the table gives the MACs crossing too).")
    return rows, line


def _where(c: Any) -> str:
    if c is None:
        return ""
    if c.pixels is None:
        low, high = c.between
        return f"{'above' if c.global_slower_after else 'below'} at every size ({low:,}-{high:,})"
    edge = math.sqrt(c.pixels)
    return f"{c.pixels:,.0f} (~{edge:.0f}x{edge:.0f})"


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
            "GFLOP/s (2 FLOPs per MAC)": r.derived.get("achieved_GFLOPs"),
            "FLOP/byte (design)": r.derived.get("intensity_FLOP_per_byte"),
            "bound": r.derived.get("bound"),
            "% of roofline": 100 * fraction if fraction is not None else None,
            "% exp ceiling": _percent(r.derived.get("exp_fraction")),
            "% FMA ceiling": _percent(r.derived.get("fma_fraction")),
            "fwd peak / min bytes": fwd.peak_bytes / minimal if fwd and minimal else None,
        })
    return rows


def _percent(fraction: float | None) -> float | None:
    return 100 * fraction if fraction is not None else None


def _ceilings_note(records: list[Record]) -> str:
    seen = {}
    for r in records:
        c = r.detail.get("ceilings")
        if c:
            key = (c["device"], c["dtype"], c["threads"])
            seen[key] = (f"{c['device']} {c['dtype']} {c['bandwidth_GBps']:.1f} GB/s, "
                         f"{c['compute_GFLOPs']:.1f} GFLOP/s"
                         + (f", {c['exp_per_s']:.3g} exp/s" if c.get("exp_per_s") else "")
                         + (f", {c['fma_GFLOPs']:.1f} GFLOP/s FMA" if c.get("fma_GFLOPs") else ""))
    return "ceilings measured once per run (a large copy, a large matmul): " + "; ".join(seen.values())


def _unavailable_note(unavailable: dict[str, dict[str, str]] | None) -> list[str]:
    return [f"{op}: implementation {name} not measured: {reason}"
            for op, reasons in (unavailable or {}).items() for name, reason in reasons.items()]


def layer_report(records: list[Record], argv: list[str] | None = None,
                 environment: device_facts.Environment | None = None,
                 unavailable: dict[str, dict[str, str]] | None = None) -> Report:
    if environment is None:
        device = records[0].detail.get("device", records[0].config["device"]) if records else "cpu"
        environment = device_facts.Environment.unrecorded(str(device))
    sections = [
        Section("Layers (MACs: multiply-accumulates, 1 MAC = 2 FLOPs)", summary_rows(records),
                "rows timed in one interleaved schedule; conv3x3: the dense 3x3 conv of each row's shape",
                essential=summary_essentials(records), legend=LAYER_LEGEND, shorten=("verdict", "error")),
        Section("Model check", check_rows(records),
                essential=(LAYER, "counted fwd MACs", "exact MACs", "work ratio", "counted / published",
                           "verdict"),
                legend={"work ratio": LAYER_LEGEND["work ratio"], **CHECK_LEGEND}, shorten=("verdict",)),
        Section("What stock counters see (same forward pass, by op family)", stock_rows(records),
                essential=(LAYER, "op family", "lrprof MACs", "fvcore MACs",
                           "FlopCounterMode MACs (FLOPs/2)"),
                shorten=("op family",)),
    ]
    for r in records:
        total = r.model.get("exact_MACs") or 0
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
    crossing, crossing_line = crossover_rows(records)
    if crossing:
        sections.insert(1, Section("Where the global operator overtakes the local ones", crossing,
                                   crossing_line))
    roof = roofline_rows(records)
    if roof:
        sections.insert(2, Section(
            "Roofline (forward)", roof,
            "min bytes: x, query, key read once, y written once (the operator's minimum); design bytes: "
            "what the implementation moves by design, 1x1 convs included; bound: the ceiling that "
            "limits the row at its design bytes and counted FLOPs; " + _ceilings_note(records)))
    sections.append(Section("Memory", memory_rows(records), MEMORY_NOTE, show="markdown"))
    sections += where_sections(records)
    notes = [
        "MACs count one forward pass (and one backward pass with --backward) at the dispatcher; "
        "exponentials are counted apart, not as MACs.",
        "output rel. error: max |y - y_ref| / max |y_ref| against the operator's reference "
        "implementation in float64, same weights and input.",
    ]
    notes += _unavailable_note(unavailable)
    notes += list(dict.fromkeys(r.detail["impl_choice"]["text"] for r in records
                                if r.detail.get("impl_choice")))
    notes += [f"output check of {r.name}: {r.detail['output_check_note']}"
              for r in records if r.detail.get("output_check_note")]
    timed = [s for r in records for s in r.latency.values()]
    notes.append(f"timing: {timed[0].method}" if timed else "timing: not measured")
    threads = sorted({s.threads for s in timed if s.threads})
    if threads:
        many = "" if threads == [1] else "s"
        notes.append(f"CPU timings ran on {', '.join(map(str, threads))} torch thread{many}.")
    notes += noise.report_notes(records)
    return Report("layer", environment, list(records), sections, notes, argv or [])
