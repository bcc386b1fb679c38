"""The exact count of a network, layer by layer, from its operators' cost models rather
than from tracing.

A forward pass on the meta device (no data, no compute) gives each layer's input shape;
a layer an operator provides (nn.Conv2d, nn.Linear, LocalRelation2d...) is costed by that
operator's model, the same one `lrprof layer` checks. The modules the papers' tables
leave out count 0, each for a stated reason. The counted MACs of a network must equal
this sum, stage by stage, as for a single layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lrprof.build.ops.registry import get_op, op_for_module, spec_for_module
from lrprof.spec.errors import InputError

# Modules outside every operator's model: 0 by the papers' convention, not by omission.
LEFT_OUT: dict[type, str] = {
    nn.BatchNorm2d: "normalisation", nn.ReLU: "activation", nn.MaxPool2d: "pooling",
    nn.AvgPool2d: "pooling", nn.AdaptiveAvgPool2d: "pooling", nn.Flatten: "data movement",
    nn.Identity: "data movement", nn.Dropout: "data movement", nn.Sigmoid: "activation",
    nn.ChannelShuffle: "data movement",
}


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    macs: int
    softmax_exps: int
    params: int
    op: str = ""  # the operator whose model costed it ("" for a left-out module)


def costed_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The modules a cost covers: operators' modules (costed whole, their submodules
    inside the model) and left-out leaves. Raises if a leaf has neither."""
    found: dict[str, nn.Module] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        if op_for_module(module) is not None or type(module) in LEFT_OUT:
            found[prefix] = module
            return
        children = list(module.named_children())
        if not children:
            raise InputError(f"no cost model for layer {prefix or '<root>'} "
                             f"of type {type(module).__name__}")
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", net)
    return found


def layer_cost(name: str, module: nn.Module, input_shapes: list[tuple[int, ...]]) -> LayerCost:
    """A layer's cost over every call it got in one forward pass (once, in these nets)."""
    params = sum(p.numel() for p in module.parameters())
    if op_for_module(module) is None:
        return LayerCost(name, type(module).__name__, 0, 0, params)
    macs = exps = 0
    op = ""
    for shape in input_shapes:
        spec = spec_for_module(module, shape)
        model = get_op(spec.op).cost(spec)
        macs, exps, op = macs + model.macs, exps + model.softmax_exps, spec.op
    return LayerCost(name, type(module).__name__, macs, exps, params, op)


def exact_costs(net: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-layer exact MACs for one forward pass at `input_shape`, from a pass over a meta
    copy of the shapes (the net itself is not run)."""
    p = next(net.parameters())
    if p.device.type != "meta":
        raise InputError("exact_costs expects a network built on the meta device")
    layers = costed_layers(net)
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in layers}
    hooks = []
    for name, module in layers.items():
        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            shapes[name].append(tuple(args[0].shape))
        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            net(torch.empty(input_shape, device="meta", dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    missing = [name for name in layers if not shapes[name]]
    if missing:
        raise InputError(f"layer {missing[0]} did not run in the forward pass")
    return [layer_cost(name, module, shapes[name]) for name, module in layers.items()]


def exact_by_layer(name: str, overrides: dict | None, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Per-layer exact costs of a registered network, built on the meta device (no weights,
    no compute)."""
    from lrprof.build.nets import create_net

    with torch.device("meta"):
        net = create_net(name, **(overrides or {})).eval()
    return exact_costs(net, input_shape)
