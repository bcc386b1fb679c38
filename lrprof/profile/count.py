"""Count a model's work without timing it: parameters, forward MACs (backward with
`backward`), exponentials, and a tree of its modules with their input and output shapes,
parameters and MACs, under one counting convention (lrprof's, fvcore's or FlopCounterMode's;
the other two figured family by family beside it).

    profile = count(module="layers.py:MyNet", init='{"width": 32}', input="8x3x64x64")
    profile = count(op="lr", op_params={"k": "7", "m": "8"})
    profile = count(net="resnet50", options=MeasureOptions(meta=True))
    profile = count_instance(my_module, (x,))

With `meta`, the model is built and run on the meta device: no weights are allocated and
nothing is computed, so a model far larger than memory is counted; an op that needs real
values (a Python read of a tensor, a data-dependent shape, DRConv's region routing) is
refused by name (`counting.NeedsValues`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from lrprof.build.usermodule import (
    ModuleFailure,
    ModuleSpec,
    build_module,
    check_arguments,
    load_target,
    random_inputs,
    shapes_text,
)
from lrprof.measure import conventions, counting
from lrprof.measure.counting import CountResult, missing_text
from lrprof.measure.device import Environment, collect
from lrprof.profile.checks import settle
from lrprof.record.records import Record
from lrprof.spec.errors import SpecError, describe
from lrprof.spec.layer import resolve_device, resolve_dtype
from lrprof.spec.options import MeasureOptions

WHOLE = "(whole model)"
META = torch.device("meta")


@dataclass
class CountProfile:
    record: Record  # kind "count": the whole model
    parts: list[Record] = field(default_factory=list)  # kind "count-part": its modules
    result: CountResult | None = None
    environment: Environment | None = None

    @property
    def records(self) -> list[Record]:
        return [self.record] + self.parts


def _shape(value: Any) -> str:
    shapes = [t.shape for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes)


@contextlib.contextmanager
def _shapes(model: nn.Module, found: dict[str, tuple[str, str]]) -> Iterator[None]:
    """Each module's input and output shapes at its first call."""
    handles = []
    for name, sub in model.named_modules():
        def hook(mod: nn.Module, args: tuple, output: Any, name: str = name) -> None:
            found.setdefault(name, (_shape(args), _shape(output)))
        handles.append(sub.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _on_meta(inputs: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=META) if isinstance(t, torch.Tensor) else t
                 for t in inputs)


def count_instance(module: nn.Module, inputs: Sequence[Any], options: MeasureOptions | None = None,
                   record: Record | None = None, environment: Environment | None = None) -> CountProfile:
    """Count a module you built on `inputs`. With `options.meta` the module and inputs
    should be on the meta device already (count() builds them there)."""
    options = options or MeasureOptions()
    inputs = tuple(inputs)
    if record is None:
        record = Record(kind="count", name=f"{type(module).__name__} {_shape(inputs)}",
                        config={"target": type(module).__name__, "input": _shape(inputs)})
    record.config.update({"convention": options.convention, "meta": options.meta,
                          "backward": options.backward, "input_grad": options.input_grad})
    params = list(module.parameters())
    record.counted.update({"params": sum(p.numel() for p in params),
                         "trainable_params": sum(p.numel() for p in params if p.requires_grad)})
    profile = CountProfile(record, environment=environment)
    shapes: dict[str, tuple[str, str]] = {}
    try:
        with warnings.catch_warnings(), _shapes(module, shapes):
            warnings.simplefilter("ignore", UserWarning)
            result = counting.count(module, *inputs, per_module=True, convention=options.convention)
            if options.backward:  # apart: ModuleTracker cannot follow autograd.grad
                result = _with_backward(result, counting.count(
                    module, *inputs, backward=True, input_grad=options.input_grad,
                    convention=options.convention))
    except counting.NeedsValues:
        raise
    except Exception as exc:  # the user's forward failing: one line, not a traceback
        raise ModuleFailure(f"counting {record.name} failed: {describe(exc)}") from None
    profile.result = result
    _totals(record, result, options)
    profile.parts = _parts(record, module, result, shapes, options.depth)
    return profile


