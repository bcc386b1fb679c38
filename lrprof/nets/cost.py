"""The exact count of a network, layer by layer, from formulas rather than from tracing.

A forward pass on the meta device (no data, no compute) gives each layer's input and
output shapes; each layer type has one formula. The counted MACs (fvcore trace) of a
network must equal this sum, stage by stage, as for a single layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lrprof.errors import InputError
from lrprof.ops.local_relation import LocalRelation2d, cost_of


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    macs: int
    softmax_exps: int
    params: int


def _prod(shape: torch.Size) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _conv(module: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    kh, kw = module.kernel_size
    return _prod(y.shape) * (module.in_channels // module.groups) * kh * kw, 0


def _linear(module: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    return _prod(y.shape) * module.in_features, 0


def _local_relation(module: LocalRelation2d, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    b, c, h, w = x.shape
    cost = cost_of(c, h, w, module.kernel_size, module.m, module.stride, b,
                   geometry_hidden=module.geometry_hidden)
    return cost.macs, cost.softmax_exps


def _free(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    return 0, 0


# Module type -> (MACs, softmax exps); same conventions as lrprof.measure.counting.
FORMULAS: dict[type, Callable[..., tuple[int, int]]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    LocalRelation2d: _local_relation,
    nn.BatchNorm2d: _free,
    nn.ReLU: _free,
    nn.MaxPool2d: _free,
    nn.AdaptiveAvgPool2d: _free,
    nn.Flatten: _free,
    nn.Identity: _free,
}


def costed_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The modules a formula covers: leaves, and operators costed as a whole (their
    submodules are inside their formula). Raises if a leaf has no formula."""
    found: dict[str, nn.Module] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        if type(module) in FORMULAS:
            found[prefix] = module
            return
        children = list(module.named_children())
        if not children:
            raise InputError(f"no cost formula for layer {prefix or '<root>'} "
                             f"of type {type(module).__name__}")
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", net)
    return found


def exact_costs(net: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-layer exact MACs for one forward pass at `input_shape`, computed on a meta copy
    of the shapes (the net itself is not run)."""
    device, dtype = _device_dtype(net)
    if device.type != "meta":
        raise InputError("exact_costs expects a network built on the meta device")
    layers = costed_layers(net)
    shapes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, module in layers.items():
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            shapes[name] = (args[0], out)
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(torch.empty(input_shape, device="meta", dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    costs = []
    for name, module in layers.items():
        if name not in shapes:
            raise InputError(f"layer {name} did not run in the forward pass")
        x, y = shapes[name]
        macs, exps = FORMULAS[type(module)](module, x, y)
        params = sum(p.numel() for p in module.parameters())
        costs.append(LayerCost(name, type(module).__name__, macs, exps, params))
    return costs


def _device_dtype(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(net.parameters())
    return p.device, p.dtype
