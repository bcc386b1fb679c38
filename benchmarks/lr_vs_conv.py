"""The local relation layer (unfold implementation) against convolutions of the same shape,
timed in one interleaved schedule: latency ratios next to MAC ratios, so "same MACs, how
much time?" is answered on this machine. Uses only lrprof's public API.

    python benchmarks/lr_vs_conv.py [--channels 64] [--size 56] [--k 7] [--m 8] [--device cpu]
"""

from __future__ import annotations

import argparse

import lrprof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    shape = {"channels": args.channels, "height": args.size, "width": args.size, "device": args.device}
    specs = {
        f"local relation {args.k}x{args.k} m={args.m} (unfold)":
            lrprof.LayerSpec(op="lr", impl="unfold", k=args.k, m=args.m, **shape),
        "dense conv 3x3": lrprof.LayerSpec(op="conv", k=3, **shape),
        f"dense conv {args.k}x{args.k}": lrprof.LayerSpec(op="conv", k=args.k, **shape),
        f"depthwise conv {args.k}x{args.k}":
            lrprof.LayerSpec(op="conv", k=args.k, groups=args.channels, **shape),
    }
    options = lrprof.MeasureOptions(
        timing=lrprof.TimingOptions(min_runs=10, min_time_s=1.0), baseline=False, stock_counters=False,
        check_output=False, roofline=False, op_times=False, energy=False, memory_runs=1)
    records = lrprof.profile_layers(list(specs.values()), options)  # one interleaved schedule
    base = records[1]
    base_ms, base_macs = base.latency["fwd"].median_ms, base.counted["fwd_MACs"]
    threads = base.latency["fwd"].threads
    print(f"{args.channels} channels, {args.size}x{args.size}, batch 1, {args.device}"
          f"{f', {threads} threads' if threads else ''}; ratios against dense conv 3x3, timed interleaved")
    print(f"{'layer':34s} {'MACs (M)':>9s} {'ms median [IQR] n':>26s} {'MAC ratio':>9s} {'time ratio':>10s}")
    for name, record in zip(specs, records, strict=True):
        s, macs = record.latency["fwd"], record.counted["fwd_MACs"]
        timing = f"{s.median_ms:.3f} [{s.q1_ms:.3f}-{s.q3_ms:.3f}] n={s.runs}"
        print(f"{name:34s} {macs / 1e6:9.2f} {timing:>26s} {macs / base_macs:9.2f} "
              f"{s.median_ms / base_ms:10.2f}")


if __name__ == "__main__":
    main()
