"""Time spent inside named parts of a model (stages, layers), from forward hooks.

The clock is read after a synchronize on entry and exit, so each part's time is its own;
the synchronizations make a hooked pass slower than an unhooked one, which is why reports
put the hooked sum beside the unhooked latency. Several models (`net --vs`) are run in
alternation, pass by pass, so a drift in machine speed hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrprof.measure.timing import synchronize

METHOD = "forward pre/post hooks, clock read after synchronize; median over hooked runs, interleaved"


@dataclass
class Parts:
    """One model, its input and the names of the parts to time."""

    model: nn.Module
    inputs: tuple[Any, ...]
    names: Sequence[str]


def _hooks(model: nn.Module, names: Sequence[str], device: torch.device,
           current: dict[str, float]) -> list:
    modules = dict(model.named_modules())
    started: dict[str, float] = {}

    def pre(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            synchronize(device)
            started[name] = time.perf_counter()
        return hook

    def post(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            synchronize(device)
            current[name] = current.get(name, 0.0) + (time.perf_counter() - started[name]) * 1e3
        return hook

    handles = []
    for name in names:
        handles.append(modules[name].register_forward_pre_hook(pre(name)))
        handles.append(modules[name].register_forward_hook(post(name)))
    return handles


def time_parts_interleaved(entries: Sequence[Parts], device: torch.device,
                           runs: int) -> list[dict[str, list[float]]]:
    """Milliseconds inside each named module per hooked forward pass, for each entry; the
    entries take turns pass by pass (the models are warm: they were timed whole before)."""
    results: list[dict[str, list[float]]] = [{n: [] for n in e.names} for e in entries]
    currents: list[dict[str, float]] = [{} for _ in entries]
    handles = []
    try:
        for entry, current in zip(entries, currents, strict=True):
            handles += _hooks(entry.model, entry.names, device, current)
        with torch.no_grad():
            for run in range(runs):
                order = list(range(len(entries)))
                order = order[run % len(order):] + order[:run % len(order)]
                for index in order:
                    entry, current = entries[index], currents[index]
                    current.clear()
                    entry.model(*entry.inputs)
                    for name in entry.names:
                        results[index][name].append(current.get(name, 0.0))
    finally:
        for h in handles:
            h.remove()
    return results


def time_parts(model: nn.Module, x: torch.Tensor, names: Sequence[str], device: torch.device,
               runs: int) -> dict[str, list[float]]:
    return time_parts_interleaved([Parts(model, (x,), names)], device, runs)[0]
