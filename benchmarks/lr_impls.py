"""Every implementation of the local relation layer in one run, beside the 3x3 convolution
of the same shape: forward and forward+backward latency, peak memory, achieved bandwidth,
and the ratios to unfold and to the conv, all timed in one interleaved schedule
(lrprof.profile.layer.profile_layers), each output checked against the float64 reference.

    python benchmarks/lr_impls.py                       # C=64, 56x56, k=7, m=8; B=1 on CPU, 32 on CUDA
    python benchmarks/lr_impls.py --impl fused,shift --out reports/lr_impls
    taskset -c 0,1 python benchmarks/lr_impls.py --threads 2

The last lines state the issue's done-when figures for the fastest implementation. They
are measured, never asserted: on a shared machine the ratios move from run to run.
"""

from __future__ import annotations

import argparse
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


def done_when(parts: dict) -> list[str]:
    """The issue's bar, stated for the fastest implementation measured (not asserted)."""
    conv, unfold, layers = parts["conv"], parts["unfold"], parts["layers"]
    timed = [r for r in layers if _median(r, "fwd")]
    if not timed:
        return ["no implementation was timed"]
    best = min(timed, key=lambda r: _median(r, "fwd"))
    fwd, both = _median(best, "fwd"), _median(best, "fwd_bwd")
    lines = [f"fastest: {best.config['impl']} ({fwd:.3f} ms forward)"]
    lines.append(f"  forward / conv 3x3: {_fmt(_ratio(fwd, _median(conv, 'fwd')))} (bar: <= 0.4)")
    if unfold is not None:
        lines.append(f"  unfold / it: {_fmt(_ratio(_median(unfold, 'fwd'), fwd))} (bar: >= 40)")
    lines.append(f"  forward peak / (x + y + q + k) bytes: "
                 f"{_fmt(_ratio(_peak(best, 'fwd'), best.derived.get('minimal_bytes')))} (bar: <= 1.5)")
    if both is not None:
        ratio = _ratio(both, _median(conv, "fwd_bwd"))
        lines.append(f"  forward+backward / conv's: {_fmt(ratio)} (bar: <= 1.5)")
    ceiling = best.detail.get("ceilings")
    if ceiling:
        d = best.derived
        lines.append(f"  achieved {_fmt(d.get('achieved_GBps'))} GB/s of {ceiling['bandwidth_GBps']:.1f} "
                     f"(copy), "
                     f"{_fmt(d.get('achieved_GFLOPs'))} GFLOP/s of {ceiling['compute_GFLOPs']:.1f} (matmul); "
                     f"bound: {d.get('bound')}, {_fmt(100 * d.get('roofline_fraction', 0))}% of the roofline")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, 32 on CUDA")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--impl", default="all", help="comma-separated, or all (those that run here)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-time", type=float, default=1.0, help="CPU: timed seconds per row and phase")
    parser.add_argument("--min-runs", type=int, default=10)
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write DIR/layer.{md,csv,json}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 1)
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
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"local relation layer C={args.channels}, {args.size}x{args.size}, k={args.k}, m={args.m}, "
          f"B={batch}, {args.dtype}, {environment.device_name} ({device}{threads}); one interleaved run")
    print_table(rows)
    for name, reason in missing.items():
        if args.impl == "all":
            print(f"not measured: {name}: {reason}")
    for c in roofline.measured():
        print(f"ceilings: {c.text()}")
    for line in done_when(parts):
        print(line)
    load = Path("/proc/loadavg")
    if load.exists():
        print(f"load average at the end: {load.read_text().split()[0]} (other processes share these cores)")
    if args.out is not None:
        report = layer_report(records, ["benchmarks/lr_impls.py"], environment,
                              {"lr": missing} if args.impl == "all" and missing else None)
        paths = report_paths("layer", args.out)
        write_report(report, paths)
        print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
