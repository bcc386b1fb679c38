"""flex_attention counted completely: a higher-order op whose work depends on its block
mask and on two user functions, so no per-op rule of the aten tables can price it.

- lrprof: the products of the blocks the mask keeps (QK^T and AV over every computed
  score: partial and full blocks, Q_BLOCK x KV_BLOCK each, clipped at the sequence ends),
  one exponential per computed score, plus the score_mod's own work per computed score and
  the mask_mod's per score of a partial block, both measured by running them once on
  scalars under lrprof's rules. Backward: recomputed QK^T and four gradient products
  (3 x E + 2 x Ev per score), the score_mod twice (its value and its gradient).
- flopcounter: FlopCounterMode's registered formula, the dense L x S product whatever the
  mask (its sparsity hint only exists in compiled graphs).
- fvcore: 0 (no handle).

Counting the mask's blocks reads the block mask's tensors, so flex_attention needs real
values: a --meta count refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lrprof.measure.rulebase import ATTENTION, Rule, Work, attention_work

FORWARD, BACKWARD = "flex_attention", "flex_attention_backward"
WHY = "blocks the mask keeps: QK^T and AV, exps, score_mod per score, mask_mod per partial-block score"
WHY_BACK = "blocks the mask keeps: recomputed QK^T and four gradient products, score_mod twice"


def _blocks(block_mask: tuple, q: torch.Tensor, k: torch.Tensor) -> tuple[int, int]:
    """(computed scores, scores of partial blocks) over batch and heads."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    partial, full = block_mask[2], block_mask[4]
    q_block, kv_block = int(block_mask[-3]), int(block_mask[-2])
    broadcast = (q.shape[0] // partial.shape[0]) * (q.shape[1] // partial.shape[1])
    rows = torch.tensor([min(q_block, q_len - i * q_block) for i in range(partial.shape[-1])])
    kv_size = min(kv_block, kv_len)
    partial_scores = int((partial.to(torch.int64) * rows).sum()) * kv_size * broadcast
    full_scores = int((full.to(torch.int64) * rows).sum()) * kv_size * broadcast if full is not None else 0
    return partial_scores + full_scores, partial_scores


def _per_score(fn: Callable | None, arity: int, measure: Callable[[Callable[[], Any]], int]) -> int:
    """MACs one call of a score_mod (arity 5) or mask_mod (arity 4) costs on scalars."""
    if fn is None:
        return 0
    index = torch.zeros((), dtype=torch.int32)
    scalars = ((torch.zeros(()),) if arity == 5 else ()) + (index,) * 4
    try:
        return measure(lambda: fn(*scalars))
    except Exception:  # a mod that cannot run on scalars: its work is not added
        return 0


def flex_forward(args: tuple, measure: Callable[[Callable[[], Any]], int]) -> Work:
    q, k, v, score_mod, block_mask = args[:5]
    scores, partial = _blocks(block_mask, q, k)
    width, value_width = q.shape[-1], v.shape[-1]
    macs = scores * (width + value_width)
    macs += scores * _per_score(score_mod, 5, measure)
    macs += partial * _per_score(block_mask[-1], 4, measure)
    return Work(macs=macs, exps=scores)


def flex_backward(args: tuple, measure: Callable[[Callable[[], Any]], int]) -> Work:
    q, k, v = args[0], args[1], args[2]
    block_mask = args[9]
    scores, partial = _blocks(block_mask, q, k)
    macs = scores * (3 * q.shape[-1] + 2 * v.shape[-1])
    macs += partial * _per_score(block_mask[-1], 4, measure)
    return Work(macs=macs, exps=scores)


def dense_forward(args: tuple) -> Work:
    return Work(macs=attention_work(args[0], args[1], args[2], 1, 1, 0).macs)


def dense_backward(args: tuple) -> Work:
    return Work(macs=attention_work(args[0], args[1], args[2], 3, 2, 0).macs)


def rule(name: str, convention: str, measure: Callable[[Callable[[], Any]], int]) -> Rule | None:
    """The rule pricing the higher-order op `name` under `convention`; None: not flex."""
    def lrprof_fn(args: tuple, kwargs: dict, out: Any) -> Work:
        return (flex_forward if name == FORWARD else flex_backward)(args, measure)

    def dense_fn(args: tuple, kwargs: dict, out: Any) -> Work:
        return (dense_forward if name == FORWARD else dense_backward)(args)

    if name not in (FORWARD, BACKWARD):
        return None
    if convention == "flopcounter":
        return Rule(ATTENTION, dense_fn, "FlopCounterMode's flex formula: dense L x S, the mask ignored")
    if convention == "fvcore":
        return Rule(ATTENTION, lambda a, k, o: 0, "fvcore: no handle (ignored or skipped): 0")
    return Rule(ATTENTION, lrprof_fn, WHY if name == FORWARD else WHY_BACK)
