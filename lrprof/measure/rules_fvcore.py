"""The `fvcore` convention: fvcore's default handles (fvcore.nn.flop_count's
_DEFAULT_SUPPORTED_OPS), restated as pure per-op rules at torch's dispatcher.

fvcore traces the model with torch.jit and counts a handful of high-level aten ops; its
"flop" is one multiply-accumulate. At the dispatcher those ops arrive as their parts, so
each handle is attached to the op it becomes:

| fvcore handle | dispatcher op | count |
|---|---|---|
| _convolution | convolution | the product's MACs (as lrprof) |
| addmm, mm, matmul, linear, einsum, bmm | addmm, mm, bmm | the product's MACs |
| batch_norm | native_batch_norm... | N x (2 affine / 1) in eval, N x (5 / 4) in training |
| group_norm, layer_norm, instance_norm | native_group_norm, native_layer_norm, native_batch_norm |
  N x (5 affine / 4) |
| upsample_nearest2d, upsample_bilinear2d | same | output elements x 1, x 4 |
| adaptive_avg_pool2d | _adaptive_avg_pool2d, or mean over (-2, -1) keeping dims (its 1x1 form) |
  input elements |
| grid_sampler | grid_sampler_2d/3d | output elements x 4 (fvcore assumes bilinear) |

Everything else counts 0, as fvcore ignores or skips it (elementwise ops, softmax,
baddbmm, fused attention). Known differences from fvcore's own run: fvcore's matmul handle
counts prod(a.shape) x b.shape[-1], which under-counts a matmul whose *second* operand
carries the batch (the dispatcher sees the real bmm); an einsum with three or more operands
is counted along torch's contraction path, not numpy's optimal one; an outer-product einsum
runs as a multiply (0 here, fvcore counts half its elements). fvcore counts no backward
pass; with --backward this table counts the gradient products (convolution_backward, mm,
bmm) by the same handles, norms and pooling 0.
"""

from __future__ import annotations

from typing import Any

from lrprof.measure.rulebase import (
    CONVOLUTION,
    MATRIX,
    NORMALISATION,
    POOLING,
    RESAMPLING,
    Rule,
    addmm,
    bmm,
    convolution,
    convolution_backward,
    first_tensor,
    mm,
    numel,
    plain_convolution,
)


def vector_product(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0])


def _norm(affine: bool, training: bool) -> int:
    """fvcore: batch norm in eval is a scale (and a shift with affine); a normalisation
    that computes statistics costs 4 per element, 5 with affine."""
    if training:
        return 5 if affine else 4
    return 2 if affine else 1


def native_batch_norm(args: tuple, kwargs: dict, out: Any) -> int:
    # (input, weight, bias, running_mean, running_var, training, momentum, eps)
    return numel(args[0]) * _norm(args[1] is not None, bool(args[5]))


def batch_norm_legit(args: tuple, kwargs: dict, out: Any) -> int:
    # with stats: (input, weight, bias, running_mean, running_var, training, ...);
    # no_stats: (input, weight, bias, training, momentum, eps)
    training = args[5] if len(args) == 8 else args[3]
    return numel(args[0]) * _norm(args[1] is not None, bool(training))


def batch_norm_eval(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0]) * _norm(args[1] is not None, False)


def batch_norm_training(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0]) * _norm(args[1] is not None, True)


def batch_norm_no_update(args: tuple, kwargs: dict, out: Any) -> int:
    # (input, weight, bias, running_mean, running_var, momentum, eps): batch statistics
    # when there are no running ones
    return numel(args[0]) * _norm(args[1] is not None, args[3] is None)


def group_norm(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0]) * (5 if args[1] is not None else 4)


def layer_norm(args: tuple, kwargs: dict, out: Any) -> int:
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    return numel(args[0]) * (5 if weight is not None else 4)


def output_elements(factor: int):
    def fn(args: tuple, kwargs: dict, out: Any) -> int:
        return factor * numel(first_tensor(out))
    return fn