def _with_backward(forward: CountResult, backward: CountResult) -> CountResult:
    """The forward count (with its modules) and the backward count's backward half."""
    bwd = counting.BWD
    uncounted = {**forward.uncounted,
                 **{k: v for k, v in backward.uncounted.items() if k.endswith("(backward)")}}
    merged = {name: {**forward.conventions[name], bwd: backward.conventions[name][bwd]}
              for name in forward.conventions}
    return dataclasses.replace(
        forward, by_op=forward.by_op + tuple(o for o in backward.by_op if o.phase == bwd),
        uncounted=uncounted, bwd_macs=backward.bwd_macs, bwd_exps=backward.bwd_exps,
        opaque=tuple(dict.fromkeys(forward.opaque + backward.opaque)), conventions=merged,
        missed_by_flopcounter=tuple(sorted(set(forward.missed_by_flopcounter)
                                           | set(backward.missed_by_flopcounter))))


def _totals(record: Record, result: CountResult, options: MeasureOptions) -> None:
    unit = conventions.FLOPS_PER_MAC[options.convention]
    record.counted.update({"fwd_MACs": result.macs, "fwd_exps": result.softmax_exps})
    if options.convention == conventions.FLOPCOUNTER_NAME:
        record.counted["fwd_FLOPs"] = unit * result.macs
    if options.backward:
        record.counted.update({"bwd_MACs": result.bwd_macs, "bwd_exps": result.bwd_exps})
        if options.convention == conventions.FLOPCOUNTER_NAME:
            record.counted["bwd_FLOPs"] = unit * (result.bwd_macs or 0)
    for name in conventions.NAMES:  # every convention's forward total, side by side
        record.derived[f"{name}_fwd_MACs"] = sum(result.conventions[name][counting.FWD].values())
        if options.backward:
            record.derived[f"{name}_bwd_MACs"] = sum(result.conventions[name][counting.BWD].values())
    lrprof_rules = options.convention == conventions.LRPROF
    record.checks.update({"uncounted_ops": missing_text(result),
                          "uncounted": bool(result.uncounted) and lrprof_rules,
                          "opaque": bool(result.opaque)})
    settle(record.checks)
    record.detail.update({
        "ops": [dataclasses.asdict(o) for o in result.by_op], "uncounted": result.uncounted,
        "opaque": list(result.opaque), "module_macs": result.module_macs,
        "conventions": result.conventions, "missed_by_flopcounter": list(result.missed_by_flopcounter),
        "counting_method": counting.METHOD, "unit": conventions.UNITS[options.convention],
    })


def _parts(record: Record, module: nn.Module, result: CountResult, shapes: dict[str, tuple[str, str]],
           depth: int) -> list[Record]:
    total = result.macs
    parts = []
    for name, sub in module.named_modules():
        level = name.count(".") + 1 if name else 0
        if level > depth:
            continue
        macs = result.module_macs.get(name, 0)
        r = Record(kind="count-part", name=f"{record.name}:{name or WHOLE}",
                   config={**record.config, "part": name or WHOLE})
        r.counted.update({"params": sum(p.numel() for p in sub.parameters()), "fwd_MACs": macs})
        shape_in, shape_out = shapes.get(name, ("", ""))
        r.derived.update({"type": type(sub).__name__, "depth": level, "input_shape": shape_in,
                          "output_shape": shape_out, "called": name in shapes,
                          "MACs_share_pct": 100.0 * macs / total if total else None})
        parts.append(r)
    return parts


def _build(meta: bool, build: Any) -> nn.Module:
    if not meta:
        return build()
    with torch.device(META):
        return build().to(META)


def count(module: str | None = None, *, init: str | dict | None = None, input: Any = None,
          op: str | None = None, op_params: dict[str, Any] | None = None, impl: str | None = None,
          channels: str = "64", size: str = "56", batch: str = "1", net: str | None = None,
          device: str = "auto", dtype: str = "float32",
          options: MeasureOptions | None = None) -> CountProfile:
    """Count one target: a user's class (`module`, 'file.py:Class' or 'pkg.mod:Class', with
    `init` and `input`), an lrprof operator (`op` with `op_params`), or a network (`net`,
    input 1x3x224x224 unless `input` says otherwise). Bad input raises SpecError; the user's
    code failing raises ModuleFailure; a --meta count meeting a value-reading op raises
    counting.NeedsValues."""
    options = options or MeasureOptions()
    given = [name for name, value in (("module", module), ("net", net)) if value is not None]
    if op is not None:
        given.append("op")
    if len(given) > 1:
        raise SpecError(given[1], f"one target: --{given[0]} or --{given[1]}, not both", True)
    if net is not None:
        return _count_net(net, input, device, dtype, options)
    if module is not None:
        return _count_module(module, init, input, device, dtype, options)
    return _count_op(op or "lr", op_params or {}, impl, channels, size, batch, device, dtype, options)


