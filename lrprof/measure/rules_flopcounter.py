"""The `flopcounter` convention: torch.utils.flop_counter.FlopCounterMode's registry,
restated as pure per-op rules in MACs (FlopCounterMode counts 2 FLOPs per MAC, and every
formula of its registry is even, so FLOPs = 2 x these MACs exactly).

FlopCounterMode counts matrix products (mm, addmm, bmm, baddbmm, _scaled_mm), convolutions
and their backward, and the fused attention kernels; everything else is 0 (norms, pooling,
softmax, elementwise, interpolation). Its convolution_backward formula counts a grouped
convolution's weight gradient as if ungrouped (groups x the forward); kept, to match.

Attention kernels FlopCounterMode misses (`MISSED`): the CPU flash kernel
(_scaled_dot_product_flash_attention_for_cpu and its backward: what F.scaled_dot_product_
attention runs on a CPU), the fused kernel of out-of-tree backends and MPS's math kernel.
This table counts them with the formula of their CUDA twins, and the report says so.
"""

from __future__ import annotations

import math
from typing import Any

from lrprof.measure.rulebase import (
    ATTENTION,
    CONVOLUTION,
    MATRIX,
    Rule,
    Work,
    addmm,
    attention_work,
    baddbmm,
    bmm,
    convolution,
    mm,
    plain_convolution,
)


def convolution_backward(args: tuple, kwargs: dict, out: Any) -> int:
    """grad_input as the transposed convolution of grad_out; grad_weight as a convolution
    of the input with grad_out over batch, with every input and output channel (groups
    ignored, as FlopCounterMode does)."""
    grad_out, x, weight, transposed, mask = args[0], args[1], args[2], bool(args[7]), args[10]
    window = math.prod(weight.shape[2:])
    batch = x.shape[0]
    macs = 0
    if mask[0]:
        spatial = math.prod((x if transposed else grad_out).shape[2:])
        macs += spatial * window * batch * weight.shape[0] * weight.shape[1]
    if mask[1]:
        spatial = math.prod((x if transposed else grad_out).shape[2:])
        macs += window * spatial * x.shape[1] * grad_out.shape[1] * batch
    return macs


def sdpa(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(macs=attention_work(args[0], args[1], args[2], 1, 1, 0).macs)


def sdpa_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(macs=attention_work(args[1], args[2], args[3], 3, 2, 0).macs)


def varlen_forward(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(macs=attention_work(args[0], args[1], args[2], 1, 1, 0, heads_first=False).macs)


def varlen_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(macs=attention_work(args[1], args[2], args[3], 3, 2, 0, heads_first=False).macs)


_PRODUCT = "FlopCounterMode: 2 FLOPs per MAC of the product"
_SDPA = "FlopCounterMode: QK^T and AV (the causal mask is not subtracted)"
_SDPA_BACK = "FlopCounterMode: recomputed QK^T and four gradient products"
_MISSED = "missed by FlopCounterMode; counted as its CUDA twin"

MISSED = frozenset({
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_fused_attention_overrideable",
    "aten::_scaled_dot_product_fused_attention_overrideable_backward",
    "aten::_scaled_dot_product_attention_math_for_mps",
})

FLOPCOUNTER: dict[str, Rule] = {
    "aten::convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::_convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::convolution_overrideable": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::cudnn_convolution": Rule(CONVOLUTION, plain_convolution, _PRODUCT),
    "aten::_slow_conv2d_forward": Rule(CONVOLUTION, plain_convolution, _PRODUCT),
    "aten::convolution_backward": Rule(CONVOLUTION, convolution_backward,
                                       "FlopCounterMode: grad_input and grad_weight as convolutions"),
    "aten::mm": Rule(MATRIX, mm, _PRODUCT),
    "aten::addmm": Rule(MATRIX, addmm, _PRODUCT),
    "aten::bmm": Rule(MATRIX, bmm, _PRODUCT),
    "aten::baddbmm": Rule(MATRIX, baddbmm, _PRODUCT),
    "aten::_scaled_mm": Rule(MATRIX, mm, _PRODUCT),
}
for _name in ("_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_cudnn_attention"):
    FLOPCOUNTER[f"aten::{_name}"] = Rule(ATTENTION, sdpa, _SDPA)
    FLOPCOUNTER[f"aten::{_name}_backward"] = Rule(ATTENTION, sdpa_backward, _SDPA_BACK)
for _name in ("_flash_attention", "_efficient_attention"):
    FLOPCOUNTER[f"aten::{_name}_forward"] = Rule(ATTENTION, varlen_forward, _SDPA)
    FLOPCOUNTER[f"aten::{_name}_backward"] = Rule(ATTENTION, varlen_backward, _SDPA_BACK)
for _name in sorted(MISSED):
    FLOPCOUNTER[_name] = Rule(ATTENTION, sdpa_backward if _name.endswith("_backward") else sdpa, _MISSED)
NOT_COUNTED = "FlopCounterMode: not in its registry: 0"
