"""Peak memory of one call, above what was resident before it (inputs, weights).

CUDA: the caching allocator's peak statistic, reset before the call.
CPU: the profiler's allocation events (every allocation and free of the CPU allocator
during the call, in order); the peak of their running sum is the call's peak. Both
count tensor memory only, not the allocator's cached or fragmented bytes.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

CUDA_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus resident"
CPU_METHOD = "torch profiler allocation events (CPU allocator), peak of running sum"


@dataclass(frozen=True)
class MemoryStats:
    """Peak bytes allocated during a call, above the `resident_bytes` held before it."""

    peak_bytes: int  # median over runs
    min_bytes: int
    max_bytes: int
    runs: int
    resident_bytes: int | None
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_peaks(cls, peaks: list[int], resident: int | None, method: str) -> MemoryStats:
        return cls(int(statistics.median(peaks)), min(peaks), max(peaks), len(peaks),
                   resident, method)


def cuda_peak(fn: Callable[[], object], device: torch.device, runs: int = 3) -> MemoryStats:
    peaks = []
    resident = 0
    for _ in range(runs):
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - resident)
    return MemoryStats.from_peaks(peaks, resident, CUDA_METHOD)


@contextlib.contextmanager
def kineto_quiet() -> Iterator[None]:
    """The profiler prints start/stop lines from C++ straight to file descriptor 2 (whatever
    sys.stderr is at the time); point that descriptor at /dev/null meanwhile."""
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocation_deltas(prof: torch.autograd.profiler.profile) -> list[tuple[int, int]]:
    from torch._C._profiler import _EventType

    deltas: list[tuple[int, int]] = []
    stack = list(prof.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            deltas.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    return sorted(deltas)


def cpu_peak(fn: Callable[[], object], runs: int = 3, resident: int | None = None) -> MemoryStats:
    peaks = []
    for _ in range(runs):
        # The low-level profiler: torch.profiler.profile imports inductor (~2 s) on start.
        with kineto_quiet(), torch.autograd.profiler.profile(use_cpu=True, profile_memory=True) as prof:
            fn()
        running = peak = 0
        for _, delta in _allocation_deltas(prof):
            running += delta
            peak = max(peak, running)
        peaks.append(peak)
    return MemoryStats.from_peaks(peaks, resident, CPU_METHOD)


def tensor_bytes(*items: torch.nn.Module | torch.Tensor) -> int:
    """Bytes held by tensors and by modules' parameters and buffers (the resident set)."""
    total = 0
    for item in items:
        tensors = (
            list(item.parameters()) + list(item.buffers())
            if isinstance(item, torch.nn.Module)
            else [item]
        )
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def peak_memory(
    fn: Callable[[], object], device: torch.device, runs: int = 3, resident: int | None = None
) -> MemoryStats:
    """On CPU, `resident` (the caller's count of inputs and weights) is reported alongside."""
    if device.type == "cuda":
        return cuda_peak(fn, device, runs)
    return cpu_peak(fn, runs, resident)
