"""The steps a layer profile and a network profile share. Each runs guarded, so one
failure is recorded in its row and the steps after it still run; the rows of one report
are timed together, interleaved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from lrprof.measure import noise, stock
from lrprof.measure.counting import CountResult
from lrprof.measure.memory import peak_memory, tensor_bytes
from lrprof.measure.timing import Stats, TimingOptions, time_interleaved
from lrprof.record.records import Record
from lrprof.spec.errors import describe


def run_step(record: Record, what: str, step: Callable[[], None], device: torch.device) -> bool:
    """One stage of a profile (counting, timing a phase...). A failure (out of memory, a
    kernel error, a tracer error) is added to `record.error`; what was measured stays, and
    the stages after it still run."""
    try:
        step()
        return True
    except Exception as exc:  # recorded in the row, not raised: the report keeps the rest
        record.add_error(f"{what}: {describe(exc)}")
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def add_stock_counts(record: Record, model: nn.Module, inputs: Sequence[Any], counted: CountResult) -> None:
    """What stock fvcore and FlopCounterMode report for the same forward pass, beside ours
    family by family, and the share of our count each one misses."""
    found = stock.stock_counts(model, *inputs)
    record.counted.update({"fvcore_stock_MACs": found.fvcore_macs,
                         "torch_flopcounter_FLOPs": found.flopcounter_flops,
                         "torch_flopcounter_MACs": found.flopcounter_macs})
    if found.fvcore_error is None:
        record.checks["fvcore_missed_pct"] = stock.missed_pct(counted, found.fvcore_families)
    if found.flopcounter_error is None:
        record.checks["flopcounter_missed_pct"] = stock.missed_pct(counted, found.flopcounter_families)
    record.detail["stock"] = {
        "like_for_like": stock.like_for_like(counted, found),
        "fvcore_skipped": found.fvcore_skipped,
        "fvcore_error": found.fvcore_error,
        "flopcounter_error": found.flopcounter_error,
    }


@dataclass
class Phase:
    """One timed phase of a row: the call, and the bytes resident before it."""

    fn: Callable[[], object]
    resident: int


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def phase_calls(model: nn.Module, inputs: Sequence[Any], backward: bool, input_grad: bool = True,
                train_for_backward: bool = False) -> dict[str, Phase]:
    """The forward pass (no autograd) and, with `backward`, forward+backward: gradients of
    the weights, and of the floating-point inputs when `input_grad`. `train_for_backward`
    runs that phase in train mode (batch norm on batch statistics)."""
    inputs = tuple(inputs)

    def forward() -> None:
        with torch.no_grad():
            model(*inputs)

    phases = {"fwd": Phase(forward, tensor_bytes(model, *_tensors(inputs)))}
    if not backward:
        return phases
    grad_inputs = tuple(
        x.detach().clone().requires_grad_(True)
        if isinstance(x, torch.Tensor) and input_grad and x.is_floating_point() else x
        for x in inputs
    )
    wrt = [x for x in _tensors(grad_inputs) if x.requires_grad]
    wrt += [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.train(train_for_backward)
    try:
        with torch.no_grad():
            grads = [torch.randn_like(t) for t in _tensors(model(*inputs))
                     if t.is_floating_point()]
    finally:
        model.train(was_training)

    def forward_backward() -> None:
        model.train(train_for_backward)
        try:
            outs = [t for t in _tensors(model(*grad_inputs)) if t.requires_grad]
            torch.autograd.grad(outs, wrt, grads[:len(outs)], allow_unused=True)
        finally:
            model.train(was_training)

    if wrt:
        phases["fwd_bwd"] = Phase(forward_backward, tensor_bytes(model, *_tensors(grad_inputs), *grads))
    return phases


def time_rows(rows: Sequence[tuple[Record, dict[str, Phase]]], device: torch.device,
              timing: TimingOptions) -> dict[str, Any]:
    """Every phase of every row in one interleaved schedule; a failure stays in its row.
    The machine's noise is read before and after (returned, and flagged in the rows)."""
    results, session = time_phases([phases for _, phases in rows], device, timing,
                                   labels=[record.name for record, _ in rows])
    for (index, name), result in results.items():
        record = rows[index][0]
        if isinstance(result, Exception):
            record.add_error(f"timing {name}: {describe(result)}")
        else:
            record.latency[name] = result
    noise.flag_rows([record for record, _ in rows], [session])
    return session


def time_phases(rows: Sequence[dict[str, Phase]], device: torch.device, timing: TimingOptions,
                labels: Sequence[str] | None = None
                ) -> tuple[dict[tuple[int, str], Stats | Exception], dict[str, Any]]:
    """Time every phase of every row interleaved: {(row index, phase): Stats or the
    exception}, and the noise session around it. On CUDA each timed call sits in an NVTX
    range named `<label> <phase>` (what `nsys profile` shows), when labels are given."""
    candidates = [((index, name), _in_range(phase.fn, f"{labels[index]} {name}")
                   if labels and device.type == "cuda" else phase.fn)
                  for index, phases in enumerate(rows) for name, phase in phases.items()]
    before = noise.snapshot(device)
    try:
        results = time_interleaved(candidates, device, timing)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    threads = None if device.type == "cuda" else torch.get_num_threads()
    return results, noise.session(before, noise.snapshot(device), threads, device)


def _in_range(fn: Callable[[], object], name: str) -> Callable[[], object]:
    def call() -> object:
        torch.cuda.nvtx.range_push(name)
        try:
            return fn()
        finally:
            torch.cuda.nvtx.range_pop()

    return call


def measure_memory(record: Record, phases: dict[str, Phase], device: torch.device, runs: int) -> None:
    for name, phase in phases.items():
        run_step(record, f"memory {name}",
                 lambda name=name, phase=phase: record.memory.update(
                     {name: peak_memory(phase.fn, device, runs, phase.resident)}), device)
