"""The tables of a sweep report: the model fits first (does cost grow like the formula,
where does time stop following it), the plots, what the sweep covered (and skipped,
lost or measured twice), then every row as `layer` shows it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrprof.record.records import Report, Section
from lrprof.report.layer import check_rows, summary_rows
from lrprof.report.plots import GLOBAL_OPS, Plot, crossovers
from lrprof.sweep.fits import GroupFit
from lrprof.sweep.merge import Merged
from lrprof.sweep.worker import failure_kind

FIT_NOTE = (
    "fits: least squares of log y on log x over the group's rows; exponent 1 = proportional. "
    "[95% CI]: bootstrap over rows (latency: each row re-drawn from its raw timed samples). "
    "R^2: share of the variance of log y the power law explains."
)


def _ratio_text(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def macs_fit_rows(fits: Sequence[GroupFit]) -> list[dict[str, Any]]:
    rows = []
    for f in fits:
        fit = f.macs_vs_model
        low, med, high = f.macs_ratio or (None, None, None)
        rows.append({
            "op[impl]": f.label,
            "rows": f.rows,
            "counted / published MACs: min": _ratio_text(low),
            "median": _ratio_text(med),
            "max": _ratio_text(high),
            "exponent of counted vs published [95% CI]": fit.exponent_text() if fit else "",
            "R^2": f"{fit.r2:.4f}" if fit else "",
        })
    return rows


def latency_fit_rows(fits: Sequence[GroupFit]) -> list[dict[str, Any]]:
    rows = []
    bytes_shown = any(f.latency_vs_bytes for f in fits)
    for f in fits:
        fit = f.latency_vs_macs
        row: dict[str, Any] = {
            "op[impl]": f.label,
            "timed rows": fit.n if fit else 0,
            "exponent of fwd ms vs MACs [95% CI]": fit.exponent_text() if fit else "",
            "R^2": f"{fit.r2:.3f}" if fit else "",
            "fit": fit.formula() if fit else "; ".join(f.notes),
        }
        if bytes_shown:
            b = f.latency_vs_bytes
            row["exponent of fwd ms vs minimal bytes [95% CI]"] = b.exponent_text() if b else ""
            row["R^2 (bytes)"] = f"{b.r2:.3f}" if b else ""
        rows.append(row)
    return rows


def departure_rows(fits: Sequence[GroupFit]) -> list[dict[str, Any]]:
    return [{"op[impl]": f.label, "row": d.name, "measured fwd ms": f"{d.measured:.4g}",
             "fit fwd ms": f"{d.predicted:.4g}",
             "measured / fit": f"{d.factor:.2f}x"} for f in fits for d in f.departures]


def plot_rows(plots: Sequence[Plot], relative_to: Path | None) -> list[dict[str, Any]]:
    rows = []
    for p in plots:
        link = os.path.relpath(p.path, relative_to) if relative_to else str(p.path)
        rows.append({"plot": f"[![{p.title}]({link})]({link})", "what it shows": p.caption})
    return rows


def coverage_rows(merged: Merged, wall_s: float | None) -> list[dict[str, Any]]:
    failed = [r for r in merged.records if r.error]
    checks_failed = [r for r in merged.records if r.checks.get("failed")]
    facts = [
        ("grid rows (valid combinations)", merged.grid_size),
        ("rows measured", len(merged.records)),
        ("rows failed (error while measuring)", len(failed)),
        ("rows whose checks failed", len(checks_failed)),
        ("invalid combinations skipped", len(merged.invalid)),
        ("rows missing (no file holds them)", len(merged.missing)),
        ("rows measured more than once", len(merged.duplicates)),
        ("failed rows measured again", merged.retried),
        ("shards", ", ".join(merged.shards) or "1/1"),
        ("files", ", ".join(str(s) for s in merged.sources)),
    ]
    if wall_s is not None:
        facts.append(("seconds spent in rows (sum over rows, workers included)", f"{wall_s:,.0f}"))
    options = merged.options
    if options:
        timing = options.get("timing") or {}
        facts.append(("per-row settings",
                      f"min runs {timing.get('min_runs')}, min time {timing.get('min_time_s')} s, "
                      f"warm-up {timing.get('warmup')} calls / {timing.get('warmup_s')} s, memory runs "
                      f"{options.get('memory_runs')}, stock counters {options.get('stock_counters')}, "
                      f"output check {options.get('check_output')}, baseline {options.get('baseline')}, "
                      f"timeout {options.get('timeout_s')} s, threads {options.get('threads')}"))
    return [{"what": k, "value": v} for k, v in facts]


def failed_rows(merged: Merged) -> list[dict[str, Any]]:
    return [{"row": r.name, "failure": failure_kind(r.error), "error": r.error}
            for r in merged.records if r.error]


def sweep_report(merged: Merged, fits: Sequence[GroupFit], plots: Sequence[Plot] = (),
                 argv: list[str] | None = None, plot_dir: Path | None = None,
                 wall_s: float | None = None, command: str = "sweep") -> Report:
    records = merged.records
    sections = [
        Section("Fits: counted MACs vs the published O-model (MACs: multiply-accumulates, "
                "1 MAC = 2 FLOPs)", macs_fit_rows(fits),
                "counted / published: the dispatcher's count of one forward pass over the operator's "
                "published complexity formula at the same configuration; exponent 1 means the count "
                "grows exactly like the formula over the grid"),
        Section("Fits: forward latency vs counted work", latency_fit_rows(fits), FIT_NOTE),
        Section("Where time departs most from the fit", departure_rows(fits),
                "measured / fit above 1: slower than the power law predicts for that row's MACs",
                essential=("op[impl]", "row", "measured fwd ms", "measured / fit"), shorten=("row",)),
    ]
    crossing_lines = crossovers(records)
    if crossing_lines:
        sections.append(Section(f"Global ({', '.join(GLOBAL_OPS)}) vs local operators over H x W",
                                [{"where": line} for line in crossing_lines],
                                "from the measured rows: the median latency over the other parameters "
                                "at each size, interpolated log-linearly between sizes"))
    if plots:
        sections.append(Section("Plots", plot_rows(plots, plot_dir), show="markdown"))
    sections.append(Section("Sweep", coverage_rows(merged, wall_s), shorten=("value",)))
    failed = failed_rows(merged)
    if failed:
        sections.append(Section("Failed rows (recorded, the sweep went on)", failed))
    if merged.invalid:
        sections.append(Section("Invalid combinations (skipped)",
                                [{"row": e["name"], "why": e["reason"]} for e in merged.invalid]))
    if merged.missing:
        sections.append(Section("Missing rows (in the grid, in no file)",
                                [{"row": name} for name in merged.missing]))
    if merged.duplicates:
        sections.append(Section("Rows measured more than once (the first kept)",
                                [{"row": d["name"], "times": d["times"], "files": ", ".join(d["files"])}
                                 for d in merged.duplicates]))
    sections.append(Section("Rows", summary_rows(records),
                            "latency: milliseconds per call, median [first-third quartile], n timed "
                            "runs; '/ 3x3 conv': ratio to the dense 3x3 convolution of the row's "
                            "shape, timed interleaved with the row in the same schedule",
                            show="markdown"))
    sections.append(Section("Model check (MACs: multiply-accumulates)", check_rows(records),
                            show="markdown"))
    notes = [
        "each row is measured on its own (built, counted, output-checked against float64, timed, "
        "memory measured) in a worker process; with the baseline on, its 3x3 conv of the same "
        "shape is timed interleaved with it, in the same schedule.",
        "MACs count one forward pass at the dispatcher; exponentials are counted apart.",
    ]
    notes += [f"{op}: implementation {name} not measured: {reason}"
              for op, reasons in merged.unavailable.items() for name, reason in reasons.items()]
    notes += [f"warning: {w}" for w in merged.warnings]
    timed = [s for r in records for s in r.latency.values()]
    notes.append(f"timing: {timed[0].method}" if timed else "timing: not measured")
    threads = sorted({s.threads for s in timed if s.threads})
    if threads:
        notes.append(f"CPU timings ran on {', '.join(map(str, threads))} torch thread(s).")
    return Report(command, merged.environment, list(records), sections, notes, argv or [])