def _count_module(target_text: str, init: Any, input: Any, device: str, dtype: str,
                  options: MeasureOptions) -> CountProfile:
    if input is None or input == [] or input == ():
        raise SpecError("input", "with --module, the shape of each input tensor, such as 1x64x56x56", None)
    spec = ModuleSpec.create(target_text, init, input, dtype, device)
    target = load_target(spec.target)
    kwargs = spec.kwargs
    check_arguments(target, kwargs)
    where = resolve_device(spec.device) if not options.meta else META
    model = _build(options.meta, lambda: build_module(target, kwargs, where, spec.torch_dtype, options.seed))
    if options.meta:
        inputs = tuple(torch.empty(s, dtype=spec.torch_dtype, device=META) for s in spec.inputs)
    else:
        inputs = random_inputs(spec.inputs, spec.torch_dtype, where, options.seed)
    config = {k: v for k, v in spec.config().items() if k != "compile"}
    record = Record(kind="count", name=spec.label(), config={"target": spec.target, **config})
    record.detail.update({"source": target.source, "source_sha256": target.sha256,
                          "class": target.attribute, "init": kwargs})
    return count_instance(model, inputs, options, record, _environment(where))


def _count_net(name: str, input: Any, device: str, dtype: str, options: MeasureOptions) -> CountProfile:
    from lrprof.build.nets import create_net, display_name
    from lrprof.build.usermodule import parse_inputs

    shapes = parse_inputs(input) if input else ((1, 3, 224, 224),)
    torch_dtype = resolve_dtype(dtype)
    where = META if options.meta else resolve_device(device)
    torch.manual_seed(options.seed)
    model = _build(options.meta, lambda: create_net(name)).to(device=where, dtype=torch_dtype).eval()
    inputs = tuple(torch.randn(s, dtype=torch_dtype, device=where) for s in shapes)
    label = display_name(name)
    record = Record(kind="count", name=f"{label} {shapes_text(shapes)}",
                    config={"target": f"net:{name}", "input": shapes_text(shapes), "dtype": dtype,
                            "device": where.type})
    return count_instance(model, inputs, options, record, _environment(where))


def _count_op(op: str, op_params: dict[str, Any], impl: str | None, channels: str, size: str, batch: str,
              device: str, dtype: str, options: MeasureOptions) -> CountProfile:
    from lrprof.build.grid import layer_grid
    from lrprof.build.ops.registry import spec_label
    from lrprof.profile.layer import prepare_spec
    from lrprof.profile.replicate import build_row

    where = resolve_device(device)
    grid = layer_grid(op, op_params, impl, channels, size, batch, dtype, str(where))
    if len(grid.specs) != 1:
        raise SpecError("op", f"one configuration to count (these values make {len(grid.specs)}; "
                        "`lrprof layer` or `lrprof sweep` take several)", op)
    spec = prepare_spec(grid.specs[0])
    model, inputs = build_row(spec, options.seed, where)
    prepare = getattr(model, "prepare", None)
    if callable(prepare):  # an implementation's one-time build (a C++ extension)
        prepare(inputs, options.backward)
    if options.meta:
        model, inputs = model.to(META), _on_meta(inputs)
    config = {"target": f"op:{spec.op}", "impl": spec.impl, "input": _shape(inputs), "dtype": spec.dtype,
              "device": "meta" if options.meta else where.type,
              **{k: v for k, v in spec.params}}
    record = Record(kind="count", name=spec_label(spec), config=config)
    return count_instance(model, inputs, options, record, _environment(where))


def _environment(device: torch.device) -> Environment:
    return collect(torch.device("cpu") if device.type == "meta" else device)


__all__ = ["MeasureOptions", "CountProfile", "count", "count_instance"]
