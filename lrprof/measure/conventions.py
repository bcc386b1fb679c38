"""Counting conventions: which rule table the counter applies. Each is a table of pure
per-op rules (like fvcore's jit_handles); the engine (lrprof.measure.counting) picks one and
can apply the others to the same calls, so a report shows, family by family, what each
convention counts.

- `lrprof` (default): the papers' convention (lrprof.measure.rules): every op has a rule or
  is uncounted, and an uncounted op fails the count.
- `fvcore`: fvcore's default handles, op for op (lrprof.measure.rules_fvcore); its unit is
  the MAC (fvcore calls it a flop).
- `flopcounter`: torch's FlopCounterMode registry (lrprof.measure.rules_flopcounter); its unit
  is the FLOP, 2 per MAC; the attention kernels it misses on the CPU are counted and named.

Under a peer's convention an op the peer has no handle for counts 0, as it does there;
nothing fails for it.
"""

from __future__ import annotations

from lrprof.measure import rules
from lrprof.measure.rulebase import (
    ACCUMULATE,
    ACTIVATION,
    ATTENTION,
    CONVOLUTION,
    CUSTOM,
    ELEMENTWISE,
    EXPONENTIAL,
    MASKING,
    MATRIX,
    MOVEMENT,
    NORMALISATION,
    POOLING,
    RESAMPLING,
    Rule,
)
from lrprof.measure.rules_flopcounter import FLOPCOUNTER, MISSED
from lrprof.measure.rules_flopcounter import NOT_COUNTED as FLOPCOUNTER_ZERO
from lrprof.measure.rules_fvcore import FVCORE
from lrprof.measure.rules_fvcore import NOT_COUNTED as FVCORE_ZERO
from lrprof.spec.errors import SpecError
from lrprof.spec.options import CONVENTIONS

LRPROF, FVCORE_NAME, FLOPCOUNTER_NAME = CONVENTIONS
NAMES = CONVENTIONS
UNITS = {LRPROF: "MACs", FVCORE_NAME: "MACs (fvcore's 'flops')", FLOPCOUNTER_NAME: "FLOPs (2 per MAC)"}
FLOPS_PER_MAC = {LRPROF: 1, FVCORE_NAME: 1, FLOPCOUNTER_NAME: 2}  # the convention's own unit
MISSED_BY_FLOPCOUNTER = MISSED

# What each convention counts, family by family, and why they differ.
FAMILIES: dict[str, tuple[str, str, str]] = {
    CONVOLUTION: ("the product's MACs; backward one forward per gradient asked for",
                  "the product's MACs (forward only in fvcore)",
                  "the product's MACs; a grouped conv's weight gradient as if ungrouped"),
    MATRIX: ("the product's MACs (mm, addmm, bmm, baddbmm, einsum's bmm)",
             "the product's MACs; baddbmm not counted (no handle)",
             "the product's MACs"),
    ATTENTION: ("QK^T and AV MACs, one exp per score; backward 5 products",
                "0 (no handle for fused attention)",
                "QK^T and AV; the CPU flash kernel it misses counted as its CUDA twin"),
    ELEMENTWISE: ("1 MAC per output element of a multiply, divide, power, abs",
                  "0 (ignored)", "0 (not in the registry)"),
    EXPONENTIAL: ("exponentials in their own column; softmax backward 2 MACs per element",
                  "0 (ignored)", "0 (not in the registry)"),
    ACCUMULATE: ("0: the add half of a MAC", "0", "0"),
    NORMALISATION: ("0 forward and backward (papers leave it out)",
                    "batch norm N x 2 (eval, affine) or N x 5 (training); group, layer and "
                    "instance norm N x 5 (affine) or N x 4", "0 (not in the registry)"),
    POOLING: ("0 forward and backward (papers leave it out)",
              "adaptive average pooling 1 per input element; other pooling 0",
              "0 (not in the registry)"),
    RESAMPLING: ("1 MAC per tap per output element: bilinear 4, bicubic 16, nearest 0; grid "
                 "sampling as its mode", "nearest 1, bilinear 4 per output element; grid "
                 "sampling 4 (assumes bilinear); bicubic 0", "0 (not in the registry)"),
    ACTIVATION: ("0 (papers leave it out)", "0 (ignored)", "0 (not in the registry)"),
    MOVEMENT: ("0", "0 (nearest upsampling: 1 per output element)", "0"),
    MASKING: ("0", "0", "0"),
    CUSTOM: ("the op's registered rule", "0 (unknown to fvcore)", "0 (unknown to FlopCounterMode)"),
}


def table(name: str) -> dict[str, Rule]:
    """The rule table of a convention. lrprof's is looked up on each call, so a rule
    registered later (register_rule) is in it."""
    if name == LRPROF:
        return rules.RULES
    if name == FVCORE_NAME:
        return FVCORE
    if name == FLOPCOUNTER_NAME:
        return FLOPCOUNTER
    raise SpecError("convention", f"one of {', '.join(NAMES)}", name)


def zero_reason(name: str) -> str:
    return {FVCORE_NAME: FVCORE_ZERO, FLOPCOUNTER_NAME: FLOPCOUNTER_ZERO}.get(name, "")


def check(name: str) -> str:
    table(name)
    return name


__all__ = ["FAMILIES", "FLOPS_PER_MAC", "MISSED_BY_FLOPCOUNTER", "NAMES", "UNITS", "check", "table",
           "zero_reason"]
