"""Counting MACs: fvcore's tracer with one handle per op, so nothing is skipped silently.

Conventions (1 MAC = one multiply-accumulate = 2 FLOPs):

- conv / linear / matmul: fvcore's own handles (they count MACs);
- an elementwise multiply, or the one nonlinear map standing in its place (pow, abs,
  div), is 1 MAC per output element; the add, subtract, negate or sum next to it is the
  accumulate half of that MAC and counts 0;
- softmax exponentials are counted, but in their own column, not as MACs;
- data movement (unfold/im2col, views, index_select), masking and the layers the papers
  leave out of their tables (batch norm, ReLU, pooling) count 0, each by a registered
  handle, so they are listed with their rule rather than dropped.

Any op without a handle is reported as uncounted: fvcore's built-in list of silently
ignored ops is emptied, so every aten op of the traced graph meets this table.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import (
    addmm_flop_jit,
    bmm_flop_jit,
    conv_flop_jit,
    einsum_flop_jit,
    get_shape,
    linear_flop_jit,
    matmul_flop_jit,
)
from torch import nn

MAC = "MAC"
SOFTMAX = "softmax exp"
ZERO = "0 by rule"

Handle = Callable[[list[Any], list[Any]], int]


def _numel(value: Any) -> int:
    shape = get_shape(value)
    n = 1
    for d in shape or ():
        n *= d
    return n


def _per_output_element(inputs: list[Any], outputs: list[Any]) -> int:
    return _numel(outputs[0])


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


@dataclass(frozen=True)
class Rule:
    category: str
    handle: Handle
    why: str


_MATRIX = "fvcore's handle: multiply-accumulates of the product"
_ELEMENTWISE = "1 per output element (the multiply of a MAC)"
_ACCUMULATE = "0: the accumulate half of a MAC, or a sign"
_MOVE = "0: data movement"
_LEFT_OUT = "0: left out of the papers' tables (foldable or negligible)"

RULES: dict[str, Rule] = {
    "aten::_convolution": Rule(MAC, conv_flop_jit, _MATRIX),
    "aten::addmm": Rule(MAC, addmm_flop_jit, _MATRIX),
    "aten::linear": Rule(MAC, linear_flop_jit, _MATRIX),
    "aten::matmul": Rule(MAC, matmul_flop_jit, _MATRIX),
    "aten::mm": Rule(MAC, matmul_flop_jit, _MATRIX),
    "aten::bmm": Rule(MAC, bmm_flop_jit, _MATRIX),
    "aten::einsum": Rule(MAC, einsum_flop_jit, _MATRIX),
    "aten::mul": Rule(MAC, _per_output_element, _ELEMENTWISE),
    "aten::mul_": Rule(MAC, _per_output_element, _ELEMENTWISE),
    "aten::pow": Rule(MAC, _per_output_element, _ELEMENTWISE),
    "aten::abs": Rule(MAC, _per_output_element, _ELEMENTWISE),
    "aten::div": Rule(MAC, _per_output_element, _ELEMENTWISE),
    "aten::softmax": Rule(SOFTMAX, _per_output_element, "1 exponential per element"),
    "aten::_softmax": Rule(SOFTMAX, _per_output_element, "1 exponential per element"),
    "aten::add": Rule(ZERO, _zero, _ACCUMULATE),
    "aten::add_": Rule(ZERO, _zero, _ACCUMULATE),
    "aten::sub": Rule(ZERO, _zero, _ACCUMULATE),
    "aten::rsub": Rule(ZERO, _zero, _ACCUMULATE),
    "aten::neg": Rule(ZERO, _zero, _ACCUMULATE),
    "aten::sum": Rule(ZERO, _zero, _ACCUMULATE),
    "aten::im2col": Rule(ZERO, _zero, _MOVE),
    "aten::view": Rule(ZERO, _zero, _MOVE),
    "aten::reshape": Rule(ZERO, _zero, _MOVE),
    "aten::flatten": Rule(ZERO, _zero, _MOVE),
    "aten::index_select": Rule(ZERO, _zero, _MOVE),
    "aten::slice": Rule(ZERO, _zero, _MOVE),
    "aten::to": Rule(ZERO, _zero, _MOVE),
    "aten::cat": Rule(ZERO, _zero, _MOVE),
    "aten::unsqueeze": Rule(ZERO, _zero, _MOVE),
    "aten::contiguous": Rule(ZERO, _zero, _MOVE),
    "aten::size": Rule(ZERO, _zero, _MOVE),
    "aten::Int": Rule(ZERO, _zero, _MOVE),
    "aten::ones": Rule(ZERO, _zero, _MOVE),
    "aten::lt": Rule(ZERO, _zero, "0: building the outside-the-image mask"),
    "aten::masked_fill": Rule(ZERO, _zero, "0: masking out-of-image neighbours"),
    "aten::relu": Rule(ZERO, _zero, _LEFT_OUT),
    "aten::relu_": Rule(ZERO, _zero, _LEFT_OUT),
    "aten::batch_norm": Rule(ZERO, _zero, _LEFT_OUT),
    "aten::max_pool2d": Rule(ZERO, _zero, _LEFT_OUT),
    "aten::adaptive_avg_pool2d": Rule(ZERO, _zero, _LEFT_OUT),
    "aten::mean": Rule(ZERO, _zero, _LEFT_OUT),
}


@dataclass(frozen=True)
class OpCount:
    op: str
    category: str
    count: int
    rule: str
    calls: int


@dataclass(frozen=True)
class CountResult:
    """Counted work of one forward pass."""

    macs: int
    softmax_exps: int
    by_op: tuple[OpCount, ...]
    uncounted: dict[str, int]  # aten op -> occurrences, ops no handle covered
    module_macs: dict[str, int] = field(default_factory=dict)  # inclusive, "" = whole model
    method: str = "fvcore jit trace, lrprof handle table"

    @property
    def complete(self) -> bool:
        return not self.uncounted


@dataclass(frozen=True)
class StockCounts:
    """What the stock counters report for the same forward pass."""

    fvcore_macs: int
    fvcore_skipped: dict[str, int]
    flopcounter_flops: int

    @property
    def flopcounter_macs(self) -> float:
        return self.flopcounter_flops / 2


def _analysis(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> FlopCountAnalysis:
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _quiet_fvcore() -> None:
    logging.getLogger("fvcore").setLevel(logging.ERROR)


def _category(op: str) -> str | None:
    rule = RULES.get(op)
    return rule.category if rule else None


def _keyed(name: str, handle: Handle, calls: Counter) -> Callable[[list[Any], list[Any]], Counter]:
    """Key every result by its aten op (some fvcore handles say 'conv') and note the call:
    fvcore's Counters drop zero counts, and the report lists the zero-rule ops too."""

    def keyed(inputs: list[Any], outputs: list[Any]) -> Counter:
        calls[name] += 1
        n = handle(inputs, outputs)
        return Counter({name: int(sum(n.values()) if isinstance(n, Counter) else n)})

    return keyed


