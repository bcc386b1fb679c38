"""What to measure, as data: one `MeasureOptions` for every command that measures (layer, net,
module, check, sweep), with `TimingOptions` inside. Commands differ only in their defaults
(`for_net`, `for_audit`); the instruments and profiles read the fields that apply to them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lrprof.spec.errors import SpecError, require_int


@dataclass(frozen=True)
class TimingOptions:
    """How long to time: each candidate gets at least `min_runs` runs and, on the CPU, at
    least `min_time_s` of timed calls (a run's block of calls is sized so that `min_runs`
    blocks take about `min_time_s`)."""

    warmup: int = 3  # calls before timing (at least this many, and at least warmup_s)
    warmup_s: float = 0.2
    min_runs: int = 10
    min_time_s: float = 0.5
    cold: bool = False  # CUDA: flush the L2 cache before each timed call (triton's do_bench does)
    cuda_graphs: bool = False  # CUDA: time the call captured in a CUDA graph (launch overhead apart)

    def __post_init__(self) -> None:
        require_int("min-runs", self.min_runs, 2)
        if not math.isfinite(self.min_time_s) or self.min_time_s <= 0:
            raise SpecError("min-time", "must be a finite number of seconds > 0", self.min_time_s)
        if self.warmup < 0 or not math.isfinite(self.warmup_s) or self.warmup_s < 0:
            raise SpecError("warmup", "must be >= 0 calls and a finite number of seconds >= 0",
                            (self.warmup, self.warmup_s))

    def identity(self) -> str | None:
        """What a row's identity says of its timing when it is not the default."""
        modes = [name for name, on in (("cold", self.cold), ("cuda-graphs", self.cuda_graphs)) if on]
        return "+".join(modes) or None


CONVENTIONS = ("lrprof", "fvcore", "flopcounter")  # lrprof.measure.conventions has their tables


@dataclass(frozen=True)
class MeasureOptions:
    backward: bool = False  # also count and time forward+backward
    timing: TimingOptions = field(default_factory=TimingOptions)
    memory_runs: int = 3
    stock_counters: bool = True  # also run stock fvcore and FlopCounterMode
    check_output: bool = True  # layers: each output against the operator's float64 reference
    baseline: bool = True  # a dense 3x3 conv of each row's shape, timed in the same schedule
    seed: int = 0
    repeat: int = 1  # layers: > 1 times the rows in this many fresh processes and pools them
    instructions: bool = False  # layers: also count instructions per call under callgrind (CPU)
    roofline: bool = True  # layers: the device's ceilings (once per process), each row placed
    per_layer: bool = False  # nets: break down by layer too
    hooked_runs: int = 5  # nets, modules: forward passes with hooks, for each part's time
    max_work_ratio: float = 1.5  # check: counted / exact MACs (and exps) above this fails
    op_times: bool = True  # per-op self time beside per-op work, in profiled runs after the timed ones
    energy: bool = True  # joules per pass from the device's energy counter, or why not
    trace: str | None = None  # a directory: the profiled runs as a Chrome/Perfetto trace
    # counting (`lrprof count`; the measuring commands count under lrprof's convention)
    input_grad: bool = True  # backward: differentiate the floating-point inputs too
    convention: str = "lrprof"  # lrprof, fvcore or flopcounter: whose rules price each op
    meta: bool = False  # count on the meta device: no weights, no compute
    depth: int = 2  # the module tree down to this depth (0: the whole model only)

    def __post_init__(self) -> None:
        require_int("memory-runs", self.memory_runs, 1)
        require_int("repeat", self.repeat, 1)
        require_int("hooked-runs", self.hooked_runs, 2)
        require_int("depth", self.depth, 0)
        if self.convention not in CONVENTIONS:
            raise SpecError("convention", f"one of {', '.join(CONVENTIONS)}", self.convention)
        if not math.isfinite(self.max_work_ratio) or self.max_work_ratio < 1:
            raise SpecError("max-work-ratio", "a number >= 1", self.max_work_ratio)

    @classmethod
    def for_net(cls, **changes: Any) -> MeasureOptions:
        """A whole network: one warm-up call, 5 runs, 2 memory runs (a net's pass is long)."""
        base = cls(timing=TimingOptions(warmup=1, warmup_s=0.0, min_runs=5, min_time_s=0.5), memory_runs=2)
        return dataclasses.replace(base, **changes)

    @classmethod
    def for_audit(cls, **changes: Any) -> MeasureOptions:
        """`lrprof check`: 2 memory runs (the probes are the point)."""
        return dataclasses.replace(cls(memory_runs=2), **changes)
