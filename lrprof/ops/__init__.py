"""Operator registry: each operator lives in one module and registers an `OpDef` here.

An operator module provides the nn.Module, its validation, its exact cost model and the
published complexity model. Adding an operator means adding a module and importing it
at the bottom of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lrprof.errors import SpecError
from lrprof.ops.cost import CostModel, Term
from lrprof.record import register_config_columns
from lrprof.registry import Registry
from lrprof.spec import LayerSpec

__all__ = ["CostModel", "OpDef", "Term", "get_op", "list_ops", "register_op"]


@dataclass(frozen=True)
class OpDef:
    name: str
    summary: str
    impls: tuple[str, ...]
    validate: Callable[[LayerSpec], None]
    build: Callable[[LayerSpec], nn.Module]
    cost: Callable[[LayerSpec], CostModel]
    option_names: tuple[str, ...] = ()

    def make_input(self, spec: LayerSpec, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (spec.batch, spec.channels, spec.height, spec.width)
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        return x.to(device=spec.device, dtype=spec.torch_dtype)


_OPS: Registry[OpDef] = Registry("op", "operator")


def register_op(op: OpDef) -> OpDef:
    register_config_columns(*op.option_names)
    return _OPS.register(op)


def get_op(name: str) -> OpDef:
    return _OPS.get(name)


def list_ops() -> list[OpDef]:
    return _OPS.all()


def validate_spec(spec: LayerSpec) -> OpDef:
    """Common checks, then the operator's own; returns the operator."""
    op = get_op(spec.op)
    spec.validate_common()
    if spec.impl not in op.impls:
        raise SpecError("impl", f"one of {', '.join(op.impls)} for op {op.name}", spec.impl)
    op.validate(spec)
    return op


from lrprof.ops import local_relation  # noqa: E402,F401  (registers "lr")
