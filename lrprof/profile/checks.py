"""The verdicts every profile states.

Failures (the CLI exits 1): an op no rule counts, memory written outside the dispatcher
(an opaque kernel), fewer counted MACs than the operator's exact minimal model (a rule or
the model is wrong: no implementation can do less than the minimum), parameters that
differ from the model, an output that differs from the float64 reference, a network whose
count misses a printed table it is expected to reproduce (one it differs from by design
says so, "differs (expected: ...)", and is not a failure).

Findings that are not failures: an implementation doing more work than the minimum
(the work ratio counted / exact, e.g. a formulation that recomputes), and the distance
from the published O-model, which is a bound up to a constant (tiny maps where the
geometry prior dominates, C < m), not a count.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lrprof.build.ops.registry import OpDef
from lrprof.measure.accuracy import OutputCheck, compare_with_reference
from lrprof.measure.counting import CountResult, missing_text
from lrprof.spec.layer import LayerSpec


def reference_check(op: OpDef, spec: LayerSpec, module: nn.Module, inputs: tuple) -> OutputCheck:
    """`module`'s output on `inputs` against the operator's reference implementation in
    float64, with the same weights (or the operator's own check, DRConv's)."""
    name = op.reference_impl
    reference = op.impl(name).build(spec.replace(dtype="float64", impl=name))
    compare = op.check_output or compare_with_reference
    return compare(module, reference, inputs, spec.dtype, name)


FAILURES = ("uncounted ops", "opaque kernel", "counted < exact", "params != model", "output mismatch",
            "paper figures not reproduced")


def count_checks(counted: CountResult, exact_macs: int, exact_exps: int,
                 params: int | None = None, model_params: int | None = None,
                 paper_macs: float | None = None,
                 band: tuple[float, float] | None = None) -> dict[str, Any]:
    """Checks of one count against its exact and published models."""
    checks: dict[str, Any] = {
        "work_ratio": counted.macs / exact_macs if exact_macs else None,
        "exact_match": counted.macs == exact_macs and counted.softmax_exps == exact_exps,
        "uncounted_ops": missing_text(counted),
        "uncounted": bool(counted.uncounted),
        "opaque": bool(counted.opaque),
        "below_exact": counted.macs < exact_macs,
        "params_match": None if params is None or model_params is None else params == model_params,
    }
    if paper_macs:
        ratio = counted.macs / paper_macs
        checks.update({"counted_over_paper_O": ratio})
        if band:
            low, high = band
            checks.update({"paper_O_band": f"{low:g}-{high:g}", "paper_O_within_band": low <= ratio <= high})
    return checks


def problems(checks: dict[str, Any]) -> list[str]:
    found = []
    if checks.get("uncounted"):
        found.append("uncounted ops")
    if checks.get("opaque"):
        found.append("opaque kernel")
    if checks.get("below_exact"):
        found.append("counted < exact")
    if checks.get("params_match") is False:
        found.append("params != model")
    if checks.get("output_ok") is False:
        found.append("output mismatch")
    if checks.get("paper_failed"):
        found.append("paper figures not reproduced")
    return found


def findings(checks: dict[str, Any]) -> list[str]:
    notes = []
    ratio = checks.get("work_ratio")
    if ratio is not None and ratio > 1 and not checks.get("below_exact"):
        notes.append(f"does {ratio:.3g}x the minimal MACs")
    if checks.get("paper_O_within_band") is False:
        notes.append(f"O-model off: ratio {checks['counted_over_paper_O']:.3g} outside "
                     f"{checks['paper_O_band']}")
    return notes


def settle(checks: dict[str, Any]) -> dict[str, Any]:
    """Write the verdict: the failures, then the findings, or 'ok'."""
    failed = problems(checks)
    checks["counting_ok"] = not any(p in failed for p in FAILURES[:4])
    checks["failed"] = bool(failed)
    checks["verdict"] = "; ".join(failed + findings(checks)) or "ok"
    return checks
