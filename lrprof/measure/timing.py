"""Latency: warm-up, then repeated runs, kept as a distribution (and its raw samples) rather
than one number.

Rows that are compared are timed in one interleaved schedule: every candidate runs one
block per round, the order rotating from round to round (A B C, B C A, C A B ...), so a
change of machine speed during the run (another process, a clock change) hits every row
alike instead of landing in the ratio between two rows timed one after the other.

CUDA: CUDA events around each call, read after a synchronise at the end of each round.
CPU: `timeit` (perf_counter, garbage collector off) around a block of calls, on the thread
count torch is set to (recorded with every figure). Around each block the process's resource
usage is read too: page faults per call and involuntary context switches (another task
taking the core) per timed second, the figures that say whether a timing was disturbed.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
import timeit
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, fields

import torch

from lrprof.spec.options import TimingOptions  # noqa: F401  (the timer's input)

CPU_METHOD = ("interleaved blocks, rotating order; timeit (perf_counter, GC off) around C calls "
              "per run, after warm-up")
CUDA_METHOD = "interleaved, rotating order; CUDA events around each call, after warm-up"


@dataclass(frozen=True)
class Stats:
    """Per-call latency distribution over `runs` timed runs, each averaging `calls_per_run`
    calls; `samples_ms` keeps every run's per-call time, in the order measured.

    Replicated timings (`--repeat`) pool the runs of several processes: `process_runs` says
    how many of the samples, in order, came from each process (empty: one process). The
    fault and context-switch figures are None where they were not read (CUDA, old reports).
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int
    calls_per_run: int
    method: str
    threads: int | None = None
    samples_ms: tuple[float, ...] = ()
    process_runs: tuple[int, ...] = ()
    minor_faults_per_call: float | None = None
    major_faults_per_call: float | None = None
    involuntary_switches_per_s: float | None = None

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def processes(self) -> int:
        return len(self.process_runs) or 1

    def process_samples(self) -> list[tuple[float, ...]]:
        """The samples of each process, in order (one group for a single-process timing)."""
        if not self.process_runs:
            return [self.samples_ms]
        groups, start = [], 0
        for n in self.process_runs:
            groups.append(self.samples_ms[start:start + n])
            start += n
        return groups

    def process_medians_ms(self) -> list[float]:
        return [statistics.median(g) for g in self.process_samples() if g]

    @classmethod
    def pooled(cls, parts: Sequence[Stats | None]) -> Stats:
        """One distribution from the timings of several processes (a process that produced
        nothing for this row is None and counts 0 runs, so process i stays process i)."""
        done = [p for p in parts if p is not None]
        if not done:
            raise ValueError("no process produced a timing")
        samples = [v for p in done for v in p.samples_ms]
        calls = sorted(p.calls_per_run for p in done)[len(done) // 2]
        pooled = cls.from_times(samples, calls, done[0].method, done[0].threads)
        timed_calls = [p.runs * p.calls_per_run for p in done]

        def weighted(name: str, weights: list[float]) -> float | None:
            values = [getattr(p, name) for p in done]
            if any(v is None for v in values) or not sum(weights):
                return None
            return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)

        timed_s = [sum(p.samples_ms) * p.calls_per_run / 1e3 for p in done]
        return dataclasses.replace(
            pooled,
            process_runs=tuple(p.runs if p is not None else 0 for p in parts),
            minor_faults_per_call=weighted("minor_faults_per_call", timed_calls),
            major_faults_per_call=weighted("major_faults_per_call", timed_calls),
            involuntary_switches_per_s=weighted("involuntary_switches_per_s", timed_s),
        )

    @classmethod
    def from_times(
        cls, times_ms: Sequence[float], calls_per_run: int, method: str, threads: int | None = None
    ) -> Stats:
        if len(times_ms) < 2:
            raise ValueError("a latency needs at least two timed runs")
        q1, med, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
        return cls(med, q1, q3, min(times_ms), max(times_ms), len(times_ms), calls_per_run,
                   method, threads, tuple(times_ms))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["samples_ms"] = list(self.samples_ms)
        out["process_runs"] = list(self.process_runs)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["samples_ms"] = tuple(values.get("samples_ms") or ())
        values["process_runs"] = tuple(values.get("process_runs") or ())
        return cls(**values)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(fn: Callable[[], object], device: torch.device, options: TimingOptions) -> float:
    """Run `fn` until both warm-up bounds are met; returns the median call's seconds."""
    started = time.perf_counter()
    seconds: list[float] = []
    while len(seconds) < max(options.warmup, 1) or time.perf_counter() - started < options.warmup_s:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


