"""The tables of a `layer --module` report: the module beside its 3x3 conv baseline, every
submodule's share of the MACs and of the time, the stock counters like for like, the ops met
at the dispatcher, and memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrprof.measure import device as device_facts
from lrprof.measure.parts import METHOD as HOOK_METHOD
from lrprof.record.records import Record, Report, Section
from lrprof.report.layer import LAYER_LEGEND, memory_rows, stock_rows, summary_essentials, summary_rows
from lrprof.report.where import where_sections

if TYPE_CHECKING:
    from lrprof.profile.module import ModuleProfile

def part_rows(parts: list[Record]) -> list[dict[str, Any]]:
    rows = []
    for r in parts:
        stats = r.latency.get("fwd")
        mac_share, time_share = r.derived.get("MACs_share_pct"), r.derived.get("latency_share_pct")
        rows.append({
            "module": r.config["part"],
            "type": r.derived.get("type"),
            "calls": r.derived.get("calls"),
            "params": r.counted.get("params"),
            "fwd MACs (incl.)": r.counted.get("fwd_MACs"),
            "own fwd MACs": r.counted.get("own_fwd_MACs"),
            "MACs share (%)": mac_share,
            "hooked fwd ms (incl.)": stats.median_ms if stats else None,
            "own ms": r.derived.get("own_ms"),
            "time share (%)": time_share,
            "time share / MACs share": time_share / mac_share if time_share is not None and mac_share
            else None,
        })
    return rows


def _ops_rows(r: Record) -> list[dict[str, Any]]:
    return [{"op": o["op"], "phase": o["phase"], "family": o["family"], "calls": o["calls"],
             "MACs": o["macs"], "exps": o["exps"], "rule": o["rule"]} for o in r.detail.get("ops", [])]


def module_report(profile: ModuleProfile, argv: list[str] | None = None,
                  environment: device_facts.Environment | None = None) -> Report:
    main = profile.record
    records = [main] + ([profile.baseline] if profile.baseline else [])
    if environment is None:
        environment = profile.environment or device_facts.Environment.unrecorded(
            str(main.detail.get("device", "cpu")))
    compiled = main.detail.get("compiled")
    part_note = (
        "MACs (incl.): counted in one forward pass inside the module and its children; own: in its "
        "own forward, outside its children (the own column sums to the whole module's count); "
        f"time: {HOOK_METHOD}; own ms: inclusive minus its children's."
    )
    if compiled:
        part_note += (" Compiled module: its parts run fused, so they have MACs (of the eager ops "
                      "dynamo runs) but no time of their own.")
    sections = [
        Section("Module (MACs: multiply-accumulates, 1 MAC = 2 FLOPs)", summary_rows(records),
                "rows timed in one interleaved schedule; conv3x3: a dense 3x3 convolution C -> C of "
                "the first input's shape",
                essential=summary_essentials(records), legend=LAYER_LEGEND, shorten=("verdict", "error")),
        Section("Submodules (forward; MACs: multiply-accumulates)", part_rows(profile.parts), part_note),
        Section("What stock counters see (same forward pass, by op family)", stock_rows([main])),
    ]
    ops = _ops_rows(main)
    if ops:
        sections.append(Section(f"Ops met at the dispatcher: {main.name}", ops,
                                f"uncounted: {main.checks.get('uncounted_ops', 'n/a')}", show="markdown"))
    sections.append(Section("Memory", memory_rows(records), show="markdown"))
    sections += where_sections(records)
    notes = [
        "MACs count one forward pass (and one backward pass with --backward) at the dispatcher, "
        "every op by a rule of lrprof.measure.rules or listed as uncounted (which fails the row); "
        "exponentials are counted apart, not as MACs.",
        "per-submodule figures are forward only: torch's ModuleTracker cannot attribute backward ops "
        "to modules reliably.",
        "no cost model and no reference output exist for a user's module: `lrprof check` holds an "
        "implementation against an operator lrprof defines.",
    ]
    source = main.detail.get("source")
    if source:
        notes.append(f"module: {main.detail.get('class')} from {source}"
                     + (f" (sha256 {main.detail['source_sha256'][:16]})" if main.detail.get("source_sha256")
                        else ""))
    timed = [s for r in records for s in r.latency.values()]
    notes.append(f"timing: {timed[0].method}" if timed else "timing: not measured")
    threads = sorted({s.threads for s in timed if s.threads})
    if threads:
        notes.append(f"CPU timings ran on {', '.join(map(str, threads))} torch thread"
                     f"{'' if threads == [1] else 's'}.")
    return Report("layer", environment, records + profile.parts, sections, notes, argv or [])
