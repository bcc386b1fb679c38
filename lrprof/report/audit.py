"""The tables of a `lrprof check` report: one row per check (pass/FAIL, what was measured,
what lrprof's implementation gives), the constructor mapping, the user's module beside
lrprof's implementation (latency, memory, MACs), and the stock counters like for like."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrprof.build.ops.registry import spec_label
from lrprof.measure import device as device_facts
from lrprof.profile.audit.probes import MOVE_TOLERANCE, TOLERANCE
from lrprof.record.records import Record, Report, Section
from lrprof.report import latency_text
from lrprof.report.layer import stock_rows
from lrprof.report.numbers import mib, runs_text

if TYPE_CHECKING:
    from lrprof.profile.audit import Audit

def check_rows(audit: Audit) -> list[dict[str, Any]]:
    return [{"check": r.check, "result": r.status, "measured": r.measured,
             "expected (lrprof's implementation)": r.expected} for r in audit.results]


def mapping_rows(audit: Audit) -> list[dict[str, Any]]:
    rows = [{"constructor argument": r["constructor argument"], "value": repr(r["value"]), "from": r["from"]}
            for r in audit.mapping.rows]
    rows += [{"constructor argument": "(none)", "value": f"{r['operator parameter']}={r['value']!r}",
              "from": r["note"]} for r in audit.mapping.unpassed]
    return rows


def side_by_side_rows(records: list[Record]) -> list[dict[str, Any]]:
    backward = any("fwd_bwd" in r.latency for r in records)
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "implementation": r.name,
            "params": r.counted.get("params"),
            "fwd MACs": r.counted.get("fwd_MACs"),
            "fwd exps": r.counted.get("fwd_exps"),
            "fwd ms, median [IQR]": latency_text(r.latency.get("fwd"), runs=False),
            "fwd runs": runs_text(r.latency.get("fwd")),
        }
        if backward:
            row["bwd MACs"] = r.counted.get("bwd_MACs")
            row["fwd+bwd ms, median [IQR]"] = latency_text(r.latency.get("fwd_bwd"), runs=False)
            row["fwd+bwd runs"] = runs_text(r.latency.get("fwd_bwd"))
        m = r.memory.get("fwd")
        row["fwd peak (MiB)"] = mib(m.peak_bytes) if m else None
        row["fwd time / lrprof's"] = r.derived.get("fwd_latency_vs_lrprof")
        row["fwd peak / lrprof's"] = r.derived.get("fwd_peak_vs_lrprof")
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return rows


def audit_report(audit: Audit, argv: list[str] | None = None,
                 environment: device_facts.Environment | None = None) -> Report:
    spec = audit.spec
    if environment is None:
        environment = audit.environment or device_facts.Environment.unrecorded(
            spec.device if spec.device != "auto" else "cpu")
    timed = [r for r in (audit.user, audit.own) if r is not None]
    failed = [r.check for r in audit.results if r.passed is False]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "every check passed"
    sections = [
        Section(f"Checks: {audit.target.attribute} as {spec.op} ({spec_label(spec)}): {verdict}",
                check_rows(audit),
                f"probes in float64 on one or two random images of {spec.channels}x"
                f"{spec.height}x{spec.width}; equal means within {TOLERANCE:g} of the output's scale; "
                "n/a: the probe does not apply here; info: a measurement, not a verdict",
                essential=("check", "result", "measured"),
                shorten=("measured", "expected (lrprof's implementation)")),
        Section("Constructor arguments (operator parameters mapped by name; --init overrides)",
                mapping_rows(audit)),
        Section("Your implementation beside lrprof's (same run, interleaved; MACs: "
                "multiply-accumulates, 1 MAC = 2 FLOPs)", side_by_side_rows(timed)),
        Section("What stock counters see of your implementation (same forward pass, by op family)",
                stock_rows([audit.user] if audit.user else [])),
    ]
    if audit.user is not None and audit.user.detail.get("ops"):
        ops = [{"op": o["op"], "phase": o["phase"], "family": o["family"], "calls": o["calls"],
                "MACs": o["macs"], "exps": o["exps"], "rule": o["rule"]} for o in audit.user.detail["ops"]]
        uncounted = audit.user.checks.get("uncounted_ops", "n/a")
        sections.append(Section(f"Ops met at the dispatcher: {audit.user.name}", ops,
                                f"uncounted: {uncounted}", show="markdown"))
    notes = [
        f"class: {audit.target.attribute} from {audit.target.source}"
        + (f" (sha256 {audit.target.sha256[:16]})" if audit.target.sha256 else ""),
        "every expectation is what lrprof's implementation of the operator gives under the same probe "
        f"({spec.op}[{_reference(spec.op)}], float64).",
        "receptive field: the input positions where the gradient of one output pixel (the centre of "
        "image 0) is not exactly zero; the form is compared, wherever it lies.",
        "border: a constant image stays constant when neighbours outside the image are left out of the "
        "softmax; zero padding taken as pixels changes the output near the borders.",
        f"registration: a second instance loaded from the first's state_dict; .to(float64) within "
        f"{MOVE_TOLERANCE:g}; a device move (CUDA when present, else the meta device).",
        "cost: MACs and exponentials counted at the dispatcher over one forward pass of your module, "
        "against the operator's exact term-by-term model at this shape.",
    ]
    timings = [s for r in timed for s in r.latency.values()]
    if timings:
        notes.append(f"timing: {timings[0].method}")
    return Report("check", environment, audit.records, sections, notes, argv or [])


def _reference(op: str) -> str:
    from lrprof.build.ops.registry import get_op

    return get_op(op).reference_impl