class _Candidate:
    def __init__(self, key: Hashable, fn: Callable[[], object], calls: int) -> None:
        self.key, self.fn, self.calls = key, fn, calls
        self.samples_ms: list[float] = []
        self.timed_s = 0.0
        self.minor_faults = self.major_faults = self.switches = 0

    def done(self, options: TimingOptions, cuda: bool) -> bool:
        enough_time = cuda or self.timed_s >= options.min_time_s
        return len(self.samples_ms) >= options.min_runs and enough_time

    def stats(self, method: str, threads: int | None, cuda: bool) -> Stats:
        stats = Stats.from_times(self.samples_ms, self.calls, method, threads)
        if cuda:  # host-side faults say little about a GPU kernel
            return stats
        calls = len(self.samples_ms) * self.calls
        return dataclasses.replace(
            stats, minor_faults_per_call=self.minor_faults / calls,
            major_faults_per_call=self.major_faults / calls,
            involuntary_switches_per_s=self.switches / self.timed_s if self.timed_s else None)


def _cpu_block(candidate: _Candidate) -> None:
    # timeit: perf_counter around `number` calls with the garbage collector off (the
    # primitive torch.utils.benchmark wraps; its Timer adds warm-up calls to every block).
    # getrusage covers every thread of the process (torch's workers too).
    before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = timeit.Timer(candidate.fn, timer=time.perf_counter).timeit(number=candidate.calls)
    after = resource.getrusage(resource.RUSAGE_SELF)
    candidate.timed_s += elapsed
    candidate.samples_ms.append(elapsed * 1e3 / candidate.calls)
    candidate.minor_faults += after.ru_minflt - before.ru_minflt
    candidate.major_faults += after.ru_majflt - before.ru_majflt
    candidate.switches += after.ru_nivcsw - before.ru_nivcsw


L2_FLUSH_BYTES = 256 * 2**20  # larger than any L2 (H100/H200: 50-60 MiB)


def _l2_flush(device: torch.device) -> torch.Tensor:
    return torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)


def _captured(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` captured in a CUDA graph (warmed up on a side stream first, as capture needs);
    the replay is what gets timed."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_interleaved(
    candidates: Sequence[tuple[Hashable, Callable[[], object]]],
    device: torch.device,
    options: TimingOptions | None = None,
) -> dict[Hashable, Stats | Exception]:
    """Time every candidate in one interleaved schedule. A candidate that raises (out of
    memory, a kernel error) gets its exception as its result; the others go on."""
    options = options or TimingOptions()
    cuda = device.type == "cuda"
    threads = None if cuda else torch.get_num_threads()
    results: dict[Hashable, Stats | Exception] = {}
    active: list[_Candidate] = []
    target_block_s = options.min_time_s / options.min_runs
    for key, fn in candidates:
        try:
            per_call = warm_up(fn, device, options)
        except Exception as exc:  # recorded in its row by the caller
            results[key] = exc
            continue
        calls = 1 if cuda else max(1, int(target_block_s / max(per_call, 1e-9)))
        if cuda and options.cuda_graphs:
            try:
                fn = _captured(fn, device)
            except Exception as exc:  # not capturable (a host sync, a dynamic shape): its row says so
                results[key] = exc
                continue
        active.append(_Candidate(key, fn, calls))
    flush = _l2_flush(device) if cuda and options.cold else None
    finished: list[_Candidate] = []
    rounds = 0
    while active:
        order = active[rounds % len(active):] + active[:rounds % len(active)]
        rounds += 1
        pending = []
        for candidate in order:
            try:
                if cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    if flush is not None:
                        flush.zero_()  # the call finds nothing of its own in L2
                    start.record()
                    candidate.fn()
                    end.record()
                    pending.append((candidate, start, end))
                else:
                    _cpu_block(candidate)
            except Exception as exc:
                results[candidate.key] = exc
                active.remove(candidate)
        if cuda:
            torch.cuda.synchronize(device)
            for candidate, start, end in pending:
                ms = start.elapsed_time(end)
                candidate.samples_ms.append(ms)
                candidate.timed_s += ms / 1e3
        for candidate in [c for c in active if c.done(options, cuda)]:
            active.remove(candidate)
            finished.append(candidate)
    method = CUDA_METHOD if cuda else CPU_METHOD
    if cuda and options.cold:
        method += f"; L2 flushed before each call ({L2_FLUSH_BYTES // 2**20} MiB written)"
    if cuda and options.cuda_graphs:
        method += "; each call a CUDA graph replay (captured after warm-up)"
    for candidate in finished:
        results[candidate.key] = candidate.stats(method, threads, cuda)
    return results


def time_callable(
    fn: Callable[[], object], device: torch.device, options: TimingOptions | None = None
) -> Stats:
    """One candidate on its own: its Stats, or its exception raised."""
    result = time_interleaved([("only", fn)], device, options)["only"]
    if isinstance(result, Exception):
        raise result
    return result