def input_elements(args: tuple, kwargs: dict, out: Any) -> int:
    return numel(args[0])


def adaptive_mean(args: tuple, kwargs: dict, out: Any) -> int:
    """adaptive_avg_pool2d to 1x1 reaches the dispatcher as mean over the last two dims,
    keeping them: fvcore counts that as the pool (input elements); any other mean, 0."""
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is not None and keepdim and x.dim() >= 3:
        wanted = {x.dim() - 2, x.dim() - 1}
        if {d % x.dim() for d in dims} == wanted:
            return numel(x)
    return 0


_PRODUCT = "fvcore: the product's MACs"
_NORM = "fvcore: N x 5 (affine) or 4 per element; batch norm in eval N x 2 or 1"

FVCORE: dict[str, Rule] = {
    "aten::convolution": Rule(CONVOLUTION, convolution, _PRODUCT + " (its _convolution handle)"),
    "aten::_convolution": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::convolution_overrideable": Rule(CONVOLUTION, convolution, _PRODUCT),
    "aten::_slow_conv2d_forward": Rule(CONVOLUTION, plain_convolution, _PRODUCT),
    "aten::cudnn_convolution": Rule(CONVOLUTION, plain_convolution, _PRODUCT),
    "aten::mkldnn_convolution": Rule(CONVOLUTION, plain_convolution, _PRODUCT),
    "aten::convolution_backward": Rule(
        CONVOLUTION, convolution_backward, "fvcore has no backward: its conv handle per gradient"),
    "aten::mm": Rule(MATRIX, mm, _PRODUCT + " (mm, matmul, linear, einsum handles)"),
    "aten::addmm": Rule(MATRIX, addmm, _PRODUCT + " (addmm, linear handles; the bias is not counted)"),
    "aten::bmm": Rule(MATRIX, bmm, _PRODUCT + " (bmm, matmul, einsum handles)"),
    "aten::dot": Rule(MATRIX, vector_product, _PRODUCT + " (matmul handle)"),
    "aten::mv": Rule(MATRIX, vector_product, _PRODUCT + " (matmul handle)"),
    "aten::native_batch_norm": Rule(NORMALISATION, native_batch_norm, _NORM),
    "aten::_native_batch_norm_legit": Rule(NORMALISATION, batch_norm_legit, _NORM),
    "aten::_native_batch_norm_legit_functional": Rule(NORMALISATION, native_batch_norm, _NORM),
    "aten::_native_batch_norm_legit_no_training": Rule(NORMALISATION, batch_norm_eval, _NORM),
    "aten::_batch_norm_with_update": Rule(NORMALISATION, batch_norm_training, _NORM),
    "aten::_batch_norm_no_update": Rule(NORMALISATION, batch_norm_no_update, _NORM),
    "aten::cudnn_batch_norm": Rule(NORMALISATION, native_batch_norm, _NORM),
    "aten::native_group_norm": Rule(NORMALISATION, group_norm, _NORM),
    "aten::native_layer_norm": Rule(NORMALISATION, layer_norm, _NORM),
    "aten::upsample_nearest2d": Rule(RESAMPLING, output_elements(1), "fvcore: 1 per output element"),
    "aten::upsample_bilinear2d": Rule(RESAMPLING, output_elements(4), "fvcore: 4 per output element"),
    "aten::grid_sampler_2d": Rule(RESAMPLING, output_elements(4), "fvcore: 4 per output element "
                                  "(it assumes bilinear)"),
    "aten::grid_sampler_3d": Rule(RESAMPLING, output_elements(4), "fvcore: 4 per output element "
                                  "(it assumes bilinear)"),
    "aten::_adaptive_avg_pool2d": Rule(POOLING, input_elements, "fvcore: 1 per input element"),
    "aten::mean": Rule(POOLING, adaptive_mean, "fvcore: 1 per input element when it is "
                       "adaptive_avg_pool2d's 1x1 form (mean over the last two dims, kept), else 0"),
}
NOT_COUNTED = "fvcore: no handle (ignored or skipped): 0"
