"""The tables of a `count` report: the totals under the chosen convention, the module tree
(input and output shapes, parameters, MACs), every convention's count family by family with
what each one counts and why they differ, and (markdown) the ops met with their rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrprof.measure import conventions
from lrprof.measure import device as device_facts
from lrprof.record.records import Record, Report, Section

if TYPE_CHECKING:
    from lrprof.profile.count import CountProfile

CONVENTION_TEXT = {
    conventions.LRPROF: "lrprof (the papers' convention: every op priced by a rule or listed as uncounted)",
    conventions.FVCORE_NAME: "fvcore (its default handles, op for op; its 'flop' is one MAC)",
    conventions.FLOPCOUNTER_NAME: "flopcounter (torch's FlopCounterMode registry; 2 FLOPs per MAC)",
}


def total_rows(record: Record) -> list[dict[str, Any]]:
    e, c = record.counted, record.config
    row: dict[str, Any] = {
        "target": record.name,
        "convention": c.get("convention"),
        "params": e.get("params"),
        "trainable params": e.get("trainable_params"),
        "fwd MACs": e.get("fwd_MACs"),
    }
    if "fwd_FLOPs" in e:
        row["fwd FLOPs"] = e["fwd_FLOPs"]
    if "bwd_MACs" in e:
        row["bwd MACs"] = e.get("bwd_MACs")
        row["input grad"] = c.get("input_grad")
        if "bwd_FLOPs" in e:
            row["bwd FLOPs"] = e["bwd_FLOPs"]
    row["fwd exps"] = e.get("fwd_exps")
    if "bwd_exps" in e:
        row["bwd exps"] = e.get("bwd_exps")
    row["uncounted"] = record.checks.get("uncounted_ops")
    return [row]


def part_rows(parts: list[Record]) -> list[dict[str, Any]]:
    rows = []
    for r in parts:
        depth = r.derived.get("depth") or 0
        rows.append({
            "module": ("  " * max(depth - 1, 0)) + r.config["part"],
            "type": r.derived.get("type"),
            "input": r.derived.get("input_shape") or ("not called" if not r.derived.get("called") else ""),
            "output": r.derived.get("output_shape"),
            "params": r.counted.get("params"),
            "fwd MACs (incl.)": r.counted.get("fwd_MACs"),
            "share (%)": r.derived.get("MACs_share_pct"),
        })
    return rows


def family_rows(record: Record, phase: str = "fwd") -> list[dict[str, Any]]:
    """Every convention's MACs per family (FlopCounterMode's also in FLOPs), and what each
    one counts there."""
    found = record.detail.get("conventions") or {}
    families = sorted({f for name in found for f in found[name].get(phase, {})})
    rows = []
    for family in families:
        texts = conventions.FAMILIES.get(family, ("", "", ""))
        per = {name: found.get(name, {}).get(phase, {}).get(family, 0) for name in conventions.NAMES}
        rows.append({
            "family": family,
            "lrprof MACs": per[conventions.LRPROF],
            "fvcore MACs": per[conventions.FVCORE_NAME],
            "flopcounter MACs": per[conventions.FLOPCOUNTER_NAME],
            "flopcounter FLOPs": 2 * per[conventions.FLOPCOUNTER_NAME],
            "lrprof counts": texts[0],
            "fvcore counts": texts[1],
            "flopcounter counts": texts[2],
        })
    if rows:
        rows.append({"family": "total", **{k: sum(r[k] for r in rows) for k in (
            "lrprof MACs", "fvcore MACs", "flopcounter MACs", "flopcounter FLOPs")}})
    return rows


def _ops_rows(r: Record) -> list[dict[str, Any]]:
    return [{"op": o["op"], "phase": o["phase"], "family": o["family"], "calls": o["calls"],
             "MACs": o["macs"], "exps": o["exps"], "rule": o["rule"]} for o in r.detail.get("ops", [])]


def count_notes(record: Record) -> list[str]:
    convention = record.config.get("convention", conventions.LRPROF)
    notes = [
        f"convention: {CONVENTION_TEXT.get(convention, convention)}. MAC = one multiply-accumulate "
        "= 2 FLOPs; exponentials are counted apart, not as MACs.",
        "counted at torch's dispatcher, one forward pass (and one backward pass with --backward); "
        "per-module figures are forward only and inclusive of their children. No timing, no memory.",
    ]
    if convention != conventions.LRPROF and record.detail.get("uncounted"):
        notes.append("ops lrprof has no rule for (they count 0 under this convention, as the peer "
                     f"skips them): {record.checks.get('uncounted_ops')}")
    missed = record.detail.get("missed_by_flopcounter") or []
    if missed:
        notes.append("FlopCounterMode misses " + ", ".join(missed) + " (what scaled_dot_product_attention "
                     "runs on this device): torch's own FlopCounterMode would count 0 for them; the "
                     "flopcounter convention counts them as their CUDA twins.")
    if record.config.get("meta"):
        notes.append("--meta: built and run on the meta device (no weights allocated, nothing "
                     "computed); scaled_dot_product_attention is run as the CPU's fused kernel, so the "
                     "count equals a real CPU run's.")
    if "bwd_MACs" in record.counted:
        grads = "the inputs and " if record.config.get("input_grad") else ""
        notes.append(f"backward: gradients of {grads}every trainable parameter; pooling and "
                     "normalisation count under one rule forward and backward.")
    if record.detail.get("source"):
        notes.append(f"module: {record.detail.get('class')} from {record.detail['source']}")
    return notes


def count_report(profile: CountProfile, argv: list[str] | None = None,
                 environment: device_facts.Environment | None = None) -> Report:
    main = profile.record
    if environment is None:
        environment = profile.environment or device_facts.Environment.unrecorded("cpu")
    depth = max((p.derived.get("depth") or 0 for p in profile.parts), default=0)
    sections = [
        Section("Totals", total_rows(main), "MACs: multiply-accumulates, 1 MAC = 2 FLOPs",
                essential=("target", "params", "fwd MACs", "bwd MACs", "uncounted"),
                shorten=("target", "uncounted")),
        Section(f"Modules (depth {depth}; forward)", part_rows(profile.parts),
                "MACs inclusive of the module's children; shapes of its first call",
                essential=("module", "type", "input", "output", "params", "fwd MACs (incl.)"),
                shorten=("module", "input", "output")),
        Section("Op families: what each convention counts (forward)", family_rows(main),
                "MACs under each convention from the same calls; the texts say what each counts",
                essential=("family", "lrprof MACs", "fvcore MACs", "flopcounter MACs")),
    ]
    if "bwd_MACs" in main.counted:
        sections.append(Section("Op families (backward)", family_rows(main, "bwd"), show="markdown"))
    ops = _ops_rows(main)
    if ops:
        sections.append(Section(f"Ops met at the dispatcher: {main.name}", ops,
                                f"uncounted: {main.checks.get('uncounted_ops', 'n/a')}", show="markdown"))
    return Report("count", environment, [main] + profile.parts, sections, count_notes(main), argv or [])


__all__ = ["count_report", "family_rows", "part_rows", "total_rows"]
