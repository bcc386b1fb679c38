"""What each dispatcher op costs: one rule per op, pure functions of the call's arguments
and output (fvcore's handle table, at the level of torch's dispatcher).

Conventions (1 MAC = one multiply-accumulate = 2 FLOPs):

- convolutions and matrix products: the multiply-accumulates of the product; a
  convolution's backward costs one forward per gradient asked for (input, weight);
- an elementwise multiply, divide, power or absolute value (the nonlinearity that stands
  where a multiply would) is 1 MAC per output element; the add, subtract, negate or sum
  beside it is the accumulate half of that MAC and counts 0;
- exponentials (softmax, exp) are counted in their own column, not as MACs; softmax's
  backward is two multiplies per element;
- data movement, allocation, masking and comparisons count 0, and so do the layers the
  papers leave out of their tables (normalisation, activations, pooling): each by a rule
  that says why, so they are listed rather than dropped.

An op with no rule is *uncounted*: the counter lists it and the profile fails. Register a
rule for your own `torch.library` op with `register_rule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Work:
    """Counted work of one op call: multiply-accumulates and exponentials."""

    macs: int = 0
    exps: int = 0


RuleFn = Callable[[tuple, dict, Any], "int | Work"]


@dataclass(frozen=True)
class Rule:
    """`fn(args, kwargs, out)` gives the call's MACs (an int) or a `Work`; `family` groups
    ops for reports and for comparing with stock counters; `why` is shown beside the count."""

    family: str
    fn: RuleFn
    why: str

    def work(self, args: tuple, kwargs: dict, out: Any) -> Work:
        value = self.fn(args, kwargs, out)
        return value if isinstance(value, Work) else Work(macs=int(value))


# Families: the unit a stock counter is compared on, like for like.
CONVOLUTION = "convolution"
MATRIX = "matrix product"
ATTENTION = "fused attention"
ELEMENTWISE = "elementwise multiply"
EXPONENTIAL = "exponential (softmax)"
ACCUMULATE = "accumulate"
NORMALISATION = "normalisation"
POOLING = "pooling"
ACTIVATION = "activation"
MOVEMENT = "data movement"
MASKING = "masking and comparison"
CUSTOM = "custom op"

RULES: dict[str, Rule] = {}


def op_name(op: Any) -> str:
    """'aten::mul' for torch.ops.aten.mul, its overloads, or the string itself."""
    if isinstance(op, str):
        return op
    schema = getattr(op, "_schema", None)
    if schema is not None:
        return schema.name
    qualified = getattr(op, "_qualified_op_name", None)  # an OpOverloadPacket
    if qualified:
        return qualified
    name = getattr(op, "_qualname", None) or getattr(op, "_name", None)  # torch.library CustomOpDef
    if isinstance(name, str) and "::" in name:
        return name
    raise TypeError(f"not an operator: {op!r}")


def register_rule(op: Any, fn: RuleFn, why: str, family: str = CUSTOM, replace: bool = False) -> Rule:
    """Count calls of `op` (an op such as torch.ops.mylib.fused, or its name 'mylib::fused')
    with `fn(args, kwargs, out) -> MACs` (an int, or a `Work` with exponentials too)."""
    name = op_name(op)
    if name in RULES and not replace:
        raise ValueError(f"a rule for {name} is registered already (replace=True to change it)")
    rule = Rule(family, fn, why)
    RULES[name] = rule
    return rule


def _numel(value: Any) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 0


def _first_tensor(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return value


def per_output_element(args: tuple, kwargs: dict, out: Any) -> int:
    return _numel(_first_tensor(out))


def zero(args: tuple, kwargs: dict, out: Any) -> int:
    return 0


def _conv_macs(out_shape: Iterable[int], in_shape: Iterable[int], weight_shape: Iterable[int],
               transposed: bool) -> int:
    """Products of a convolution: each output element (each input element when transposed)
    meets (channels per group) x (kernel window) weights."""
    w = list(weight_shape)
    window = math.prod(w[2:])
    if transposed:  # weight (Cin, Cout/groups, k...): every input element meets Cout/g windows
        return math.prod(in_shape) * w[1] * window
    return math.prod(out_shape) * w[1] * window


def convolution(args: tuple, kwargs: dict, out: Any) -> int:
    x, weight, transposed = args[0], args[1], bool(args[6]) if len(args) > 6 else False
    return _conv_macs(out.shape, x.shape, weight.shape, transposed)


def convolution_backward(args: tuple, kwargs: dict, out: Any) -> int:
    """grad_input is a transposed convolution and grad_weight a convolution, each with the
    forward's multiply-accumulates; grad_bias is a sum (0)."""
    grad_out, x, weight = args[0], args[1], args[2]
    transposed = bool(args[7])
    mask = args[10]
    forward = _conv_macs(grad_out.shape, x.shape, weight.shape, transposed)
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))


