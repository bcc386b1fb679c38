"""Fully connected layer: (B, C) -> (B, C_out). Networks' classifiers are costed with it.

MACs = B * C * C_out (bias adds are the accumulate half, 0).
"""

from __future__ import annotations

import torch
from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Param, Schema

FORMULA = "B * C * C_out"

SCHEMA = Schema((
    Param("out_features", int, None, "output features C_out", minimum=1,
          derive=lambda ctx: ctx["channels"], derived_text="channels", headline=True),
    Param("bias", bool, True, "add a bias per output feature"),
))


def build(spec: LayerSpec) -> nn.Linear:
    p = dict(spec.params)
    return nn.Linear(spec.channels, p["out_features"], bias=p["bias"])


def make_inputs(spec: LayerSpec, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    from lrprof.build.ops.registry import standard_normal

    return (standard_normal(spec, (spec.batch, spec.channels), generator),)


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    out, c, b = p["out_features"], spec.channels, spec.batch
    macs = b * c * out
    e = spec.torch_dtype.itemsize
    return CostModel(
        terms=(Term("matrix product", macs, FORMULA),),
        params=c * out + (out if p["bias"] else 0),
        paper_macs=macs,
        paper_formula=FORMULA + " (standard)",
        activation_bytes={"input": b * c * e, "output": b * out * e},
    )


def from_module(module: nn.Linear, input_shape: tuple[int, ...]) -> LayerSpec:
    b, c = input_shape
    return LayerSpec(op="linear", impl="torch", channels=c, height=1, width=1, batch=b,
                     out_features=module.out_features, bias=module.bias is not None)


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(OpDef(
        name="linear",
        summary="fully connected layer on (B, C): networks' classifiers",
        schema=SCHEMA,
        impls=(Impl("torch", "nn.Linear", build),),
        cost=cost,
        make_inputs=make_inputs,
        modules=(nn.Linear,),
        from_module=from_module,
        spatial=False,
        stride_param=None,
        cost_text=FORMULA,
    ))


_register()
