"""Energy per pass: the device's own energy counter read around a row's own runs (after the
timed ones): NVML's total-energy counter on CUDA, the RAPL package counters of the Linux
powercap interface on the CPU. Where neither can be read, the reason, never a blank.

The counters measure the whole device (GPU) or package (CPU), idle power and other work
included: joules per pass are an upper bound of the layer's own energy, exact only on an
otherwise idle device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

POWERCAP = Path("/sys/class/powercap")
MIN_TIME_S = 0.3  # long enough for the counters' update interval (about 1 ms) not to matter


class Meter:
    """Joules since an arbitrary origin, from one source; `read()` returns a float."""

    def __init__(self, source: str, read: Callable[[], float]) -> None:
        self.source, self.read = source, read


def _rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """The package domains (intel-rapl:N, also on AMD), not their subzones."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)


def cpu_meter(root: Path = POWERCAP) -> Meter | str:
    domains = _rapl_domains(root)
    if not domains:
        return "no RAPL powercap on this machine"
    files = [d / "energy_uj" for d in domains]
    try:
        ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
        [int(f.read_text()) for f in files]
    except (OSError, ValueError) as exc:
        return f"RAPL powercap not readable ({exc.__class__.__name__}: {exc})"
    last = [0] * len(files)
    wraps = [0] * len(files)

    def read() -> float:
        total = 0.0
        for i, f in enumerate(files):
            value = int(f.read_text())
            if value < last[i]:  # the counter wrapped around
                wraps[i] += 1
            last[i] = value
            total += (value + wraps[i] * ranges[i]) / 1e6
        return total

    read()
    return Meter(f"RAPL powercap ({', '.join(d.name for d in domains)}: package energy)", read)


def cuda_meter(device: torch.device) -> Meter | str:
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception as exc:  # NVML missing, no permission, a GPU without the counter
        return f"NVML total-energy counter not readable ({exc})"
    return Meter("NVML total energy consumption (whole GPU)",
                 lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3)


def meter(device: torch.device) -> Meter | str:
    """The device's energy counter, or why there is none."""
    return cuda_meter(device) if device.type == "cuda" else cpu_meter()


def energy_per_call(fn: Callable[[], object], device: torch.device, source: Meter | str,
                    min_time_s: float = MIN_TIME_S) -> dict[str, Any]:
    """{"joules_per_call", "calls", "seconds", "source"} over at least `min_time_s` of calls,
    or {"unavailable": why}."""
    if isinstance(source, str):
        return {"unavailable": source}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    sync(device)
    calls, started, before = 0, time.perf_counter(), source.read()
    while calls < 3 or time.perf_counter() - started < min_time_s:
        fn()
        calls += 1
    sync(device)
    seconds, joules = time.perf_counter() - started, source.read() - before
    return {"joules_per_call": joules / calls, "calls": calls, "seconds": seconds,
            "watts": joules / seconds if seconds > 0 else None, "source": source.source}