def mm(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]


def addmm(args: tuple, kwargs: dict, out: Any) -> int:
    return mm(args[1:], kwargs, out)


def bmm(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def baddbmm(args: tuple, kwargs: dict, out: Any) -> int:
    return bmm(args[1:], kwargs, out)


def dot(args: tuple, kwargs: dict, out: Any) -> int:
    return _numel(args[0])


def mv(args: tuple, kwargs: dict, out: Any) -> int:
    return _numel(args[0])


def addmv(args: tuple, kwargs: dict, out: Any) -> int:
    return _numel(args[1])


def _attention_work(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, products: float,
                    value_products: float, exps: int) -> Work:
    """q (..., L, E), k (..., S, E), v (..., S, Ev): QK^T costs L*S*E per batch-head and the
    weighted sum of values L*S*Ev."""
    batch = math.prod(q.shape[:-2])
    length, width, keys, value_width = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    qk = batch * length * keys * width
    av = batch * length * keys * value_width
    return Work(macs=int(products * qk + value_products * av), exps=exps * batch * length * keys)


def attention_forward(args: tuple, kwargs: dict, out: Any) -> Work:
    return _attention_work(args[0], args[1], args[2], 1, 1, 1)


def attention_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    """Recomputes QK^T and the softmax, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q."""
    return _attention_work(args[1], args[2], args[3], 3, 2, 1)


def softmax(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(exps=_numel(out))


def softmax_backward(args: tuple, kwargs: dict, out: Any) -> int:
    return 2 * _numel(out)  # y * g, then y * (g - sum(y * g))


def log_softmax_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(macs=_numel(out), exps=_numel(out))  # g - exp(y) * sum(g)


def _table(family: str, why: str, fn: RuleFn, names: str) -> None:
    for name in names.split():
        RULES[f"aten::{name}"] = Rule(family, fn, why)


_PRODUCT = "multiply-accumulates of the product"
_ZERO_ACCUMULATE = "0: the accumulate half of a MAC, or a sign"
_ZERO_MOVE = "0: data movement or allocation"
_ZERO_MASK = "0: masking, comparison or selection"
_LEFT_OUT = "0: left out of the papers' tables"

RULES.update({
    "aten::convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::_convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::convolution_backward": Rule(
        CONVOLUTION, convolution_backward, "one forward's MACs per gradient (input, weight)"),
    "aten::mm": Rule(MATRIX, mm, _PRODUCT),
    "aten::addmm": Rule(MATRIX, addmm, _PRODUCT),
    "aten::bmm": Rule(MATRIX, bmm, _PRODUCT),
    "aten::baddbmm": Rule(MATRIX, baddbmm, _PRODUCT),
    "aten::dot": Rule(MATRIX, dot, _PRODUCT),
    "aten::mv": Rule(MATRIX, mv, _PRODUCT),
    "aten::addmv": Rule(MATRIX, addmv, _PRODUCT),
    "aten::_softmax": Rule(EXPONENTIAL, softmax, "1 exponential per element"),
    "aten::_log_softmax": Rule(EXPONENTIAL, softmax, "1 exponential per element"),
    "aten::exp": Rule(EXPONENTIAL, softmax, "1 exponential per element"),
    "aten::_softmax_backward_data": Rule(EXPONENTIAL, softmax_backward, "2 multiplies per element"),
    "aten::_log_softmax_backward_data": Rule(
        EXPONENTIAL, log_softmax_backward, "1 exponential and 1 multiply per element"),
})
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
    RULES[f"aten::{_name}"] = Rule(ATTENTION, attention_forward, "QK^T and AV products; exps of QK^T")
    RULES[f"aten::{_name}_backward"] = Rule(
        ATTENTION, attention_backward, "recomputed QK^T and the four gradient products")

_table(ELEMENTWISE, "1 per output element (the multiply of a MAC)", per_output_element,
       "mul mul_ div div_ pow pow_ abs abs_ sqrt rsqrt reciprocal square addcmul addcmul_ "
       "addcdiv addcdiv_ lerp lerp_ _foreach_mul")
_table(ACCUMULATE, _ZERO_ACCUMULATE, zero,
       "add add_ sub sub_ rsub neg neg_ sum cumsum sgn sign")
_table(NORMALISATION, _LEFT_OUT, zero,
       "native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training "
       "_native_batch_norm_legit_functional native_batch_norm_backward batch_norm_backward "
       "native_layer_norm native_layer_norm_backward native_group_norm native_group_norm_backward "
       "_batch_norm_with_update _batch_norm_no_update")
_table(POOLING, _LEFT_OUT, zero,
       "max_pool2d_with_indices max_pool2d_with_indices_backward avg_pool2d avg_pool2d_backward "
       "_adaptive_avg_pool2d _adaptive_avg_pool2d_backward adaptive_max_pool2d "
       "adaptive_max_pool2d_backward mean max_pool2d")
_table(ACTIVATION, _LEFT_OUT, zero,
       "relu relu_ threshold_backward sigmoid sigmoid_ sigmoid_backward tanh tanh_backward gelu "
       "gelu_backward silu silu_ silu_backward hardtanh hardtanh_ hardtanh_backward leaky_relu "
       "leaky_relu_ leaky_relu_backward clamp clamp_ clamp_min clamp_min_ hardswish hardswish_ "
       "hardswish_backward hardsigmoid hardsigmoid_backward elu elu_backward")
_table(MOVEMENT, _ZERO_MOVE, zero,
       "view _unsafe_view reshape _reshape_alias expand expand_as unsqueeze unsqueeze_ squeeze "
       "squeeze_ permute transpose transpose_ t clone contiguous slice slice_backward select "
       "select_backward index_select index_select_backward cat stack split split_with_sizes "
       "unbind narrow flatten unflatten im2col col2im copy_ _to_copy to detach alias "
       "as_strided as_strided_ roll constant_pad_nd pad reflection_pad2d replication_pad2d "
       "gather scatter scatter_ scatter_add scatter_add_ index index_put index_put_ _index_put_impl_ "
       "index_add repeat pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle lift_fresh "
       "new_zeros new_ones new_full new_empty new_empty_strided zeros zeros_like ones ones_like "
       "full full_like empty empty_like empty_strided fill_ zero_ arange scalar_tensor "
       "_local_scalar_dense unfold unfold_backward diagonal movedim _unsafe_split "
       "upsample_nearest2d upsample_nearest2d_backward native_dropout native_dropout_backward "
       "randn randn_like rand rand_like normal_ uniform_ bernoulli_ masked_scatter")
_table(MASKING, _ZERO_MASK, zero,
       "masked_fill masked_fill_ where lt le gt ge eq ne logical_not logical_and logical_or "
       "argmax argmin max min amax amin topk sort any all isnan isinf one_hot aminmax "
       "bitwise_not bitwise_and bitwise_or bitwise_xor logical_xor")
