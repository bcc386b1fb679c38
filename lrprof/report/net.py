"""The tables of a network report: totals, MACs against time per stage, two networks side by
side, the paper check, the open choices, and the per-layer breakdown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrprof.build.nets import get_net
from lrprof.build.nets.paper import (
    MACS_TOLERANCE_PCT,
    PARAMS_TOLERANCE_PCT,
)
from lrprof.measure import device as device_facts
from lrprof.measure import noise
from lrprof.measure.parts import METHOD as HOOK_METHOD
from lrprof.record.records import Report, Section
from lrprof.report import latency_text
from lrprof.report.numbers import fmt, mib, runs_text
from lrprof.report.where import where_sections

if TYPE_CHECKING:
    from lrprof.profile.net import NetProfile


NET_MS, NET_BWD_MS = "fwd ms, median [IQR]", "fwd+bwd ms, median [IQR]"
NET_LEGEND = {
    NET_MS: "milliseconds per forward pass of the batch: median [first-third quartile]; networks of "
            "one report timed interleaved",
    "fwd runs": "timed runs (RxC: R runs, each the mean of C calls)",
    "counted = exact": "the dispatcher's count equals the sum of the layers' exact operator models",
    "images/s": "batch size / forward median",
    "fwd peak (MiB)": "peak MiB allocated during one forward pass, above what was resident before it",
    "fvcore (G MACs)": "stock fvcore (default handles) on the same forward pass",
    "FlopCounterMode (G MACs)": "torch's FlopCounterMode on the same forward pass, FLOPs halved",
}
STAGE_LEGEND = {
    "MACs share (%)": "the stage's counted MACs over the whole net's",
    "time share (%)": "the stage's hooked median over the sum of the stage medians",
    "time / MACs share": "time share over MACs share: above 1, the stage takes more time than its work",
    "hooked ms": "median milliseconds inside the stage, from forward hooks that synchronise",
}


def summary_rows(profiles: list[NetProfile]) -> list[dict[str, Any]]:
    rows = []
    for p in profiles:
        r = p.net
        row = {
            "net": r.name,
            "dtype": r.config.get("dtype"),
            "params (M)": r.counted.get("params", 0) / 1e6,
            "fwd MACs (G)": (r.counted.get("fwd_MACs") or 0) / 1e9,
            "counted = exact": r.checks.get("exact_match"),
            NET_MS: latency_text(r.latency.get("fwd"), runs=False),
            "fwd runs": runs_text(r.latency.get("fwd")),
            "images/s": r.derived.get("fwd_images_per_s"),
        }
        if "fwd_bwd" in r.latency:
            row[NET_BWD_MS] = latency_text(r.latency.get("fwd_bwd"), runs=False)
            row["fwd+bwd runs"] = runs_text(r.latency.get("fwd_bwd"))
            row["fwd+bwd images/s"] = r.derived.get("fwd_bwd_images_per_s")
        for phase, m in r.memory.items():
            row[f"{phase.replace('_', '+')} peak (MiB)"] = mib(m.peak_bytes)
        if "bwd_MACs" in r.counted:
            row["bwd MACs (G)"] = (r.counted.get("bwd_MACs") or 0) / 1e9
        if r.counted.get("fvcore_stock_MACs") is not None:
            row["fvcore (G MACs)"] = r.counted["fvcore_stock_MACs"] / 1e9
        if r.counted.get("torch_flopcounter_MACs") is not None:
            row["FlopCounterMode (G MACs)"] = r.counted["torch_flopcounter_MACs"] / 1e9
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
                "params (M)": s.counted["params"] / 1e6,
                "MACs (M)": (s.counted.get("fwd_MACs") or 0) / 1e6,
                "counted = exact": s.checks.get("exact_match"),
                "MACs share (%)": mac_share,
                "hooked ms": s.latency["fwd"].median_ms,
                "time share (%)": time_share,
                "time / MACs share": time_share / mac_share if mac_share else None,
            })
    return rows


def versus_rows(a: NetProfile, b: NetProfile) -> list[dict[str, Any]]:
    """a / b per stage and in total, for MACs and for time, from the same run."""
    macs, time = f"MACs {a.net.name} / {b.net.name}", f"time {a.net.name} / {b.net.name}"
    rows = []
    b_stages = {s.config["stage"]: s for s in b.stages}
    for s in a.stages:
        other = b_stages.get(s.config["stage"])
        if other is None:
            continue
        am, bm = s.counted.get("fwd_MACs"), other.counted.get("fwd_MACs")
        at, bt = s.latency["fwd"].median_ms, other.latency["fwd"].median_ms
        rows.append({"stage": s.config["stage"], macs: am / bm if am and bm else None,
                     time: at / bt if bt else None})
    am, bm = a.net.counted.get("fwd_MACs"), b.net.counted.get("fwd_MACs")
    al, bl = a.net.latency.get("fwd"), b.net.latency.get("fwd")
    rows.append({"stage": "whole net (unhooked)", macs: am / bm if am and bm else None,
                 time: al.median_ms / bl.median_ms if al and bl else None})
    return rows


def layer_rows(profile: NetProfile, limit: int | None = None) -> list[dict[str, Any]]:
    layers = sorted(profile.layers, key=lambda r: -(r.derived.get("latency_share_pct") or 0))
    rows = [{
        "layer": r.config["layer"],
        "type": r.derived.get("layer_type"),
        "params": r.counted["params"],
        "MACs": r.counted.get("fwd_MACs"),
        "counted = exact": r.checks.get("exact_match"),
        "MACs share (%)": r.derived.get("MACs_share_pct"),
        "hooked ms": r.latency["fwd"].median_ms,
        "time share (%)": r.derived.get("latency_share_pct"),
    } for r in layers]
    return rows[:limit] if limit else rows


def net_report(profiles: list[NetProfile], argv: list[str] | None = None,
               environment: device_facts.Environment | None = None,
               terminal_layers: int = 15, impl_choices: list[str] | None = None) -> Report:
    """All sections go to markdown; the terminal gets the summary views and the slowest
    layers only. `impl_choices`: what `--impl auto` chose and why, one line each."""
    env = environment or device_facts.Environment.unrecorded(profiles[0].spec.device)
    sections = [Section("Networks (MACs: multiply-accumulates; 1 MAC = 2 FLOPs)", summary_rows(profiles),
                        essential=("net", NET_MS, NET_BWD_MS, "verdict", "fwd MACs (G)", "params (M)",
                                   "fwd peak (MiB)"),
                        legend=NET_LEGEND, shorten=("verdict",))]
    sums = "; ".join(
        f"{p.net.name}: stage medians sum to {fmt(sum(s.latency['fwd'].median_ms for s in p.stages))} ms, "
        f"unhooked whole-net median {fmt(p.net.latency['fwd'].median_ms)} ms"
        for p in profiles if p.stages and "fwd" in p.net.latency)
    sections.append(Section("MACs vs time per stage", stage_rows(profiles),
                            f"stage latency: {HOOK_METHOD}; {sums}",
                            essential=("net", "stage", "MACs share (%)", "time share (%)",
                                       "time / MACs share", "hooked ms"),
                            legend=STAGE_LEGEND))
    if len(profiles) >= 2 and profiles[0].stages and profiles[1].stages:
        sections.append(Section(f"{profiles[0].net.name} vs {profiles[1].net.name}, same run",
                                versus_rows(profiles[0], profiles[1]),
                                "stage rows use hooked stage latencies; the whole-net row the "
                                "unhooked timing"))
    paper = _paper_section(profiles)
    if paper:
        sections.append(paper)
    for p in profiles:
        choices = p.net.detail.get("paper_choices", [])
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
            f"({fmt(p.net.derived.get('hooked_layers_sum_ms', 0.0))} ms) against the unhooked "
            f"whole-net median ({fmt(unhooked.median_ms) if unhooked else 'n/a'} ms)",
            show="markdown", legend=STAGE_LEGEND))
        sections.append(Section(f"Per layer: {p.net.name}, {terminal_layers} slowest",
                                layer_rows(p, terminal_layers), "all layers in the markdown and CSV",
                                show="terminal"))
    sections += where_sections([s for p in profiles for s in p.stages], label="stage")
    sections += [section for section in where_sections([p.net for p in profiles], label="net")
                 if section.title == "Energy per pass"]
    records = []
    for p in profiles:
        records += [p.net, *p.stages, *p.layers]
    notes = list(dict.fromkeys(n for p in profiles for n in get_net(p.spec.name).notes))
    notes.append("MACs count one forward pass (counted: at the dispatcher with lrprof's rules; exact: "
                 "each layer's operator model over a meta-device pass). Whole-net timings of the "
                 "networks of one report are interleaved, and so are their hooked breakdowns.")
    if any("fwd_bwd" in p.net.latency for p in profiles):
        notes.append("forward+backward runs in train mode (batch norm on batch statistics).")
    notes += list(impl_choices or [])
    notes += noise.report_notes([p.net for p in profiles])
    return Report("net", env, records, sections, notes, argv or [])


def _paper_section(profiles: list[NetProfile]) -> Section | None:
    rows = []
    for p in profiles:
        for row in p.net.detail.get("paper_check", []) + p.net.detail.get("reconstructed_check", []):
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
