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
- interpolation and grid sampling: one MAC per tap per output element (bilinear 4,
  bicubic 16, trilinear 8, nearest 0), and as many per gradient in backward;
- data movement, allocation, masking and comparisons count 0, and so do the layers the
  papers leave out of their tables (normalisation, activations, pooling): each by a rule
  that says why, so they are listed rather than dropped. Pooling and normalisation count 0
  forward *and* backward: the ops their autograd nodes run in backward (the division that
  spreads a mean's gradient) count under the same rule, not as elementwise work.

This is the `lrprof` convention; `lrprof.measure.conventions` holds the tables that
reproduce fvcore's and torch's FlopCounterMode's counts op for op.

An op with no rule is *uncounted*: the counter lists it and the profile fails. Register a
rule for your own `torch.library` op with `register_rule`.
"""

from __future__ import annotations

from typing import Any

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
    RuleFn,
    Work,
    addmm,
    attention_work,
    baddbmm,
    bmm,
    convolution,
    convolution_backward,
    first_tensor,
    mm,
    numel,
    per_output_element,
    plain_convolution,
    zero,
)

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


def dot(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0])


def addmv(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[1])


def linear(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0]) * args[1].shape[0]


def matmul(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(out) * args[0].shape[-1]


def attention_forward(args: tuple, kwargs: dict, out: Any) -> Work:
    return attention_work(args[0], args[1], args[2], 1, 1, 1)


def attention_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    """Recomputes QK^T and the softmax, then dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q."""
    return attention_work(args[1], args[2], args[3], 3, 2, 1)


def varlen_attention_forward(args: tuple, kwargs: dict, out: Any) -> Work:
    return attention_work(args[0], args[1], args[2], 1, 1, 1, heads_first=False)


def varlen_attention_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    return attention_work(args[1], args[2], args[3], 3, 2, 1, heads_first=False)


def multi_head_attention(args: tuple, kwargs: dict, out: Any) -> Work:
    """_native_multi_head_attention (nn.MultiheadAttention's fast path): q, k, v
    projections, QK^T and AV over every head, the output projection."""
    q, k = args[0], args[1]
    embed, heads = int(args[3]), int(args[4])
    batch, length, keys = q.shape[0], q.shape[-2], k.shape[-2]
    macs = batch * (length + 2 * keys) * embed * embed + 2 * batch * length * keys * embed
    macs += batch * length * embed * embed
    return Work(macs=macs, exps=batch * heads * length * keys)


def encoder_layer(args: tuple, kwargs: dict, out: Any) -> Work:
    """_transformer_encoder_layer_fwd (nn.TransformerEncoderLayer's fast path): self-attention
    as above, then the two feed-forward products; norms and activation 0."""
    x, embed, heads, ffn = args[0], int(args[1]), int(args[2]), args[14]
    batch, length = x.shape[0], x.shape[-2]
    macs = 4 * batch * length * embed * embed + 2 * batch * length * length * embed
    macs += 2 * batch * length * embed * ffn.shape[0]
    return Work(macs=macs, exps=batch * heads * length * length)


def softmax(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(exps=numel(out))


def softmax_backward(args: tuple, kwargs: dict, out: Any) -> int:
    return 2 * numel(out)  # y * g, then y * (g - sum(y * g))


def log_softmax_backward(args: tuple, kwargs: dict, out: Any) -> Work:
    return Work(macs=numel(out), exps=numel(out))  # g - exp(y) * sum(g)


def taps(per_element: int) -> RuleFn:
    """Interpolation: each output element is a weighted sum of `per_element` input taps
    (bilinear 4, bicubic 16, linear 2, trilinear 8); its backward scatters as many."""
    def fn(args: tuple, kwargs: dict, out: Any) -> int:
        return per_element * numel(first_tensor(out))
    return fn


def grad_out_taps(per_element: int) -> RuleFn:
    def fn(args: tuple, kwargs: dict, out: Any) -> int:
        return per_element * numel(args[0])
    return fn


def antialiased(per_axis: int) -> RuleFn:
    """_upsample_*_aa: a separable filter whose support grows with the downscale factor:
    per_axis taps when enlarging, per_axis x in/out when shrinking, per spatial axis."""
    def fn(args: tuple, kwargs: dict, out: Any) -> int:
        x, y = args[0], first_tensor(out)
        count = 1
        for size_in, size_out in zip(x.shape[-2:], y.shape[-2:], strict=True):
            count *= per_axis * max(1, -(-size_in // size_out))
        return numel(y) * count
    return fn


_GRID_TAPS = {2: {0: 4, 1: 0, 2: 16}, 3: {0: 8, 1: 0, 2: 64}}  # mode: bilinear, nearest, bicubic


def grid_sampler(args: tuple, kwargs: dict, out: Any) -> int:
    x, mode = args[0], int(args[2])
    return _GRID_TAPS[x.dim() - 2].get(mode, 4) * numel(out)


def grid_sampler_backward(args: tuple, kwargs: dict, out: Any) -> int:
    """Per grad-output element: the taps scattered into grad_input, and as many products
    for grad_grid (the weights' derivatives), each when asked for."""
    grad_out, x, mode = args[0], args[1], int(args[3])
    mask = args[6] if len(args) > 6 else (True, True)
    per = _GRID_TAPS[x.dim() - 2].get(mode, 4) * numel(grad_out)
    return per * (int(bool(mask[0])) + int(bool(mask[1])))


def affine_grid(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(out) * (args[0].shape[-1])  # each coordinate: a row of theta times (x, y, 1)


def _table(family: str, why: str, fn: RuleFn, names: str) -> None:
    for name in names.split():
        RULES[f"aten::{name}"] = Rule(family, fn, why)


_PRODUCT = "multiply-accumulates of the product"
_ZERO_ACCUMULATE = "0: the accumulate half of a MAC, or a sign"
_ZERO_MOVE = "0: data movement or allocation"
_ZERO_MASK = "0: masking, comparison or selection"
_LEFT_OUT = "0: left out of the papers' tables"
_LEFT_OUT_BOTH = "0 forward and backward: left out of the papers' tables"
_COMPOSITE = "composite: never reaches the dispatcher whole, its parts are counted by their rules"
_EXP = "1 exponential per element"

RULES.update({
    "aten::convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::_convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::convolution_overrideable": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::convolution_backward": Rule(
        CONVOLUTION, convolution_backward, "one forward's MACs per gradient (input, weight)"),
    "aten::_scaled_mm": Rule(MATRIX, mm, _PRODUCT),
    "aten::addbmm": Rule(MATRIX, baddbmm, _PRODUCT),
    "aten::linear": Rule(MATRIX, linear, _PRODUCT + " (composite: reaches the dispatcher as mm/addmm)"),
    "aten::matmul": Rule(MATRIX, matmul, _PRODUCT + " (composite: reaches the dispatcher as mm/bmm)"),
    "aten::einsum": Rule(MATRIX, zero, _COMPOSITE + " (bmm, mul, sum)"),
    "aten::bilinear": Rule(MATRIX, zero, _COMPOSITE + " (_trilinear: mul and sum)"),
    "aten::_softmax": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::_safe_softmax": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::_log_softmax": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::exp": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::exp_": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::exp2": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::expm1": Rule(EXPONENTIAL, softmax, _EXP),
    "aten::_softmax_backward_data": Rule(EXPONENTIAL, softmax_backward, "2 multiplies per element"),
    "aten::_log_softmax_backward_data": Rule(
        EXPONENTIAL, log_softmax_backward, "1 exponential and 1 multiply per element"),
    "aten::upsample_bilinear2d": Rule(RESAMPLING, taps(4), "4 taps per output element"),
    "aten::upsample_bilinear2d_backward": Rule(RESAMPLING, grad_out_taps(4), "4 taps per grad element"),
    "aten::upsample_bicubic2d": Rule(RESAMPLING, taps(16), "16 taps per output element"),
    "aten::upsample_bicubic2d_backward": Rule(RESAMPLING, grad_out_taps(16), "16 taps per grad element"),
    "aten::upsample_linear1d": Rule(RESAMPLING, taps(2), "2 taps per output element"),
    "aten::upsample_linear1d_backward": Rule(RESAMPLING, grad_out_taps(2), "2 taps per grad element"),
    "aten::upsample_trilinear3d": Rule(RESAMPLING, taps(8), "8 taps per output element"),
    "aten::upsample_trilinear3d_backward": Rule(RESAMPLING, grad_out_taps(8), "8 taps per grad element"),
    "aten::_upsample_bilinear2d_aa": Rule(
        RESAMPLING, antialiased(2), "antialiased: 2 taps per axis, times the downscale factor"),
    "aten::_upsample_bicubic2d_aa": Rule(
        RESAMPLING, antialiased(4), "antialiased: 4 taps per axis, times the downscale factor"),
    "aten::grid_sampler_2d": Rule(RESAMPLING, grid_sampler, "taps per output element: bilinear 4, "
                                  "nearest 0, bicubic 16"),
    "aten::grid_sampler_3d": Rule(RESAMPLING, grid_sampler, "taps per output element: trilinear 8, "
                                  "nearest 0"),
    "aten::grid_sampler_2d_backward": Rule(RESAMPLING, grid_sampler_backward,
                                           "the forward's taps per gradient (input, grid)"),
    "aten::grid_sampler_3d_backward": Rule(RESAMPLING, grid_sampler_backward,
                                           "the forward's taps per gradient (input, grid)"),
    "aten::grid_sampler": Rule(RESAMPLING, zero, _COMPOSITE + " (grid_sampler_2d/3d)"),
    "aten::affine_grid_generator": Rule(RESAMPLING, affine_grid, "theta times (x, y, 1) per coordinate"),
})
_table(CONVOLUTION, _PRODUCT, plain_convolution,
       "_slow_conv2d_forward cudnn_convolution mkldnn_convolution thnn_conv2d _nnpack_spatial_convolution")
_table(MATRIX, _PRODUCT, mm, "mm")
_table(MATRIX, _PRODUCT, addmm, "addmm _addmm_activation")
_table(MATRIX, _PRODUCT, bmm, "bmm")
_table(MATRIX, _PRODUCT, baddbmm, "baddbmm")
_table(MATRIX, _PRODUCT, dot, "dot vdot mv")
_table(MATRIX, _PRODUCT, addmv, "addmv")
_ATTENTION = "QK^T and AV products; exps of QK^T"
_ATTENTION_BACK = "recomputed QK^T and the four gradient products"
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
              "_scaled_dot_product_fused_attention_overrideable"):
    RULES[f"aten::{_name}"] = Rule(ATTENTION, attention_forward, _ATTENTION)
    RULES[f"aten::{_name}_backward"] = Rule(ATTENTION, attention_backward, _ATTENTION_BACK)
RULES["aten::_scaled_dot_product_attention_math_for_mps"] = Rule(ATTENTION, attention_forward, _ATTENTION)
for _name in ("_flash_attention", "_efficient_attention"):  # (B, L, H, E) layout
    RULES[f"aten::{_name}_forward"] = Rule(ATTENTION, varlen_attention_forward, _ATTENTION)
    RULES[f"aten::{_name}_backward"] = Rule(ATTENTION, varlen_attention_backward, _ATTENTION_BACK)
RULES["aten::_cudnn_attention_forward"] = Rule(ATTENTION, attention_forward, _ATTENTION)
RULES["aten::_cudnn_attention_backward"] = Rule(ATTENTION, attention_backward, _ATTENTION_BACK)
RULES["aten::_triton_scaled_dot_attention"] = Rule(ATTENTION, attention_forward, _ATTENTION)
RULES["aten::_flash_attention_forward_no_dropout_inplace"] = Rule(ATTENTION, varlen_attention_forward,
                                                                  _ATTENTION)
for _name in ("_native_multi_head_attention", "_triton_multi_head_attention"):
    RULES[f"aten::{_name}"] = Rule(ATTENTION, multi_head_attention,
                                   "q, k, v and output projections, QK^T and AV; exps of QK^T")
RULES["aten::_transformer_encoder_layer_fwd"] = Rule(
    ATTENTION, encoder_layer, "attention's four projections, QK^T and AV, the two feed-forward products")
RULES["aten::_scaled_dot_product_attention_math"] = Rule(
    ATTENTION, zero, _COMPOSITE + " (bmm, softmax and the scaling multiplies)")
RULES["aten::scaled_dot_product_attention"] = Rule(
    ATTENTION, zero, _COMPOSITE + " (a fused kernel, or the math path's bmm and softmax)")

_table(ELEMENTWISE, "1 per output element (the multiply of a MAC)", per_output_element,
       "mul mul_ div div_ pow pow_ abs abs_ sqrt rsqrt reciprocal square addcmul addcmul_ "
       "addcdiv addcdiv_ lerp lerp_ _foreach_mul _trilinear")
_table(ACCUMULATE, _ZERO_ACCUMULATE, zero,
       "add add_ sub sub_ rsub neg neg_ sum cumsum sgn sign")
# Normalisation and pooling: one rule for forward and backward (0). The ops their autograd
# nodes run in backward (MeanBackward's division...) are attributed to them by the counter.
_table(NORMALISATION, _LEFT_OUT_BOTH, zero,
       "native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training "
       "_native_batch_norm_legit_functional native_batch_norm_backward batch_norm_backward "
       "native_layer_norm native_layer_norm_backward native_group_norm native_group_norm_backward "
       "_batch_norm_with_update _batch_norm_no_update _fused_rms_norm _fused_rms_norm_backward "
       "cudnn_batch_norm cudnn_batch_norm_backward miopen_batch_norm miopen_batch_norm_backward "
       "batch_norm group_norm layer_norm instance_norm rms_norm")
_table(POOLING, _LEFT_OUT_BOTH, zero,
       "max_pool2d_with_indices max_pool2d_with_indices_backward avg_pool2d avg_pool2d_backward "
       "_adaptive_avg_pool2d _adaptive_avg_pool2d_backward adaptive_max_pool2d "
       "adaptive_max_pool2d_backward mean max_pool2d max_pool1d max_pool1d_with_indices max_pool3d "
       "max_pool3d_with_indices max_pool3d_with_indices_backward avg_pool3d avg_pool3d_backward "
       "_adaptive_avg_pool3d _adaptive_avg_pool3d_backward adaptive_max_pool3d "
       "adaptive_max_pool3d_backward adaptive_avg_pool2d adaptive_avg_pool1d avg_pool1d "
       "max_pool2d_backward mkldnn_max_pool2d")
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
       "upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_nearest1d_backward "
       "upsample_nearest2d_backward upsample_nearest3d_backward _upsample_nearest_exact1d "
       "_upsample_nearest_exact2d _upsample_nearest_exact3d _upsample_nearest_exact2d_backward "
       "native_dropout native_dropout_backward "
       "randn randn_like rand rand_like normal_ uniform_ bernoulli_ masked_scatter")
_table(MASKING, _ZERO_MASK, zero,
       "masked_fill masked_fill_ where lt le gt ge eq ne logical_not logical_and logical_or "
       "argmax argmin max min amax amin topk sort any all isnan isinf one_hot aminmax "
       "bitwise_not bitwise_and bitwise_or bitwise_xor logical_xor")

# Autograd nodes whose backward ops count under their forward's rule (0), whatever ops the
# node runs: MeanBackward's division, the sums of a decomposed norm's backward.
ZERO_BACKWARD_NODES = (
    "MeanBackward", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool", "MaxPool",
    "NativeBatchNormBackward", "NativeLayerNormBackward", "NativeGroupNormBackward",
    "BatchNormWithUpdateBackward", "CudnnBatchNormBackward", "FusedRmsNormBackward",
)
