"""The steps a layer profile and a network profile share: each runs guarded, so one
failure is recorded in the row and the steps after it still run."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lrprof.errors import describe
from lrprof.measure import counting
from lrprof.measure.memory import peak_memory, tensor_bytes
from lrprof.measure.timing import TimingOptions, time_callable
from lrprof.record import Record


def run_step(record: Record, what: str, step: Callable[[], None], device: torch.device) -> bool:
    """One stage of a profile (counting, timing a phase...). A failure (out of memory, a
    kernel error, a tracer error) is added to `record.error`; what was measured stays, and
    the stages after it still run."""
    try:
        step()
        return True
    except Exception as exc:  # recorded in the row, not raised: the report keeps the rest
        text = f"{what}: {describe(exc)}"
        record.error = f"{record.error}; {text}" if record.error else text
        return False
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def add_stock_counts(record: Record, model: nn.Module, x: torch.Tensor) -> None:
    """What stock fvcore and FlopCounterMode report for the same forward pass."""
    stock = counting.stock_counts(model, x)
    record.exact.update({"fvcore_stock_MACs": stock.fvcore_macs,
                         "torch_flopcounter_FLOPs": stock.flopcounter_flops,
                         "torch_flopcounter_MACs": stock.flopcounter_macs})
    record.detail["fvcore_stock_skipped"] = stock.fvcore_skipped


def measure_phases(record: Record, model: nn.Module, x: torch.Tensor, device: torch.device,
                   timing: TimingOptions, memory_runs: int, backward: bool,
                   input_grad: bool = True, train_for_backward: bool = False) -> None:
    """Latency and peak memory of the forward pass (no autograd) and, with `backward`, of
    forward+backward: gradients of the weights, and of the input when `input_grad`.
    `train_for_backward` puts the model in train mode for that phase (batch norm)."""

    def forward() -> None:
        with torch.no_grad():
            model(x)

    resident = tensor_bytes(model, x)
    run_step(record, "timing fwd",
             lambda: record.latency.update(fwd=time_callable(forward, device, timing)), device)
    run_step(record, "memory fwd",
             lambda: record.memory.update(fwd=peak_memory(forward, device, memory_runs, resident)),
             device)
    if not backward:
        return
    x_bwd = x.detach().clone().requires_grad_(True) if input_grad else x
    wrt = ([x_bwd] if input_grad else []) + [p for p in model.parameters() if p.requires_grad]
    state: dict[str, torch.Tensor] = {}

    def prepare() -> None:
        with torch.no_grad():
            state["grad"] = torch.randn_like(model(x))

    def forward_backward() -> None:
        torch.autograd.grad(model(x_bwd), wrt, state["grad"])

    was_training = model.training
    model.train(train_for_backward)
    try:
        if not run_step(record, "preparing fwd_bwd", prepare, device):
            return
        resident_bwd = tensor_bytes(model, x_bwd, state["grad"])
        run_step(record, "timing fwd_bwd", lambda: record.latency.update(
            fwd_bwd=time_callable(forward_backward, device, timing)), device)
        run_step(record, "memory fwd_bwd", lambda: record.memory.update(
            fwd_bwd=peak_memory(forward_backward, device, memory_runs, resident_bwd)), device)
    finally:
        model.train(was_training)
