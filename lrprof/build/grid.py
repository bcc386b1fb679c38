"""From what a user typed to layer specs: comma lists expand to their product, per operator.

Each operator takes the parameters its schema declares; a parameter given that none of the
chosen operators takes is an error naming it. `impl all` expands to the implementations
that run on the device, and the ones that cannot run are returned with their reasons.
An item `start:stop[:step]` is an integer range, its stop included (`3:11:2` is 3,5,7,9,11).

`layer` treats an invalid combination (stride 2 with k 1) as an error; a sweep resolves
the grid with `resolve_grid`, which lists such combinations with their reasons and goes on.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lrprof.build.ops.registry import get_op
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import AUTO_IMPL, LayerSpec, parse_size, resolve_device
from lrprof.spec.params import split_list


@dataclass
class Invalid:
    """A combination of the grid no operator accepts, and why (the parameter's own message)."""

    spec: LayerSpec
    reason: str
    error: SpecError | None = None


@dataclass
class Grid:
    specs: list[LayerSpec]
    unavailable: dict[str, dict[str, str]] = field(default_factory=dict)  # op -> impl -> reason
    invalid: list[Invalid] = field(default_factory=list)  # filled by resolve_grid

    def __len__(self) -> int:
        return len(self.specs)


_RANGE = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*(?::\s*(-?\d+)\s*)?$")
MAX_RANGE = 10_000  # values one range may expand to: a typo should not build a million rows


def expand_range(item: str, param: str) -> list[int]:
    """'3:11:2' -> [3, 5, 7, 9, 11] (stop included); '1:4' -> [1, 2, 3, 4]."""
    match = _RANGE.match(item)
    if match is None:
        raise SpecError(param, "a range start:stop or start:stop:step of integers (stop included)", item)
    start, stop, step = int(match[1]), int(match[2]), int(match[3] or 1)
    if step < 1 or stop < start:
        raise SpecError(param, "a range start:stop[:step] with start <= stop and step >= 1", item)
    if (stop - start) // step + 1 > MAX_RANGE:
        raise SpecError(param, f"a range of at most {MAX_RANGE:,} values", item)
    return list(range(start, stop + 1, step))


def expand_list(text: str | Sequence[Any], param: str) -> list[Any]:
    """Comma-separated items, each a value or an integer range; a list stays a list (its
    string items may be ranges too). Repeated values are kept once, in first-seen order."""
    values: list[Any] = []
    for item in split_list(text, param):
        expanded = expand_range(item, param) if isinstance(item, str) and ":" in item else [item]
        values += [v for v in expanded if v not in values]
    return values


def _ints(text: str | Sequence[Any], param: str, minimum: int = 1) -> list[int]:
    values = []
    for item in expand_list(text, param):
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
    from lrprof.profile.layer import available_impls

    op_names = split_list(ops, "op")
    op_defs = [get_op(name) for name in op_names]
    taken = {name for op in op_defs for name in op.schema.names()}
    for name in params:
        if name not in taken:
            owners = ", ".join(op.name for op in _all_ops() if name in op.schema.names()) or "none"
            raise SpecError(name, f"not a parameter of op {', '.join(op_names)} (taken by: {owners})",
                            params[name])
    sizes = list(dict.fromkeys(parse_size(s) for s in expand_list(size, "size")))
    channel_list = _ints(channels, "channels")
    batches = _ints(batch, "batch")
    resolved = resolve_device(device)
    asked = [] if impl in (None, "", "all") else split_list(impl, "impl")
    for name in asked:
        if name != AUTO_IMPL and not any(name in (i.name for i in op.impls) for op in op_defs):
            known = sorted({i.name for op in op_defs for i in op.impls})
            raise SpecError("impl", f"all, auto, or one of {', '.join(known)} for op {', '.join(op_names)}",
                            name)
    grid = Grid([])
    for op in op_defs:
        if impl == "all":
            impls, missing = available_impls(op, resolved, dtype)
            if missing:
                grid.unavailable[op.name] = missing
        else:  # auto (chosen per device when prepared), the asked ones it has, else its default
            impls = [AUTO_IMPL] if AUTO_IMPL in asked else []
            impls = impls + [i.name for i in op.impls if i.name in asked] or [op.default_impl]
        names = [n for n in op.schema.names() if n in params]
        value_lists = [expand_list(params[n], n) for n in names]
        for impl_name, c, (h, w), b, values in itertools.product(
                impls, channel_list, sizes, batches, itertools.product(*value_lists)):
            grid.specs.append(LayerSpec(op=op.name, impl=impl_name, channels=c, height=h, width=w,
                                        batch=b, dtype=dtype, device=str(resolved),
                                        **dict(zip(names, values, strict=True))))
    return grid


def resolve_grid(grid: Grid) -> Grid:
    """Every spec resolved and validated for its device (defaults filled in, as its row's
    identity records them); two spellings of one configuration kept once.

    A combination that fails validation is listed with its reason instead of raised
    (stride 2 with k 1). A value that fails in every combination it appears in, on its own
    parameter (an even k, an unknown phi), is a mistake in the input, not a combination:
    its SpecError is raised, as `layer` would."""
    from lrprof.profile.layer import prepare_spec

    out = Grid([], dict(grid.unavailable), list(grid.invalid))
    seen: set[str] = set()
    for spec in grid.specs:
        try:
            resolved = prepare_spec(spec)
        except SpecError as exc:
            shown = "" if exc.got is None else f" (got {exc.got!r})"
            out.invalid.append(Invalid(spec, f"{exc.param}: {exc.allowed}{shown}", exc))
            continue
        key = config_key(resolved.config())
        if key not in seen:
            seen.add(key)
            out.specs.append(resolved)
    _raise_values_no_row_takes(grid.specs, out.invalid)
    return out


def _given(spec: LayerSpec, name: str) -> Any:
    value = dict(spec.params).get(name)
    return getattr(spec, name, None) if value is None else value


def _raise_values_no_row_takes(specs: list[LayerSpec], invalid: list[Invalid]) -> None:
    rows_with: dict[tuple[str, str], int] = {}
    for spec in specs:
        names = {n for n, _ in spec.params} | {"channels", "batch", "dtype", "impl"}
        for name in names:
            key = (name, str(_given(spec, name)))
            rows_with[key] = rows_with.get(key, 0) + 1
    failing: dict[tuple[str, str], list[Invalid]] = {}
    for entry in invalid:
        if entry.error is None:
            continue
        name = entry.error.param.replace("-", "_")
        failing.setdefault((name, str(_given(entry.spec, name))), []).append(entry)
    for key, entries in failing.items():
        if rows_with.get(key) == len(entries):
            raise entries[0].error


def config_key(config: Mapping[str, Any]) -> str:
    """A row's identity as one canonical string (sorted JSON): what resume, shards and merge
    match rows on."""
    return json.dumps(dict(config), sort_keys=True, default=str, separators=(",", ":"))


def _all_ops() -> list:
    from lrprof.build.ops.registry import list_ops

    return list_ops()
