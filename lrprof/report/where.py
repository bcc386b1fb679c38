"""Where the time goes, as tables: each row's ops by self time beside their MACs (the whole
table in the markdown, the top ops on the terminal), and energy per pass or why not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lrprof.record.records import Record, Section

TOP_OPS = 3  # ops per row and phase on the terminal
OP_LEGEND = {
    "self ms/call": "milliseconds per call of the row in this op, its uncounted callees included "
                    "(profiled runs after the timed ones)",
    "time share (%)": "the op's self time over the row's median latency of the phase",
    "MACs share (%)": "the op's counted MACs over the row's",
    "GMAC/s": "the op's counted MACs over its self time",
}


def op_rows(records: Sequence[Record], label: str, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        table = r.detail.get("op_times") or []
        for phase in dict.fromkeys(entry["phase"] for entry in table):
            entries = [e for e in table if e["phase"] == phase]
            macs = sum(e["MACs"] for e in entries)
            for entry in entries[:limit]:
                rows.append({
                    label: r.name, "phase": phase, "op": entry["op"], "calls": entry["calls"],
                    "self ms/call": entry["self_ms"], "time share (%)": entry.get("share_pct"),
                    "MACs (MAC)": entry["MACs"],
                    "MACs share (%)": 100 * entry["MACs"] / macs if macs else None,
                    "GMAC/s": entry.get("GMAC_per_s"),
                })
    return rows


def where_sections(records: Sequence[Record], label: str = "layer") -> list[Section]:
    """Per-op time (markdown: every op; terminal: the top ones) and energy, when measured."""
    timed = [r for r in records if r.detail.get("op_times")]
    sections = []
    if timed:
        method = timed[0].detail.get("op_times_method", "")
        traces = sorted({r.detail["trace"] for r in timed if r.detail.get("trace")})
        note = method + (f"; trace: {', '.join(traces)} (open in ui.perfetto.dev)" if traces else "")
        sections.append(Section("Where the time goes (per op; MACs: multiply-accumulates)",
                                op_rows(timed, label), note, show="markdown", legend=OP_LEGEND))
        sections.append(Section(f"Where the time goes: top {TOP_OPS} ops per row",
                                op_rows(timed, label, TOP_OPS), "every op in the markdown",
                                show="terminal",
                                essential=(label, "phase", "op", "self ms/call", "time share (%)",
                                           "MACs share (%)")))
    failed = [r for r in records if r.detail.get("op_times_error")]
    if failed:
        sections.append(Section("Per-op times not measured",
                                [{label: r.name, "why": r.detail["op_times_error"]} for r in failed]))
    with_energy = [r for r in records if r.derived.get("energy")]
    if with_energy:
        sections.append(Section("Energy per pass", [
            {label: r.name, "energy": r.derived["energy"], "fwd mJ/pass": r.derived.get("fwd_mJ_per_pass"),
             "fwd+bwd mJ/pass": r.derived.get("fwd_bwd_mJ_per_pass"),
             "GMAC/J": r.derived.get("fwd_GMAC_per_J")} for r in with_energy],
            "the device's energy counter around each row's own runs (whole GPU or CPU package: "
            "an upper bound on an idle device)", essential=(label, "energy"), shorten=("energy",)))
    return sections
