"""From what a user typed to layer specs: comma lists expand to their product, per operator.

Each operator takes the parameters its schema declares; a parameter given that none of the
chosen operators takes is an error naming it. `impl all` expands to the implementations
that run on the device, and the ones that cannot run are returned with their reasons.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lrprof.errors import SpecError
from lrprof.ops import get_op
from lrprof.schema import split_list
from lrprof.spec import LayerSpec, parse_size, resolve_device


@dataclass
class Grid:
    specs: list[LayerSpec]
    unavailable: dict[str, dict[str, str]] = field(default_factory=dict)  # op -> impl -> reason


def _ints(text: str | Sequence[Any], param: str, minimum: int = 1) -> list[int]:
    values = []
    for item in split_list(text, param):
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise SpecError(param, f"an integer >= {minimum}, or a comma-separated list of them",
                            item) from None
        if value < minimum:
            raise SpecError(param, f"must be an integer >= {minimum}", value)
        values.append(value)
    return values


def layer_grid(ops: str | Sequence[str], params: Mapping[str, str | Sequence[Any]],
               impl: str | Sequence[str] | None = None, channels: str | Sequence[Any] = "64",
               size: str | Sequence[Any] = "56", batch: str | Sequence[Any] = "1",
               dtype: str = "float32", device: str = "auto") -> Grid:
    """Every combination, operator by operator, in a stable order."""
    from lrprof.layer import available_impls

    op_names = split_list(ops, "op")
    op_defs = [get_op(name) for name in op_names]
    taken = {name for op in op_defs for name in op.schema.names()}
    for name in params:
        if name not in taken:
            owners = ", ".join(op.name for op in _all_ops() if name in op.schema.names()) or "none"
            raise SpecError(name, f"not a parameter of op {', '.join(op_names)} (taken by: {owners})",
                            params[name])
    sizes = [parse_size(s) for s in split_list(size, "size")]
    channel_list = _ints(channels, "channels")
    batches = _ints(batch, "batch")
    resolved = resolve_device(device)
    asked = [] if impl in (None, "", "all") else split_list(impl, "impl")
    for name in asked:
        if not any(name in (i.name for i in op.impls) for op in op_defs):
            known = sorted({i.name for op in op_defs for i in op.impls})
            raise SpecError("impl", f"all, or one of {', '.join(known)} for op {', '.join(op_names)}", name)
    grid = Grid([])
    for op in op_defs:
        if impl == "all":
            impls, missing = available_impls(op, resolved, dtype)
            if missing:
                grid.unavailable[op.name] = missing
        else:  # the asked implementations this operator has, else its default
            impls = [i.name for i in op.impls if i.name in asked] or [op.default_impl]
        names = [n for n in op.schema.names() if n in params]
        value_lists = [split_list(params[n], n) for n in names]
        for impl_name, c, (h, w), b, values in itertools.product(
                impls, channel_list, sizes, batches, itertools.product(*value_lists)):
            grid.specs.append(LayerSpec(op=op.name, impl=impl_name, channels=c, height=h, width=w,
                                        batch=b, dtype=dtype, device=str(resolved),
                                        **dict(zip(names, values, strict=True))))
    return grid


def _all_ops() -> list:
    from lrprof.ops import list_ops

    return list_ops()
