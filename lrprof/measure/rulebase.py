"""What every rule table shares: the `Work` one call costs, the `Rule` that computes it, the
op families reports group by, and the shape arithmetic of the ops several conventions count
(convolutions, matrix products, attention). Pure functions of shapes: they run on real,
meta and fake tensors alike."""

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
RESAMPLING = "resampling (interpolation, grid sampling)"
ACTIVATION = "activation"
MOVEMENT = "data movement"
MASKING = "masking and comparison"
CUSTOM = "custom op"


def numel(value: Any) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 0


def first_tensor(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return value


def per_output_element(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(first_tensor(out))


def zero(args: tuple, kwargs: dict, out: Any) -> int:
    return 0


def conv_macs(out_shape: Iterable[int], in_shape: Iterable[int], weight_shape: Iterable[int],
              transposed: bool) -> int:
    """Products of a convolution: each output element (each input element when transposed)
    meets (channels per group) x (kernel window) weights."""
    w = list(weight_shape)
    window = math.prod(w[2:])
    if transposed:  # weight (Cin, Cout/groups, k...): every input element meets Cout/g windows
        return math.prod(in_shape) * w[1] * window
    return math.prod(out_shape) * w[1] * window


def conv_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(input, weight, transposed) of aten::convolution and its relatives."""
    transposed = args[6] if len(args) > 6 else kwargs.get("transposed", False)
    return args[0], args[1], bool(transposed)


def mm_macs(a: Any, b: Any) -> int:
    return a.shape[0] * a.shape[1] * b.shape[1]


def bmm_macs(a: Any, b: Any) -> int:
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def attention_shapes(q: Any, k: Any, v: Any, heads_first: bool = True) -> tuple[int, int, int, int, int]:
    """(batch x query heads, L, S, E, Ev) of q (B, H, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev);
    `heads_first=False` for the (B, L, H, E) layout of _flash/_efficient_attention_*. Grouped
    key/value heads are broadcast to the query's."""
    qs, ks, vs = list(q.shape), list(k.shape), list(v.shape)
    if not heads_first:
        qs[-3], qs[-2] = qs[-2], qs[-3]
        ks[-3], ks[-2] = ks[-2], ks[-3]
        vs[-3], vs[-2] = vs[-2], vs[-3]
    batch = math.prod(qs[:-2])
    return batch, qs[-2], ks[-2], qs[-1], vs[-1]


def attention_work(q: Any, k: Any, v: Any, products: int, value_products: int, exps: int,
                   heads_first: bool = True) -> Work:
    """QK^T costs L*S*E per batch-head and the weighted sum of values L*S*Ev."""
    batch, length, keys, width, value_width = attention_shapes(q, k, v, heads_first)
    qk = batch * length * keys * width
    av = batch * length * keys * value_width
    return Work(macs=products * qk + value_products * av, exps=exps * batch * length * keys)


# the matrix products' price, the same in every convention
def mm(args: tuple, kwargs: dict, out: Any) -> int:
    return mm_macs(args[0], args[1])


def addmm(args: tuple, kwargs: dict, out: Any) -> int:
    return mm_macs(args[1], args[2])


def bmm(args: tuple, kwargs: dict, out: Any) -> int:
    return bmm_macs(args[0], args[1])


def baddbmm(args: tuple, kwargs: dict, out: Any) -> int:
    return bmm_macs(args[1], args[2])


# the convolutions' price, the same in every convention (FlopCounterMode's backward apart)
def convolution(args: tuple, kwargs: dict, out: Any) -> int:
    x, weight, transposed = conv_args(args, kwargs)
    return conv_macs(out.shape, x.shape, weight.shape, transposed)


def plain_convolution(args: tuple, kwargs: dict, out: Any) -> int:
    """The backend convolutions (_slow_conv2d_forward, cudnn/mkldnn_convolution): never
    transposed, weight second."""
    return conv_macs(first_tensor(out).shape, args[0].shape, args[1].shape, False)


def convolution_backward(args: tuple, kwargs: dict, out: Any) -> int:
    """grad_input is a transposed convolution and grad_weight a convolution, each with the
    forward's multiply-accumulates; grad_bias is a sum (0)."""
    grad_out, x, weight = args[0], args[1], args[2]
    transposed = bool(args[7])
    mask = args[10]
    forward = conv_macs(grad_out.shape, x.shape, weight.shape, transposed)
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))
