"""The verdicts every profile states: does the count equal the exact model, is nothing
left uncounted, do the parameters match the model, and how far is the published O-model.

Only the first three are correctness claims (a failure is a bug: the CLI exits 1). The
O-model is a bound up to a constant; being outside its band says where the formula stops
predicting (tiny maps where the geometry prior dominates, C < m), not that a count is wrong.
"""

from __future__ import annotations

from typing import Any

from lrprof.measure.counting import CountResult, uncounted_text

FAILED_CHECKS = ("counted != exact", "uncounted ops", "params != model")


def count_checks(counted: CountResult, exact_macs: int, exact_exps: int,
                 params: int | None = None, model_params: int | None = None,
                 paper_macs: float | None = None,
                 band: tuple[float, float] | None = None) -> dict[str, Any]:
    exact_match = counted.macs == exact_macs and counted.softmax_exps == exact_exps
    checks: dict[str, Any] = {
        "counted_over_exact": counted.macs / exact_macs if exact_macs else None,
        "exact_match": exact_match,
        "uncounted_ops": uncounted_text(counted.uncounted),
    }
    problems = []
    if not exact_match:
        problems.append("counted != exact")
    if not counted.complete:
        problems.append("uncounted ops")
    if params is not None and model_params is not None and params != model_params:
        problems.append("params != model")
    notes = []
    if paper_macs and band:
        low, high = band
        ratio = counted.macs / paper_macs
        within = low <= ratio <= high
        checks.update({"counted_over_paper_O": ratio, "paper_O_band": f"{low:g}-{high:g}",
                       "paper_O_within_band": within})
        if not within:
            notes.append(f"O-model off: ratio {ratio:.3g} outside {low:g}-{high:g}")
    checks["verdict"] = "; ".join(problems + notes) or "ok"
    checks["counting_ok"] = not problems
    return checks
