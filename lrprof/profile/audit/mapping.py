"""Which constructor argument of a user's class takes which operator parameter.

A reimplementation names the window `k`, `kernel_size` or `window_size`, the input width
`channels`, `in_channels` or `dim`, SASA's heads `heads`, `num_heads` or (in the most used
reimplementation) `groups`. Names are compared without case or underscores (`sub_sample`
takes a parameter `subsample`). Each constructor argument is matched, by name, to an operator
parameter or to a value derived from them (same padding k // 2; output channels equal to
the input's); --init gives or overrides any argument; an argument with a default that
nothing maps keeps the class's default. The report shows every line of this mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lrprof.build.ops.registry import OpDef
from lrprof.build.usermodule import Target, constructor_arguments, signature_text
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import LayerSpec

# operator parameter (or 'channels') -> constructor argument names that mean it
SYNONYMS: dict[str, tuple[str, ...]] = {
    "channels": ("channels", "in_channels", "in_planes", "inplanes", "in_ch", "in_chans", "in_dim",
                 "dim", "num_channels", "n_channels", "input_dim", "planes", "c", "d_model",
                 "embed_dim"),
    "k": ("k", "kernel_size", "kernel", "ksize", "k_size", "window", "window_size",
          "neighborhood_size", "neighbourhood_size", "local_size", "spatial_extent", "extent"),
    "m": ("m", "channels_per_group", "group_channels", "share_planes"),
    "heads": ("heads", "num_heads", "n_heads", "nheads", "n_head", "head"),
    "stride": ("stride", "s"),
    "regions": ("regions", "region_num", "num_regions", "n_regions", "r"),
    "out_channels": ("out_channels", "out_planes", "outplanes", "out_ch", "out_dim", "dim_out",
                     "output_dim"),
}
# names that mean a parameter for one operator only (SASA's popular code calls heads `groups`)
OP_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "sasa": {"heads": ("groups",)},
}
PADDING_NAMES = ("padding", "pad", "padding_size")


@dataclass(frozen=True)
class Mapping:
    """The constructor's keyword arguments, and how each was chosen."""

    kwargs: dict[str, Any]
    rows: list[dict[str, Any]]  # constructor argument, value, from
    unpassed: list[dict[str, Any]] = field(default_factory=list)  # operator parameters no argument takes


def _key(name: str) -> str:
    """Names compared without case or underscores: sub_sample is subsample."""
    return name.lower().replace("_", "")


def _names_for(param: str, op: OpDef) -> tuple[str, ...]:
    return (param,) + SYNONYMS.get(param, ()) + OP_SYNONYMS.get(op.name, {}).get(param, ())


def _derived(argument: str, op: OpDef, spec: LayerSpec, values: dict[str, Any]) -> tuple[Any, str] | None:
    """A value no single parameter gives, derived from them."""
    key = _key(argument)
    if key in map(_key, SYNONYMS["out_channels"]) and "out_channels" not in values:
        return spec.channels, "channels (the operator keeps C channels)"
    if key in map(_key, PADDING_NAMES) and isinstance(values.get("k"), int):
        return values["k"] // 2, "k // 2 (same padding)"
    return None


def map_arguments(target: Target, op: OpDef, spec: LayerSpec, init: dict[str, Any]) -> Mapping:
    """The keyword arguments that build `target` as `op` at `spec` (resolved), with --init
    applied last. Bad --init, or a required argument nothing gives, raises SpecError."""
    named, open_ended = constructor_arguments(target)
    values: dict[str, Any] = {"channels": spec.channels, **dict(spec.params)}
    order = ["channels"] + [p.name for p in op.schema.params]
    lookup: dict[str, str] = {}
    for param in order:
        for name in _names_for(param, op):
            lookup.setdefault(_key(name), param)
    kwargs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    names = {p.name for p in named}
    for unknown in (k for k in init if k not in names):
        if not open_ended:
            raise SpecError("init", f"{unknown} is not an argument of {signature_text(target)}", unknown)
        kwargs[unknown] = init[unknown]
        rows.append({"constructor argument": unknown, "value": init[unknown], "from": "--init"})
    for p in named:
        param = lookup.get(_key(p.name))
        if p.name in init:
            kwargs[p.name] = init[p.name]
            changed = param is not None and values[param] != init[p.name]
            note = f" (instead of {param}={values[param]!r})" if changed else ""
            rows.append({"constructor argument": p.name, "value": init[p.name], "from": f"--init{note}"})
            if param:
                taken.add(param)
            continue
        if param is not None and param not in taken:
            kwargs[p.name] = values[param]
            taken.add(param)
            rows.append({"constructor argument": p.name, "value": values[param],
                         "from": f"operator parameter {param}"})
            continue
        derived = _derived(p.name, op, spec, values)
        if derived is not None:
            kwargs[p.name], how = derived
            rows.append({"constructor argument": p.name, "value": derived[0], "from": f"derived: {how}"})
            continue
        if p.default is p.empty:
            raise SpecError("init", f"{signature_text(target)} needs {p.name}, and no parameter of op "
                            f"{op.name} maps to it: give it in --init", p.name)
        rows.append({"constructor argument": p.name, "value": p.default, "from": "the class's default"})
    unpassed = [{"operator parameter": name, "value": values[name],
                 "note": "no constructor argument takes it: the class's own choice is profiled"}
                for name in order if name not in taken]
    return Mapping(kwargs, rows, unpassed)
