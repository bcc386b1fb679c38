"""Latency: warm-up, then repeated runs, kept as a distribution rather than one number.

CUDA: one pair of CUDA events around each call, read after a synchronise.
CPU: torch.utils.benchmark.Timer.blocked_autorange with the thread count set
explicitly (Timer runs on one thread unless told otherwise).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Stats:
    """Per-call latency distribution over `runs` timed runs, each averaging `calls_per_run` calls."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int
    calls_per_run: int
    method: str
    threads: int | None = None

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @classmethod
    def from_times(
        cls, times_ms: list[float], calls_per_run: int, method: str, threads: int | None = None
    ) -> Stats:
        if len(times_ms) < 2:
            raise ValueError("a latency needs at least two timed runs")
        q1, med, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
        return cls(med, q1, q3, min(times_ms), max(times_ms), len(times_ms), calls_per_run,
                   method, threads)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TimingOptions:
    """How long to time. CPU timings run on torch's current thread count (set it with
    torch.set_num_threads, or --threads), which every Stats records."""

    warmup: int = 3  # calls before timing (at least this many, and at least warmup_s)
    warmup_s: float = 0.2
    min_runs: int = 10
    min_time_s: float = 0.5  # CPU: total timed time asked of blocked_autorange (min_runs rules)

    def __post_init__(self) -> None:
        from lrprof.errors import SpecError, require_int

        require_int("min-runs", self.min_runs, 2)
        if not math.isfinite(self.min_time_s) or self.min_time_s <= 0:
            raise SpecError("min-time", "must be a finite number of seconds > 0", self.min_time_s)
        if self.warmup < 0 or not math.isfinite(self.warmup_s) or self.warmup_s < 0:
            raise SpecError("warmup", "must be >= 0 calls and a finite number of seconds >= 0",
                            (self.warmup, self.warmup_s))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], device: torch.device, options: TimingOptions) -> float:
    """Run `fn` until both warm-up bounds are met; returns the median call's seconds."""
    started = time.perf_counter()
    seconds: list[float] = []
    while len(seconds) < options.warmup or time.perf_counter() - started < options.warmup_s:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def time_cuda(fn: Callable[[], object], device: torch.device, options: TimingOptions) -> Stats:
    warm_up(fn, device, options)
    pairs = []
    with torch.cuda.device(device):
        for _ in range(options.min_runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) for s, e in pairs]
    return Stats.from_times(times, 1, "CUDA events, one call per run, after warm-up")


def time_cpu(fn: Callable[[], object], options: TimingOptions) -> Stats:
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()
    per_call = warm_up(fn, torch.device("cpu"), options)
    # blocked_autorange picks its own block size (1, 10, 100... calls), so the time asked
    # for may give fewer blocks than min_runs: ask again with a budget from the block seen.
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    budget = max(options.min_time_s, options.min_runs * per_call * 1.05)
    for _ in range(3):
        measurement = timer.blocked_autorange(min_run_time=budget)
        if len(measurement.times) >= options.min_runs:
            break
        block_s = statistics.median(measurement.times) * measurement.number_per_run
        budget = max(budget, options.min_runs * block_s * 1.25)
    times = [t * 1e3 for t in measurement.times]
    return Stats.from_times(
        times,
        measurement.number_per_run,
        "torch.utils.benchmark blocked_autorange after warm-up",
        threads,
    )


def time_callable(
    fn: Callable[[], object], device: torch.device, options: TimingOptions | None = None
) -> Stats:
    options = options or TimingOptions()
    if device.type == "cuda":
        return time_cuda(fn, device, options)
    return time_cpu(fn, options)
