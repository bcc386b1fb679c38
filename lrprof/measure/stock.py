"""What the stock counters report for the same forward pass, compared like for like.

fvcore (its default handles, through a torch.jit trace) and torch's FlopCounterMode (at
the dispatcher) each count some families of ops and skip others; fvcore also counts batch
norm and pooling, which lrprof's rules count 0 as the papers do. So each figure is split
by family: where both count, the numbers must agree; what a stock counter skips is the
share of the work it misses.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lrprof.measure import rules
from lrprof.measure.counting import CountResult
from lrprof.measure.modes import dynamo_not_imported
from lrprof.spec.errors import describe

# fvcore's handles name their results by family, not by aten op.
FVCORE_FAMILIES = {
    "conv": rules.CONVOLUTION,
    "linear": rules.MATRIX, "addmm": rules.MATRIX, "matmul": rules.MATRIX, "bmm": rules.MATRIX,
    "einsum": rules.MATRIX, "mm": rules.MATRIX,
    "batch_norm": rules.NORMALISATION, "layer_norm": rules.NORMALISATION,
    "group_norm": rules.NORMALISATION, "instance_norm": rules.NORMALISATION,
    "adaptive_avg_pool2d": rules.POOLING,
    "upsample_nearest2d": rules.MOVEMENT, "upsample_bilinear2d": rules.MOVEMENT,
}


@dataclass(frozen=True)
class StockCounts:
    """fvcore counts MACs (it calls them flops); FlopCounterMode counts FLOPs (2 per MAC)."""

    fvcore_macs: int | None
    fvcore_families: dict[str, int] = field(default_factory=dict)
    fvcore_skipped: dict[str, int] = field(default_factory=dict)
    fvcore_error: str | None = None
    flopcounter_flops: int | None = None
    flopcounter_families: dict[str, int] = field(default_factory=dict)  # FLOPs per family
    flopcounter_error: str | None = None

    @property
    def flopcounter_macs(self) -> float | None:
        return None if self.flopcounter_flops is None else self.flopcounter_flops / 2


def _fvcore(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int], dict[str, int]]:
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    families: dict[str, int] = defaultdict(int)
    with torch.no_grad():
        for key, n in analysis.by_operator().items():
            families[FVCORE_FAMILIES.get(key, f"other ({key})")] += int(n)
        return int(analysis.total()), dict(families), dict(analysis.unsupported_ops())


def _flopcounter(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int]]:
    from torch.utils import flop_counter

    # its dispatch mode is torch's private class; without it, the dynamo import just happens
    mode = getattr(flop_counter, "_FlopCounterMode", None)
    quiet = dynamo_not_imported(model, mode) if mode is not None else contextlib.nullcontext()
    with torch.no_grad(), quiet, flop_counter.FlopCounterMode(display=False) as counter:
        model(*inputs)
    families: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        rule = rules.RULES.get(rules.op_name(op))
        families[rule.family if rule else f"other ({op})"] += int(flops)
    return int(counter.get_total_flops()), dict(families)


def stock_counts(model: nn.Module, *inputs: Any) -> StockCounts:
    """Both stock counters on one forward pass each; a counter that fails (fvcore cannot
    trace a compiled module) is recorded with its reason, not raised."""
    fv_total = fv_error = None
    fv_families: dict[str, int] = {}
    skipped: dict[str, int] = {}
    try:
        fv_total, fv_families, skipped = _fvcore(model, inputs)
    except Exception as exc:  # a stock counter's failure is a finding, not ours
        fv_error = describe(exc)
    fc_total = fc_error = None
    fc_families: dict[str, int] = {}
    try:
        fc_total, fc_families = _flopcounter(model, inputs)
    except Exception as exc:
        fc_error = describe(exc)
    return StockCounts(fv_total, fv_families, skipped, fv_error, fc_total, fc_families, fc_error)


def like_for_like(ours: CountResult, stock: StockCounts) -> list[dict[str, Any]]:
    """One row per op family: lrprof's MACs beside each stock counter's (FLOPs halved)."""
    mine = ours.family_macs()
    fc_macs = {f: v / 2 for f, v in stock.flopcounter_families.items()}
    families = sorted(set(mine) | set(stock.fvcore_families) | set(fc_macs))
    rows = []
    for family in families:
        a, b, c = mine.get(family, 0), stock.fvcore_families.get(family), fc_macs.get(family)
        if not (a or b or c):
            continue
        rows.append({"family": family, "lrprof_MACs": a, "fvcore_MACs": b or 0,
                     "flopcounter_MACs": c or 0})
    return rows


def missed_macs(ours: CountResult, counted_families: dict[str, float]) -> int:
    """lrprof's MACs in the families a stock counter reported nothing for."""
    return sum(n for family, n in ours.family_macs().items() if not counted_families.get(family))


def missed_pct(ours: CountResult, counted_families: dict[str, float]) -> float | None:
    return 100.0 * missed_macs(ours, counted_families) / ours.macs if ours.macs else None
