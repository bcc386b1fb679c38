"""Pictures of a layer report with several rows: each row's latency with its spread beside
the 3x3 conv baseline, and its counted work beside it, so "same MACs, how much time?" is
read off one figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lrprof.record.records import Record
from lrprof.report.plots.common import Plot, log_axis, new_figure, palette, save_png

NAME_LIMIT = 42
PHASE_LABELS = (("fwd", "forward"), ("fwd_bwd", "forward+backward"))


def short_names(names: Sequence[str]) -> list[str]:
    """Fit the row names of one figure to NAME_LIMIT each. The operator (first word) stays;
    words every row shares go first (right to left), then the others from the left, so
    the shape at the end, which usually tells rows apart, goes last. An ellipsis marks
    where words went. If that makes two rows look alike, the full names are kept."""
    shared = set.intersection(*(set(n.split(" ")[1:]) for n in names)) if len(names) > 1 else set()
    short = [_shorten(n, shared) for n in names]
    if len(set(short)) < len(set(names)):
        return list(names)
    return short


def _shorten(name: str, shared: set[str]) -> str:
    if len(name) <= NAME_LIMIT:
        return name
    words = name.split(" ")
    head, rest = words[:1], words[1:]

    def text(dropped: set[int]) -> str:
        kept, marked = list(head), False
        for j, word in enumerate(rest):
            if j not in dropped:
                kept.append(word)
            elif not marked:
                kept.append("…")
                marked = True
        return " ".join(kept)

    order = [i for i in reversed(range(len(rest))) if rest[i] in shared]
    order += [i for i in range(len(rest)) if rest[i] not in shared]
    dropped: set[int] = set()
    for i in order:
        dropped.add(i)
        if len(text(dropped)) <= NAME_LIMIT:
            for j in reversed(order[:order.index(i)]):  # put back what still fits
                if len(text(dropped - {j})) <= NAME_LIMIT:
                    dropped.discard(j)
            return text(dropped)
    return name[:NAME_LIMIT - 1] + "…"


def _log_if_wide(axis: Any, values: Sequence[float], subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """A log scale (with 1-2-5 labels, or `subs`) when the values span more than 20x."""
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > 20:
        axis.set_xscale("log")
        log_axis(axis.xaxis, subs)


def plot_layer_rows(records: Sequence[Record], path: Path, facts: str) -> Plot | None:
    """Left: median latency per row and phase as a marker, whiskers from the first to the
    third quartile (markers, not bars: the axis may be logarithmic). Right: counted forward
    MACs per row. Drawn for two rows or more."""
    rows = [r for r in records if "fwd" in r.latency]
    if len(rows) < 2:
        return None
    phases = [(key, label) for key, label in PHASE_LABELS if any(key in r.latency for r in rows)]
    fig = new_figure(11.5, 1.4 + 0.45 * len(rows) * len(phases))
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    step = 0.6 / len(phases)
    positions = list(range(len(rows)))[::-1]  # first row on top
    medians: list[float] = []
    for offset, ((key, label), color, marker) in enumerate(
            zip(phases, palette(len(phases)), ("o", "s"), strict=False)):
        ys, xs, lows, highs = [], [], [], []
        for y, r in zip(positions, rows, strict=True):
            stats = r.latency.get(key)
            if stats is not None:
                ys.append(y + (len(phases) / 2 - offset - 0.5) * step)
                xs.append(stats.median_ms)
                lows.append(stats.median_ms - stats.q1_ms)
                highs.append(stats.q3_ms - stats.median_ms)
        left.errorbar(xs, ys, xerr=[lows, highs], fmt=marker, color=color, capsize=3, markersize=6,
                      label=f"{label}: median, whiskers from first to third quartile")
        medians += xs
    _log_if_wide(left, medians)
    labels = [name + ("  (baseline)" if "baseline" in str(r.derived.get("role", "")) else "")
              for name, r in zip(short_names([r.name for r in rows]), rows, strict=True)]
    left.set_yticks(positions, labels, fontsize=8)
    left.set_ylim(-0.6, len(rows) - 0.4)
    left.set_xlabel("latency per call (ms)")
    left.grid(True, axis="x", which="both", alpha=0.3)
    left.legend(fontsize=8, loc="best")
    macs = [(r.counted.get("fwd_MACs") or 0) / 1e6 for r in rows]
    right.barh(positions, macs, height=0.5, color="0.55")
    _log_if_wide(right, macs, subs=(1.0,))
    scale = ", log" if right.get_xscale() == "log" else ""
    right.set_xlabel(f"counted fwd MACs (M{scale}; 1 MAC = 2 FLOPs)")
    right.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Latency and work per row, one interleaved run\n{facts}", fontsize=10)
    save_png(fig, path)
    return Plot(path, "Latency and work per row",
                "Each row's median latency per call with its interquartile range, forward (and "
                "forward+backward), beside its counted forward MACs; the baseline is the dense "
                "3x3 conv of the same shape, timed in the same interleaved run.")


def layer_plots(records: Sequence[Record], base: Path, facts: str) -> list[Plot]:
    """Every picture that applies to a layer report, as `<base>-<name>.png`."""
    made = [plot_layer_rows(records, base.with_name(f"{base.name}-rows.png"), facts)]
    return [p for p in made if p is not None]
