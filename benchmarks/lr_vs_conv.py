"""The local relation layer (unfold implementation) against convolutions of the same shape,
measured in one run: latency ratios next to MAC ratios, so "same MACs, how much time?"
is answered on this machine.

    python benchmarks/lr_vs_conv.py [--channels 64] [--size 56] [--k 7] [--m 8] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from lrprof.build.ops.local_relation import LocalRelation2d
from lrprof.measure import counting
from lrprof.measure.timing import TimingOptions, time_callable
from lrprof.spec.layer import resolve_device


def candidates(c: int, k: int, m: int) -> dict[str, nn.Module]:
    return {
        f"local relation {k}x{k} m={m} (unfold)": LocalRelation2d(c, k, m),
        "dense conv 3x3": nn.Conv2d(c, c, 3, padding=1, bias=False),
        f"dense conv {k}x{k}": nn.Conv2d(c, c, k, padding=k // 2, bias=False),
        f"depthwise {k}x{k} + 1x1": nn.Sequential(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--k", type=int, default=7)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    x = torch.randn(1, args.channels, args.size, args.size, device=device)
    options = TimingOptions(min_runs=10, min_time_s=1.0)
    rows = []
    for name, module in candidates(args.channels, args.k, args.m).items():
        module = module.to(device).eval()
        macs = counting.count(module, x).macs

        def forward(module: nn.Module = module) -> None:
            with torch.no_grad():
                module(x)

        stats = time_callable(forward, device, options)
        rows.append((name, macs, stats))
    base_name, base_macs, base = rows[1]
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{args.channels} channels, {args.size}x{args.size}, batch 1, {device}{threads}; "
          f"ratios against {base_name}")
    print(f"{'layer':34s} {'MACs (M)':>9s} {'ms median [IQR] n':>26s} {'MAC ratio':>9s} {'time ratio':>10s}")
    for name, macs, s in rows:
        timing = f"{s.median_ms:.3f} [{s.q1_ms:.3f}-{s.q3_ms:.3f}] n={s.runs}"
        print(f"{name:34s} {macs / 1e6:9.2f} {timing:>26s} {macs / base_macs:9.2f} "
              f"{s.median_ms / base.median_ms:10.2f}")


if __name__ == "__main__":
    main()
