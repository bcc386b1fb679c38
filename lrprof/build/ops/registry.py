"""The operator registry (timm's pattern: operators import it, never the reverse): `OpDef`,
`Impl`, `register_op`, look-ups, spec resolution and the row label."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrprof.build.ops.cost import CostModel
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import LayerSpec, default_device
from lrprof.spec.params import Schema
from lrprof.spec.registry import Registry

Availability = Callable[[torch.device, str], "str | None"]


def always(device: torch.device, dtype: str) -> str | None:
    return None


@dataclass(frozen=True)
class Impl:
    """One way to compute an operator. `build(spec)` returns an nn.Module whose parameters
    have the same names and shapes as every other implementation's (so the float64
    reference can load its weights). `available(device, dtype)` gives the reason it cannot
    run there, or None. `backward` says how gradients are computed."""

    name: str
    summary: str
    build: Callable[[LayerSpec], nn.Module]
    devices: tuple[str, ...] = ("cpu", "cuda")
    available: Availability = always
    backward: str = "autograd through the forward's ops"
    # why a command would first spend a long one-time step on it (see `--impl auto`), or None
    not_ready: Availability = always
    # the one-time step done ahead by `lrprof build`: returns {"setup_s", "setup"}
    build_ahead: Callable[[], dict[str, Any]] | None = None
    # why it cannot run under valgrind (`--instructions`) here, or None
    valgrind_problem: Callable[[], str | None] = lambda: None

    def unavailable_reason(self, device: torch.device, dtype: str) -> str | None:
        """Why it cannot run on this device and dtype, or None."""
        if device.type not in self.devices:
            return f"runs on {', '.join(self.devices)} only"
        return self.available(device, dtype)


def standard_normal(spec: LayerSpec, shape: tuple[int, ...],
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Drawn in float32 (float64 for a float64 spec) on the CPU, then cast and moved, so
    every dtype and device sees the same values."""
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    x = torch.randn(shape, generator=generator, dtype=dtype)
    device = default_device() if spec.device == "auto" else spec.device
    return x.to(device=device, dtype=spec.torch_dtype)


def batch_channels_input(spec: LayerSpec,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """(B, C, H, W) standard normal."""
    return (standard_normal(spec, (spec.batch, spec.channels, spec.height, spec.width), generator),)


@dataclass(frozen=True)
class OpDef:
    """An operator. `impls[0]` is the default implementation and `reference` the one whose
    float64 output every implementation is checked against. `modules` are the nn.Module
    classes this operator costs inside networks, and `from_module` the spec of one such
    module at a given input shape. `spatial` operators take (B, C, H, W) and get the 3x3
    convolution baseline."""

    name: str
    summary: str
    schema: Schema
    impls: tuple[Impl, ...]
    cost: Callable[[LayerSpec], CostModel]
    reference: str = ""
    make_inputs: Callable[..., tuple[torch.Tensor, ...]] = batch_channels_input
    validate: Callable[[LayerSpec], None] | None = None
    modules: tuple[type, ...] = ()
    from_module: Callable[[nn.Module, tuple[int, ...]], LayerSpec] | None = None
    spatial: bool = True
    cost_text: str = ""  # the exact model in words, for `lrprof ops` and the README
    stride_param: str | None = "stride"  # the parameter the baseline conv copies, if any
    notes: tuple[str, ...] = field(default_factory=tuple)
    # replaces measure.accuracy.compare_with_reference for operators whose output is not a
    # continuous function of the input (DRConv's argmax), same signature
    check_output: Callable[..., Any] | None = None
    # `--impl auto`: implementations fastest first, per device type, as measured (operators
    # without an order for a device get their default)
    speed_order: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def default_impl(self) -> str:
        return self.impls[0].name

    @property
    def reference_impl(self) -> str:
        return self.reference or self.default_impl

    def impl(self, name: str) -> Impl:
        for impl in self.impls:
            if impl.name == name:
                return impl
        raise SpecError("impl", f"one of {', '.join(i.name for i in self.impls)} for op {self.name}", name)


_OPS: Registry[OpDef] = Registry("op", "operator")
_MODULE_OPS: dict[type, OpDef] = {}


def register_op(op: OpDef, replace: bool = False) -> OpDef:
    if replace:
        unregister_op(op.name)
    for cls in op.modules:
        _MODULE_OPS[cls] = op
    return _OPS.register(op)


def unregister_op(name: str) -> None:
    """Remove an operator (tests that register one of their own clean up with this)."""
    op = _OPS.remove(name)
    if op is not None:
        for cls in op.modules:
            _MODULE_OPS.pop(cls, None)


def get_op(name: str) -> OpDef:
    _load_builtin()
    return _OPS.get(name)


def list_ops() -> list[OpDef]:
    _load_builtin()
    return _OPS.all()


def op_for_module(module: nn.Module) -> OpDef | None:
    _load_builtin()
    return _MODULE_OPS.get(type(module))


def spec_for_module(module: nn.Module, input_shape: tuple[int, ...]) -> LayerSpec:
    """The resolved spec of a module an operator provides (for costing networks)."""
    op = op_for_module(module)
    if op is None or op.from_module is None:
        raise SpecError("module", "a module type an operator provides", type(module).__name__)
    return resolve_spec(op.from_module(module, input_shape), validate=False)


def resolve_spec(spec: LayerSpec, validate: bool = True) -> LayerSpec:
    """The spec with its implementation and every operator parameter resolved (given,
    default or derived), validated. Invalid values raise SpecError. `validate=False`
    describes an existing module (a 7x7 layer on a 2x2 map in a network is what it is)."""
    op = get_op(spec.op)
    spec.validate_common()
    impl = op.impl(spec.impl or op.default_impl).name
    params = op.schema.resolve(op.name, dict(spec.params), spec.shape(), validate=validate)
    resolved = spec.replace(impl=impl, params=tuple(params.items()))
    if validate and op.validate is not None:
        op.validate(resolved)
    return resolved


_BUILTIN_LOADED = [False]
_NOT_OPERATORS = ("cost", "registry")


def _load_builtin() -> None:
    """Import every operator module of this package once (each registers its OpDef), on the
    first look-up rather than at import: `lrprof --help` need not build every operator."""
    if _BUILTIN_LOADED[0]:
        return
    _BUILTIN_LOADED[0] = True
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _NOT_OPERATORS and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def spec_label(spec: LayerSpec) -> str:
    """'lr[unfold] k=7 m=8 s=1 C=64 56x56 B=1': the headline parameters, and any other
    that differs from its default (the operator's schema says which)."""
    values = get_op(spec.op).schema.label(dict(spec.params))
    dtype = "" if spec.dtype == "float32" else f" {spec.dtype}"
    return (f"{spec.op}[{spec.impl}] {values} C={spec.channels} {spec.height}x{spec.width} "
            f"B={spec.batch}{dtype}").replace("  ", " ")