def count(model: nn.Module, *inputs: torch.Tensor, per_module: bool = False) -> CountResult:
    """Count one forward pass with lrprof's handle table (model in its current mode)."""
    _quiet_fvcore()
    calls: Counter = Counter()
    analysis = _analysis(model, inputs)
    analysis.set_op_handle(
        **{name: _keyed(name, rule.handle, calls) for name, rule in RULES.items()}
    )
    if not hasattr(analysis, "_ignored_ops"):  # fvcore's private list; refuse rather than skip
        raise RuntimeError("this fvcore version has no _ignored_ops: complete counting unavailable")
    analysis._ignored_ops = set()  # nothing skipped silently: every aten op needs a rule
    with torch.no_grad():
        by_op = analysis.by_operator()
        uncounted = dict(analysis.unsupported_ops())
        per_module_ops = analysis.by_module_and_operator() if per_module else {}
    rows = []
    macs = exps = 0
    for op in sorted(calls):
        rule, n = RULES[op], int(by_op.get(op, 0))
        rows.append(OpCount(op, rule.category, n, rule.why, calls[op]))
        if rule.category == MAC:
            macs += n
        elif rule.category == SOFTMAX:
            exps += n
    module_macs = {
        name: int(sum(n for op, n in ops.items() if _category(op) == MAC))
        for name, ops in per_module_ops.items()
    }
    return CountResult(macs, exps, tuple(rows), uncounted, module_macs)


def stock_counts(model: nn.Module, *inputs: torch.Tensor) -> StockCounts:
    """fvcore with its default handles, and torch's FlopCounterMode, on the same forward."""
    from torch.utils.flop_counter import FlopCounterMode

    _quiet_fvcore()
    analysis = _analysis(model, inputs)
    with torch.no_grad():
        fv_total = int(analysis.total())
        skipped = dict(analysis.unsupported_ops())
        with FlopCounterMode(display=False) as counter:
            model(*inputs)
    return StockCounts(fv_total, skipped, int(counter.get_total_flops()))


def uncounted_text(uncounted: dict[str, int]) -> str:
    if not uncounted:
        return "none"
    return ", ".join(f"{op} x{n}" for op, n in sorted(Counter(uncounted).items()))
