"""Every implementation of the local relation layer in one run, beside the 3x3 convolution
of the same shape: forward and forward+backward latency, peak memory, achieved bandwidth,
and the ratios to unfold and to the conv, all timed in one interleaved schedule
(lrprof.profile.layer.profile_layers), each output checked against the float64 reference.

    python benchmarks/lr_impls.py                       # C=64, 56x56, k=7, m=8; B=1 on CPU, 32 on CUDA
    python benchmarks/lr_impls.py --impl fused,shift --out reports/lr_impls
    taskset -c 0,1 python benchmarks/lr_impls.py --threads 2
    python benchmarks/lr_impls.py --impl unfold,fused --batch 1,8 --threads 1,2   # one run per pair

Each (batch, threads) pair is one interleaved run of its own. The last lines of each state
the issue's done-when figures for the fastest implementation, each "met" or "missed" in
words. They are measured, never asserted: on a shared machine the ratios move from run to
run; --strict exits 1 when one is missed (and 0 otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lrprof.build.ops import get_op
from lrprof.measure import roofline
from lrprof.measure.device import collect
from lrprof.measure.timing import TimingOptions
from lrprof.profile.layer import available_impls, profile_layers
from lrprof.record.records import Record
from lrprof.report import report_paths, write_report
from lrprof.report.layer import layer_report
from lrprof.spec.layer import LayerSpec, resolve_device
from lrprof.spec.options import MeasureOptions

MIB = 2**20


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _median(record: Record, phase: str) -> float | None:
    stats = record.latency.get(phase)
    return stats.median_ms if stats else None


def _peak(record: Record, phase: str) -> int | None:
    memory = record.memory.get(phase)
    return memory.peak_bytes if memory else None


def table(records: list[Record]) -> tuple[list[dict], dict]:
    layers = [r for r in records if r.config.get("op") == "lr"]
    conv = next(r for r in records if r.config.get("op") == "conv")
    unfold = next((r for r in layers if r.config.get("impl") == "unfold"), None)
    rows = []
    for r in layers + [conv]:
        fwd, both = _median(r, "fwd"), _median(r, "fwd_bwd")
        minimal = r.derived.get("minimal_bytes")
        rows.append({
            "row": r.config.get("impl") if r is not conv else "conv 3x3",
            "fwd ms": fwd,
            "fwd+bwd ms": both,
            "fwd peak MiB": _ratio(_peak(r, "fwd"), MIB),
            "fwd+bwd peak MiB": _ratio(_peak(r, "fwd_bwd"), MIB),
            "peak / (x+y+q+k)": _ratio(_peak(r, "fwd"), minimal) if r is not conv else None,
            "GB/s (design)": r.derived.get("achieved_GBps"),
            "GB/s (min bytes)": r.derived.get("minimal_GBps"),
            "% roofline": 100 * r.derived["roofline_fraction"] if "roofline_fraction" in r.derived else None,
            "bound": r.derived.get("bound"),
            "fwd vs unfold": _ratio(_median(unfold, "fwd"), fwd) if unfold else None,
            "fwd / conv": _ratio(fwd, _median(conv, "fwd")),
            "fwd+bwd / conv": _ratio(both, _median(conv, "fwd_bwd")),
            "setup s": r.derived.get("setup_s"),
            "rel. error": r.checks.get("output_max_rel_err"),
            "verdict": r.checks.get("verdict") or r.error,
        })
    return rows, {"conv": conv, "unfold": unfold, "layers": layers}


def print_table(rows: list[dict]) -> None:
    headers = list(rows[0])
    cells = [[h] + [r[h] if isinstance(r[h], str) else _fmt(r[h]) for r in rows] for h in headers]
    widths = [max(len(str(c)) for c in column) for column in cells]
    for i in range(len(rows) + 1):
        print("  ".join(str(cells[j][i]).rjust(widths[j]) for j in range(len(headers))))


# The bars (issue 26): (what, bar, goal, lower is better)
BARS = {
    "forward / conv 3x3": (0.5, 0.35, True),
    "unfold / it": (60.0, None, False),
    "forward+backward / conv's": (1.0, None, True),
    "rel. error vs float64": (1e-4, None, True),
}


def verdict(name: str, value: float | None) -> tuple[str, bool]:
    """'name: value (bar: <= x, goal y): met' and whether it was missed."""
    bar, goal, lower = BARS[name]
    sign = "<=" if lower else ">="
    text = f"  {name}: {_fmt(value)} (bar: {sign} {bar:g}" + (f", goal {goal:g}" if goal else "") + ")"
    if value is None:
        return text + ": not measured", False
    missed = value > bar if lower else value < bar
    met_goal = goal is not None and (value <= goal if lower else value >= goal)
    return text + (": missed" if missed else ": met, goal too" if met_goal else ": met"), missed


def done_when(parts: dict) -> tuple[list[str], bool]:
    """The issue's bar, stated for the fastest implementation measured (not asserted); the
    lines and whether any figure missed its bar."""
    conv, unfold, layers = parts["conv"], parts["unfold"], parts["layers"]
    timed = [r for r in layers if _median(r, "fwd")]
    if not timed:
        return ["no implementation was timed: missed"], True
    best = min(timed, key=lambda r: _median(r, "fwd"))
    fwd, both = _median(best, "fwd"), _median(best, "fwd_bwd")
    lines, missed = [f"fastest: {best.config['impl']} ({fwd:.3f} ms forward)"], False
    figures = {"forward / conv 3x3": _ratio(fwd, _median(conv, "fwd")),
               "unfold / it": _ratio(_median(unfold, "fwd"), fwd) if unfold is not None else None,
               "forward+backward / conv's": _ratio(both, _median(conv, "fwd_bwd")) if both else None,
               "rel. error vs float64": best.checks.get("output_max_rel_err")}
    for name, value in figures.items():
        if value is None and name != "forward / conv 3x3":
            continue
        line, miss = verdict(name, value)
        lines.append(line)
        missed |= miss
    lines.append(f"  forward peak / (x + y + q + k) bytes: "
                 f"{_fmt(_ratio(_peak(best, 'fwd'), best.derived.get('minimal_bytes')))}")
    ceiling = best.detail.get("ceilings")
    if ceiling:
        d = best.derived
        lines.append(f"  achieved {_fmt(d.get('achieved_GBps'))} GB/s of {ceiling['bandwidth_GBps']:.1f} "
                     f"(copy), "
                     f"{_fmt(d.get('achieved_GFLOPs'))} GFLOP/s of {ceiling['compute_GFLOPs']:.1f} (matmul); "
                     f"bound: {d.get('bound')}, {_fmt(100 * d.get('roofline_fraction', 0))}% of the roofline")
        if d.get("exp_fraction") is not None:
            fma = d.get("fma_fraction")
            lines.append(f"  {_fmt(d['achieved_exps_per_s'])} exp/s = {_fmt(100 * d['exp_fraction'])}% "
                         f"of the exp ceiling ({_fmt(ceiling['exp_per_s'])} exp/s)"
                         + (f"; {_fmt(100 * fma)}% of the FMA ceiling ({ceiling['fma_GFLOPs']:.1f} GFLOP/s)"
                            if fma is not None else ""))
    return lines, missed


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def run(args: argparse.Namespace, device: torch.device, batch: int, threads: int | None) -> bool:
    """One interleaved run at this batch and thread count; True if a figure missed its bar."""
    if threads:
        torch.set_num_threads(threads)
    op = get_op("lr")
    ok, missing = available_impls(op, device, args.dtype)
    impls = ok if args.impl == "all" else [i for i in args.impl.split(",") if i]
    specs = [LayerSpec(op="lr", impl=impl, channels=args.channels, height=args.size, width=args.size,
                       batch=batch, dtype=args.dtype, device=str(device), k=args.k, m=args.m)
             for impl in impls]
    options = MeasureOptions(backward=not args.no_backward, stock_counters=False,
                             timing=TimingOptions(min_runs=args.min_runs, min_time_s=args.min_time))
    environment = collect(device)
    records = profile_layers(specs, options)
    rows, parts = table(records)
    threads_text = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"\nlocal relation layer C={args.channels}, {args.size}x{args.size}, k={args.k}, m={args.m}, "
          f"B={batch}, {args.dtype}, {environment.device_name} ({device}{threads_text}); one interleaved run")
    print_table(rows)
    for name, reason in missing.items():
        if args.impl == "all":
            print(f"not measured: {name}: {reason}")
    for c in roofline.measured():
        if c.threads in (None, torch.get_num_threads()):
            print(f"ceilings: {c.text()}")
    lines, missed = done_when(parts)
    for line in lines:
        print(line)
    load = Path("/proc/loadavg")
    if load.exists():
        print(f"load average at the end: {load.read_text().split()[0]} (other processes share these cores)")
    if args.out is not None:
        report = layer_report(records, ["benchmarks/lr_impls.py"], environment,
                              {"lr": missing} if args.impl == "all" and missing else None)
        out = args.out if len(args.batches) * len(args.thread_counts) == 1 else \
            args.out / f"B{batch}-threads{threads or torch.get_num_threads()}"
        paths = report_paths("layer", out)
        write_report(report, paths)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", default=None,
                        help="B, or a comma-separated list (default: 1 on CPU, 32 on CUDA)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--impl", default="all", help="comma-separated, or all (those that run here)")
    parser.add_argument("--threads", default=None,
                        help="CPU threads, or a comma-separated list (default: torch's)")
    parser.add_argument("--min-time", type=float, default=1.0, help="CPU: timed seconds per row and phase")
    parser.add_argument("--min-runs", type=int, default=10)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a done-when figure is missed")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write DIR/layer.{md,csv,json} (DIR/B<b>-threads<t>/ for several runs)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    args.batches = _ints(args.batch) if args.batch else [32 if device.type == "cuda" else 1]
    args.thread_counts = _ints(args.threads) if args.threads and device.type == "cpu" else [None]
    missed = []
    for threads in args.thread_counts:
        for batch in args.batches:
            if run(args, device, batch, threads):
                missed.append(f"B={batch}" + (f", {threads} threads" if threads else ""))
    if missed:
        print(f"\nmissed: a done-when figure missed its bar at {'; '.join(missed)}")
    else:
        print("\nevery done-when figure measured met its bar")
    if args.strict and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
