"""`--impl auto`: per device, the fastest implementation that runs there, is ready without a
long one-time step (a build not yet cached, a compile in every process) and passes a small
output check against the float64 reference; the choice and why, never a silent one.

    choice = choose_impl(get_op("lr"), torch.device("cpu"), "float32", {"k": 7, "m": 8})
    choice.impl, choice.text()   # 'fused', 'auto chose fused for lr on cpu: ...'

The order is the operator's measured `speed_order` for the device type; an operator without
one gets its default implementation. Nothing here builds: an implementation that needs its
build is passed over with the command that builds it once (`lrprof build`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from lrprof.build.ops.registry import OpDef, get_op, resolve_spec
from lrprof.profile.checks import reference_check
from lrprof.profile.replicate import build_row
from lrprof.spec.layer import AUTO_IMPL, LayerSpec, resolve_device

CHECK_SIZE = 12  # the output check's map is at most this many pixels a side (milliseconds)


@dataclass(frozen=True)
class Choice:
    """What `auto` chose for one operator, device and dtype, and why; `passed_over` lists each
    faster implementation with the reason it was not taken."""

    op: str
    device: str
    dtype: str
    impl: str
    reason: str
    passed_over: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        text = f"--impl auto chose {self.impl} for {self.op} on {self.device} ({self.dtype}): {self.reason}"
        if self.passed_over:
            text += "; passed over: " + "; ".join(f"{name} ({why})" for name, why in self.passed_over)
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"impl": self.impl, "reason": self.reason,
                "passed_over": [{"impl": n, "why": w} for n, w in self.passed_over], "text": self.text()}


def is_auto(impl: str | None) -> bool:
    return impl == AUTO_IMPL


def choose_impl(op: OpDef, device: torch.device, dtype: str,
                params: dict[str, Any] | None = None, instructions: bool = False) -> Choice:
    """The implementation `auto` takes for `op` with these parameters (defaults for the
    others) on this device and dtype; with `instructions`, one valgrind can run."""
    key = tuple(sorted((params or {}).items()))
    return _choose(op.name, str(device), dtype, key, instructions)


@functools.lru_cache(maxsize=256)
def _choose(op_name: str, device_name: str, dtype: str, params: tuple[tuple[str, Any], ...],
            instructions: bool = False) -> Choice:
    op = get_op(op_name)
    device = torch.device(device_name)
    order = op.speed_order.get(device.type)
    where = {"op": op.name, "device": device.type, "dtype": dtype}
    if not order:
        return Choice(**where, impl=op.default_impl,
                      reason=f"the operator's default (no measured speed order on {device.type})")
    passed: list[tuple[str, str]] = []
    for name in order:
        impl = op.impl(name)
        why = impl.unavailable_reason(device, dtype) or impl.not_ready(device, dtype)
        if why is None and instructions:
            why = impl.valgrind_problem()
        if why is None and name != op.reference_impl:
            why = _output_problem(op, name, device, dtype, dict(params))
        if why is None:
            rank = "the fastest" if not passed else "the fastest ready"
            return Choice(**where, impl=name, passed_over=tuple(passed),
                          reason=f"{rank} of {', '.join(order)} (fastest first, as measured)")
        passed.append((name, why))
    return Choice(**where, impl=op.default_impl, passed_over=tuple(passed),
                  reason="none of its measured order is ready here: the operator's default")


def _output_problem(op: OpDef, impl: str, device: torch.device, dtype: str,
                    params: dict[str, Any]) -> str | None:
    """Why `impl`'s output on a small input disagrees with the float64 reference, or None."""
    spec = LayerSpec(op=op.name, impl=impl, channels=16, height=CHECK_SIZE, width=CHECK_SIZE,
                     batch=1, dtype=dtype, device=str(device), **params)
    try:
        spec = resolve_spec(spec, validate=False)
        module, inputs = build_row(spec, 0, device)
        check = reference_check(op, spec, module, inputs)
    except Exception as exc:  # an implementation that fails here is not chosen; the reason says so
        return f"failed its output check: {_first_line(exc, 200)}"
    if not check.ok:
        return (f"failed its output check: rel. error {check.max_rel_err:.2g} against float64 "
                f"(tolerance {check.tolerance:.0e})")
    return None


def _first_line(exc: Exception, limit: int) -> str:
    """'TypeName: the first line of its message' (at most `limit` characters of it)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:limit]}"


def resolve_auto(spec: LayerSpec, instructions: bool = False) -> tuple[LayerSpec, Choice | None]:
    """The spec with `auto` replaced by the chosen implementation, and the choice (None when
    the spec named its implementation)."""
    if not is_auto(spec.impl):
        return spec, None
    device = resolve_device(spec.device)
    choice = choose_impl(get_op(spec.op), device, spec.dtype, dict(spec.params), instructions)
    return spec.replace(impl=choice.impl), choice


@dataclass(frozen=True)
class Built:
    """One implementation's one-time step, done ahead by `lrprof build`."""

    op: str
    impl: str
    seconds: float | None
    what: str
    error: str | None = None


def build_ahead(device: torch.device) -> list[Built]:
    """Every implementation for this device type that has a one-time step, that step done now
    (a cached build is loaded, not rebuilt; any dtype: the step does not depend on it); a
    failure (no compiler) is kept in its entry."""
    from lrprof.build.ops.registry import list_ops

    done = []
    for op in list_ops():
        for impl in op.impls:
            if impl.build_ahead is None or device.type not in impl.devices:
                continue
            try:
                report = impl.build_ahead() or {}
            except Exception as exc:  # a missing or broken compiler: said, and the exit status says it
                done.append(Built(op.name, impl.name, None, "", _first_line(exc, 300)))
                continue
            done.append(Built(op.name, impl.name, report.get("setup_s"), report.get("setup", "ready")))
    _choose.cache_clear()  # what is ready has changed
    return done
