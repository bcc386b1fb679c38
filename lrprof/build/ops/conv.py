"""Convolution: dense, grouped and depthwise, any odd k, 'same' padding. It is the
baseline every local operator is measured against (a dense 3x3 of the same shape), and
the cost model of every convolution inside the networks.

MACs = B * C_out * H'W' * (C / groups) * k^2, the standard count (bias adds are the
accumulate half, 0); the published formula is the same number.
"""

from __future__ import annotations

from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.spec.errors import InputError
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Context, Param, Schema, kernel_param, out_channels_param, stride_param

FORMULA = "B * C_out * H'W' * (C / groups) * k^2"


def output_size(size: int, stride: int) -> int:
    """'same' padding (k // 2, odd k) with stride s gives ceil(size / s)."""
    return (size - 1) // stride + 1


def _divides_channels(value: int, ctx: Context) -> str | None:
    c, out = ctx["channels"], ctx.get("out_channels") or ctx["channels"]
    if c % value or out % value:
        return f"must divide channels ({c}) and out_channels ({out})"
    return None


SCHEMA = Schema((
    kernel_param(),
    stride_param(),
    out_channels_param(),
    Param("groups", int, 1, "groups: 1 dense, channels for depthwise", minimum=1,
          check=_divides_channels, bound_text="dividing channels and out_channels"),
    Param("bias", bool, False, "add a bias per output channel"),
))


def build(spec: LayerSpec) -> nn.Conv2d:
    p = dict(spec.params)
    return nn.Conv2d(spec.channels, p["out_channels"], p["k"], stride=p["stride"],
                     padding=p["k"] // 2, groups=p["groups"], bias=p["bias"])


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    k, s, g, out, c, b = p["k"], p["stride"], p["groups"], p["out_channels"], spec.channels, spec.batch
    out_hw = output_size(spec.height, s) * output_size(spec.width, s)
    macs = b * out * out_hw * (c // g) * k * k
    e = spec.torch_dtype.itemsize
    params = out * (c // g) * k * k + (out if p["bias"] else 0)
    # Each tensor once: what any convolution must move, and what an im2col-free kernel
    # (oneDNN's direct or Winograd path, cuDNN's implicit GEMM) is designed to move.
    once = {"input (read once)": b * c * spec.height * spec.width * e, "weights (read once)": params * e,
            "output (written once)": b * out * out_hw * e}
    return CostModel(
        terms=(Term("convolution", macs, FORMULA),),
        params=params,
        paper_macs=macs,
        paper_formula=FORMULA + " (standard)",
        activation_bytes={"input": b * c * spec.height * spec.width * e, "output": b * out * out_hw * e},
        minimal_bytes=once,
        design_bytes=once,
    )


def from_module(module: nn.Conv2d, input_shape: tuple[int, ...]) -> LayerSpec:
    kh, kw = module.kernel_size
    if (kh != kw or kh % 2 == 0 or module.padding != (kh // 2, kw // 2) or module.dilation != (1, 1)
            or module.stride[0] != module.stride[1] or module.padding_mode != "zeros"):
        raise InputError(f"no exact model for {module}: the conv operator is square, odd k, "
                         "'same' padding k // 2, no dilation")
    b, c, h, w = input_shape
    return LayerSpec(op="conv", impl="torch", channels=c, height=h, width=w, batch=b, k=kh,
                     stride=module.stride[0], out_channels=module.out_channels,
                     groups=module.groups, bias=module.bias is not None)


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(OpDef(
        name="conv",
        summary="convolution k x k: dense, grouped or depthwise (the baseline)",
        schema=SCHEMA,
        impls=(Impl("torch", "nn.Conv2d (cuDNN / oneDNN)", build),),
        cost=cost,
        modules=(nn.Conv2d,),
        from_module=from_module,
        cost_text=FORMULA,
    ))


_register()
