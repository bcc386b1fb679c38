"""Probes of the module as an object rather than as an operator: are its tensors registered
(so `.to()` moves them), does it run after a move of device and dtype, is it deterministic.
Same conventions as `probes`: float64, fixed seeds, lrprof's own implementation beside it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lrprof.profile.audit.probes import (
    MOVE_TOLERANCE,
    TOLERANCE,
    Result,
    Subject,
    dtype_name,
    output,
    random_input,
    relative,
)
from lrprof.spec.errors import describe


def plain_tensors(module: nn.Module) -> list[str]:
    """Tensors held as plain attributes (not parameters or buffers): `.to()` does not move
    them and the state_dict does not hold them."""
    found = []
    for prefix, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if attr in ("_parameters", "_buffers", "_modules"):
                continue
            items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                else [value]
            for item in items:
                if isinstance(item, torch.Tensor):
                    shape = "x".join(map(str, item.shape))
                    found.append(f"{prefix + '.' if prefix else ''}{attr} ({shape})")
                    break
    return found


def registration(user: Subject, shape: tuple[int, ...], seed: int = 0) -> Result:
    """A second instance loaded from the first's state_dict computes the same output; the
    module moved with `.to(float64)` runs and agrees with float32; moved to another device
    (CUDA when there is one, else the meta device) it still runs."""
    problems, notes = [], []
    a = user.make(seed, torch.float32)
    x = random_input(shape, seed, user.device, torch.float32)
    with torch.no_grad():
        y = output(a, x)
    try:
        b = user.make(seed + 1, torch.float32)
        b.load_state_dict(a.state_dict())
        with torch.no_grad():
            diff = relative(output(b, x), y)
        notes.append(f"state_dict round trip: rel. difference {diff:.2g}")
        if diff > TOLERANCE:
            problems.append("an instance loaded from the state_dict computes something else: it uses "
                            "a tensor the state_dict does not hold")
    except Exception as exc:
        problems.append(f"state_dict round trip failed: {describe(exc)}")
    try:
        moved = copy.deepcopy(a).to(torch.float64)
        with torch.no_grad():
            y64 = output(moved, x.to(torch.float64))
        diff = relative(y64, y.to(torch.float64))
        notes.append(f".to(float64): output {dtype_name(y64.dtype)}, rel. difference {diff:.2g}")
        if y64.dtype != torch.float64 or diff > MOVE_TOLERANCE:
            problems.append(".to(float64) left part of it in float32")
    except Exception as exc:
        problems.append(f"after .to(float64): {describe(exc)}")
    problems += _device_move(a, x, y, notes)
    if problems:
        held = plain_tensors(a)
        text = "; ".join(problems) + (f" (plain tensor attributes: {', '.join(held)})" if held else "")
        return Result("every tensor registered", False, text, "moves with .to(), survives a state_dict "
                      "round trip")
    return Result("every tensor registered", True, "; ".join(notes), "moves with .to(), survives a "
                  "state_dict round trip")


def _device_move(module: nn.Module, x: torch.Tensor, y: torch.Tensor, notes: list[str]) -> list[str]:
    if torch.cuda.is_available() and x.device.type != "cuda":
        target = torch.device("cuda")
    elif x.device.type == "cuda":
        target = torch.device("cpu")
    else:
        target = torch.device("meta")
    try:
        moved = copy.deepcopy(module).to(target)
        with torch.no_grad():
            got = output(moved, x.to(target))
    except Exception as exc:
        message = describe(exc)
        if target.type == "meta" and "device" not in message:
            notes.append(f"device move not probed (no CUDA device; on the meta device: {message})")
            return []
        return [f"after .to({target.type}): {message}"]
    if got.device.type != target.type:
        return [f"after .to({target.type}) the output is on {got.device.type}"]
    if target.type != "meta":
        diff = relative(got.to(y.device), y)
        notes.append(f".to({target.type}): rel. difference {diff:.2g}")
        if diff > MOVE_TOLERANCE:
            return [f"after .to({target.type}) the output differs by {diff:.2g}"]
    else:
        notes.append(".to(meta): runs (no CUDA device here)")
    return []


# ---- dtypes, determinism ----------------------------------------------------------------------


def runs_in(user: Subject, own: Subject, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> Result:
    """Built for `dtype` (its constructor running with that default dtype) and run on an
    input in it: the output is in `dtype` and finite."""
    name = f"runs in {dtype_name(dtype)}"
    x = random_input(shape, seed, user.device, dtype)
    try:
        with torch.no_grad():
            output(own.make(seed, dtype, construct_dtype=dtype), x)
    except Exception as exc:
        return Result(name, None, "not probed: lrprof's implementation cannot run in it here "
                      f"({describe(exc)})")
    try:
        try:
            module = user.make(seed, dtype, construct_dtype=dtype)
        except Exception:  # a constructor that cannot run with that default dtype
            module = user.make(seed, dtype)
        with torch.no_grad():
            y = output(module, x)
    except Exception as exc:
        return Result(name, False, describe(exc), "runs, output in that dtype, finite")
    finite = bool(torch.isfinite(y).all())
    ok = y.dtype == dtype and finite
    text = f"output {dtype_name(y.dtype)}, {'finite' if finite else 'NOT finite (inf or NaN)'}"
    return Result(name, ok, text, "runs, output in that dtype, finite")


def determinism(user: Subject, shape: tuple[int, ...], repeats: int = 3, seed: int = 0) -> Result:
    module = user.make(seed, torch.float32)
    x = random_input(shape, seed, user.device, torch.float32)
    with torch.no_grad():
        first = output(module, x)
        diffs = [relative(output(module, x), first) for _ in range(repeats - 1)]
    worst = max(diffs, default=0.0)
    return Result("deterministic on repeat", worst == 0.0,
                  f"{repeats} runs on one input: max rel. difference {worst:.2g}", "identical outputs", worst)
