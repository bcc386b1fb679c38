"""An operator for the sweep tests that fails on purpose, one way per `mode`, so the sweep's
isolation can be tested on the CPU: a kernel error, an out-of-memory error, an error that
leaves a CUDA context broken (its message), a process that dies, a row that hangs, and a
slow row (for killing a sweep mid-way). Imported by the tests and, with `--import
sweep_faulty`, by the sweep's worker processes.

The layer itself is y = x * w with one weight per channel: 1 MAC per output element.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from lrprof.build.ops import CostModel, Impl, OpDef, Param, Schema, Term, list_ops, register_op
from lrprof.spec.layer import LayerSpec

MODES = ("ok", "slow", "raise", "oom", "cuda", "exit", "hang")


class Faulty(nn.Module):
    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "slow":
            time.sleep(0.03)
        elif self.mode == "raise":
            raise RuntimeError("kernel exploded (injected)")
        elif self.mode == "oom":
            raise torch.OutOfMemoryError("out of memory: tried to allocate 1 PiB (injected)")
        elif self.mode == "cuda":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        elif self.mode == "exit":
            os._exit(3)
        elif self.mode == "hang":
            time.sleep(3600)
        return x * self.weight


def build(spec: LayerSpec) -> Faulty:
    return Faulty(spec.channels, spec.param("mode"))


def cost(spec: LayerSpec) -> CostModel:
    macs = spec.batch * spec.channels * spec.height * spec.width
    return CostModel(terms=(Term("scale", macs, "B*C*H*W"),), params=spec.channels, paper_macs=macs,
                     paper_formula="B*C*H*W")


SCHEMA = Schema((Param("mode", str, "ok", "how the row fails", choices=MODES, headline=True),))
OP = OpDef(name="faulty", summary="fails on purpose (tests)", schema=SCHEMA,
           impls=(Impl("torch", "x * w", build),), cost=cost, stride_param=None)


def register() -> None:
    """Register the operator unless it is (tests unregister it when they are done)."""
    if not any(op.name == OP.name for op in list_ops()):
        register_op(OP)


register()
