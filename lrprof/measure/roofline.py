"""The roofline of a measured row: the device's ceilings, measured once per process (a large
copy for memory bandwidth, a large matrix product for compute; on the CPU also an
exponential ceiling and an FMA ceiling), and where the row stands against them.

A row's bytes come from its cost model: `minimal_bytes` (what any implementation must
move: each input once, the output once) and `design_bytes` (what the implementation moves
by its design). Its FLOPs are twice its counted forward MACs (exponentials not included).
The row is memory bound when moving its design bytes at the measured bandwidth takes
longer than its FLOPs at the measured compute ceiling, compute bound otherwise; the
fraction of the roofline is that bound's time over the measured latency.

The exp ceiling (CPU) is the best of torch.exp over a float32 buffer and, where the fused
extension is loaded, its own vector exp2 over an L1-resident buffer (`lrprof_fused::peak`);
the FMA ceiling is that extension's register-only FMA loop (independent chains, nothing
loaded): the most FLOP/s the vector units give, above what a real matmul reaches. A row
with exponentials (the softmax) gets its exps/s and FLOP/s as fractions of those two.

Ceilings are measured, not taken from a datasheet: on a shared machine they are what the
machine gave at the time, and on the CPU a copy larger than the last-level cache is
DRAM's bandwidth, so a layer whose working set stays in cache can exceed it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lrprof.spec.layer import DTYPES

MIB = 2**20
# Large enough to leave the caches: twice the 32 MiB L3 of this project's CPUs, or a
# GPU's L2 many times over.
CPU_COPY_MIB, CUDA_COPY_MIB = 64, 256
CPU_MATMUL_N, CUDA_MATMUL_N = 1024, 8192
CPU_EXP_ELEMENTS = 2**20  # 4 MiB of float32 in and out: the caches, not DRAM, feed it
PEAK_REPS = {"fma": 2000, "exp": 2000}  # rounds of the extension's micro-benchmarks (~5-20 ms)
RUNS = 5


@dataclass(frozen=True)
class Ceilings:
    """What the device reached on a large copy and a large matrix product."""

    device: str
    dtype: str
    threads: int | None  # CPU: torch's thread count when measured
    bandwidth_GBps: float  # bytes read + bytes written per second, best of RUNS
    compute_GFLOPs: float  # 2 * n^3 FLOPs per second, best of RUNS
    copy_bytes: int  # one buffer's size
    matmul_n: int
    seconds: float  # how long measuring took
    method: str
    exp_per_s: float | None = None  # CPU: exponentials per second, best of torch.exp and the kernel's
    torch_exp_per_s: float | None = None  # CPU: torch.exp alone
    fma_GFLOPs: float | None = None  # CPU: register-only FMA loop (needs the fused extension loaded)

    @property
    def ridge_flop_per_byte(self) -> float:
        return self.compute_GFLOPs / self.bandwidth_GBps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ridge_FLOP_per_byte": self.ridge_flop_per_byte}

    def text(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        extra = ""
        if self.exp_per_s:
            extra += f", {self.exp_per_s:.3g} exp/s (torch.exp {self.torch_exp_per_s:.3g})"
        if self.fma_GFLOPs:
            extra += f", {self.fma_GFLOPs:.1f} GFLOP/s FMA"
        return (f"{self.device} {self.dtype}{threads}: {self.bandwidth_GBps:.1f} GB/s copy "
                f"({self.copy_bytes // MIB} MiB), {self.compute_GFLOPs:.1f} GFLOP/s matmul "
                f"(n={self.matmul_n}){extra}, ridge {self.ridge_flop_per_byte:.2f} FLOP/byte")


_MEASURED: dict[tuple[str, str, int | None], Ceilings] = {}


def _best_seconds(fn: Any, device: torch.device, runs: int) -> float:
    fn()  # warm-up: page faults, library initialisation
    best = float("inf")
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def ceilings(device: torch.device | str, dtype: str = "float32") -> Ceilings:
    """The device's ceilings for `dtype`, measured on the first call and kept for the
    process (one measurement per device, dtype and CPU thread count)."""
    device = torch.device(device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    key = (str(device), dtype, threads)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(device, dtype, threads)
    return _MEASURED[key]


def measured() -> list[Ceilings]:
    """Every ceiling measured in this process (for the report's environment)."""
    return list(_MEASURED.values())


def _copy_seconds(device: torch.device, dtype: torch.dtype, nbytes: int) -> float:
    source = torch.ones(nbytes // dtype.itemsize, dtype=dtype, device=device)
    target = torch.empty_like(source)
    return _best_seconds(lambda: target.copy_(source), device, RUNS)


def _matmul_seconds(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _best_seconds(lambda: torch.mm(a, b), device, RUNS)


def _torch_exp_rate(device: torch.device, dtype: torch.dtype) -> float:
    source = torch.linspace(-20.0, 0.0, CPU_EXP_ELEMENTS, device=device).to(dtype)
    target = torch.empty_like(source)
    return CPU_EXP_ELEMENTS / _best_seconds(lambda: torch.exp(source, out=target), device, RUNS)


def _kernel_peak(what: str) -> float | None:
    """The fused extension's micro-benchmark (`fma` FLOP/s, `exp` exps/s) when it is loaded
    in this process, else None: measuring never starts a build."""
    from lrprof.build.ops.lr_kernels import fused_cpu

    if not fused_cpu.loaded():
        return None
    op = torch.ops.lrprof_fused.peak
    op(what, max(1, PEAK_REPS[what] // 10))  # warm-up
    return max(op(what, PEAK_REPS[what]) for _ in range(RUNS))


def _measure(device: torch.device, dtype: str, threads: int | None) -> Ceilings:
    started = time.perf_counter()
    cuda = device.type == "cuda"
    copy_bytes = (CUDA_COPY_MIB if cuda else CPU_COPY_MIB) * MIB
    n = CUDA_MATMUL_N if cuda else CPU_MATMUL_N
    copy_s = _copy_seconds(device, DTYPES[dtype], copy_bytes)
    matmul_s = _matmul_seconds(device, DTYPES[dtype], n)
    extra: dict[str, Any] = {}
    if cuda:
        torch.cuda.empty_cache()
    else:
        torch_exp = _torch_exp_rate(device, DTYPES[dtype])
        kernel_exp = _kernel_peak("exp")
        fma = _kernel_peak("fma")
        extra = {"torch_exp_per_s": torch_exp, "exp_per_s": max(torch_exp, kernel_exp or 0.0),
                 "fma_GFLOPs": fma / 1e9 if fma else None}
    return Ceilings(
        device=str(device), dtype=dtype, threads=threads,
        bandwidth_GBps=2 * copy_bytes / copy_s / 1e9,
        compute_GFLOPs=2 * n**3 / matmul_s / 1e9,
        copy_bytes=copy_bytes, matmul_n=n, seconds=time.perf_counter() - started,
        method=f"best of {RUNS}: Tensor.copy_ of {copy_bytes // MIB} MiB (read + write bytes), "
               f"torch.mm of {n}x{n} (2 n^3 FLOPs)"
               + ("" if cuda else f"; exp: torch.exp of {CPU_EXP_ELEMENTS} float32 and the fused kernel's "
                                  "vector exp2 (the faster); FMA: the fused extension's register loop"),
        **extra,
    )


def roofline(flops: float | None, design_bytes: int | None, minimal_bytes: int | None,
             seconds: float | None, ceiling: Ceilings, exps: float | None = None) -> dict[str, Any]:
    """A row against the ceilings: achieved GB/s (design bytes) and GFLOP/s, which ceiling
    bounds it, and the fraction of that bound it reached; with `exps` (its exponentials)
    and the CPU's exp and FMA ceilings, the fraction of each."""
    out: dict[str, Any] = {}
    if not seconds or design_bytes is None or flops is None:
        return out
    memory_s = design_bytes / (ceiling.bandwidth_GBps * 1e9)
    compute_s = flops / (ceiling.compute_GFLOPs * 1e9)
    out["achieved_GBps"] = design_bytes / seconds / 1e9
    out["achieved_GFLOPs"] = flops / seconds / 1e9
    out["bound"] = "memory" if memory_s >= compute_s else "compute"
    out["roofline_fraction"] = max(memory_s, compute_s) / seconds
    out["bandwidth_fraction"] = out["achieved_GBps"] / ceiling.bandwidth_GBps
    if exps and ceiling.exp_per_s:
        out["achieved_exps_per_s"] = exps / seconds
        out["exp_fraction"] = exps / seconds / ceiling.exp_per_s
        if ceiling.fma_GFLOPs:
            out["fma_fraction"] = out["achieved_GFLOPs"] / ceiling.fma_GFLOPs
    if minimal_bytes:
        out["minimal_GBps"] = minimal_bytes / seconds / 1e9
        out["intensity_FLOP_per_byte"] = flops / design_bytes if design_bytes else None
    return out


__all__ = ["Ceilings", "ceilings", "measured", "roofline"]
