"""Pictures of a sweep: latency and MACs against k, latency against MACs with the fit, the
global against local crossover over H x W, achieved bandwidth against the ceiling.

A plot that does not apply to the records (no k varies, no non-local operator in the
sweep, no roofline columns) is not drawn: `sweep_plots` returns the ones it wrote.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrprof.record.records import Record
from lrprof.report.plots.common import Plot, fwd_ms, log_axis, new_figure, palette, save_png, title_facts
from lrprof.sweep.fits import ACHIEVED_GBS_NAMES, CEILING_GBS_NAMES, GroupFit, group_records, record_value

GLOBAL_OPS = ("nonlocal",)  # operators whose cost grows with (H x W)^2: the crossover's one side
SHAPE_FIELDS = ("channels", "height", "width")


def _varying(records: Sequence[Record], exclude: Sequence[str]) -> list[str]:
    """Identity fields that take more than one value over the records (op and impl first),
    less those the others determine (a derived default such as the geometry prior's width,
    which follows channels and m, would only lengthen every label)."""
    fields: list[str] = []
    for r in records:
        fields += [f for f in r.config if f not in fields]
    varying = [f for f in fields if f not in ("device",)
               and (len({str(r.config.get(f)) for r in records}) > 1 or f in ("op", "impl"))]
    kept = list(varying)
    derived = _derived_params(records)
    for f in sorted(reversed(varying), key=lambda f: f not in derived):  # derived ones first
        if f in ("op", "impl"):
            continue
        others = [g for g in kept if g != f]
        if _determines(records, others, f):
            kept.remove(f)
    return [f for f in kept if f not in exclude]


def _derived_params(records: Sequence[Record]) -> set[str]:
    """Parameters whose default the operator derives from the others (its schema says so)."""
    from lrprof.build.ops.registry import get_op

    names: set[str] = set()
    for op in {str(r.config.get("op")) for r in records}:
        try:
            names |= {p.name for p in get_op(op).schema.params if p.derive is not None}
        except Exception:  # an operator this process does not know
            continue
    return names


def _determines(records: Sequence[Record], fields: Sequence[str], target: str) -> bool:
    """True when the values of `fields` fix the value of `target` in every record."""
    seen: dict[tuple, str] = {}
    for r in records:
        key = tuple(str(r.config.get(f)) for f in fields)
        value = str(r.config.get(target))
        if seen.setdefault(key, value) != value:
            return False
    return True


def _series_label(config: dict[str, Any], fields: Sequence[str]) -> str:
    head = f"{config.get('op')}[{config.get('impl')}]"
    rest = " ".join(f"{f}={config.get(f)}" for f in fields if f not in ("op", "impl"))
    return f"{head} {rest}".strip()


def _shape_label(config: dict[str, Any]) -> str:
    return f"C={config.get('channels')}, {config.get('height')}x{config.get('width')}"


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order (C=64 before C=128), anything else after, as text."""
    items = value if isinstance(value, tuple) else (value,)
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in items)


def _group(records: Sequence[Record], key: Callable[[Record], Any]) -> dict[Any, list[Record]]:
    out: dict[Any, list[Record]] = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


# ---- latency and MACs against one parameter -----------------------------------------------


def plot_vs_param(records: Sequence[Record], param: str, path: Path, facts: str,
                  max_panels: int = 6) -> Plot | None:
    """Latency (top) and counted MACs (bottom) against `param`, one panel per input shape,
    one line per combination of the other varying parameters."""
    rows = [r for r in records if param in r.config and isinstance(r.config[param], (int, float))]
    if len({r.config[param] for r in rows}) < 2:
        return None
    panels = _group(rows, lambda r: tuple(r.config.get(f) for f in SHAPE_FIELDS))
    if len(panels) > max_panels:
        panels = {"all shapes": rows}
        fields = _varying(rows, [param])
    else:
        fields = _varying(rows, [param, *SHAPE_FIELDS])
    series_keys = sorted({_series_label(r.config, fields) for r in rows})
    colors = dict(zip(series_keys, palette(len(series_keys)), strict=True))
    ncols = len(panels)
    fig = new_figure(3.2 * ncols + 2.8, 6.4)
    axes = fig.subplots(2, ncols, squeeze=False, sharex=True)
    for col, (shape, panel_rows) in enumerate(sorted(panels.items(), key=lambda i: _sort_key(i[0]))):
        title = shape if isinstance(shape, str) else _shape_label(panel_rows[0].config)
        for label, series in sorted(_group(panel_rows, lambda r: _series_label(r.config, fields)).items()):
            series = sorted(series, key=lambda r: r.config[param])
            xs = [r.config[param] for r in series]
            ms = [fwd_ms(r) for r in series]
            macs = [r.counted.get("fwd_MACs") for r in series]
            for row, ys in ((0, ms), (1, macs)):
                pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
                if pts:
                    axes[row][col].plot(*zip(*pts, strict=True), marker="o", markersize=3,
                                        linewidth=1.2, color=colors[label], label=label)
        axes[0][col].set_title(title, fontsize=9)
        axes[1][col].set_xlabel(param)
        axes[1][col].set_xticks(sorted({r.config[param] for r in rows}))
        for row in (0, 1):
            axes[row][col].set_yscale("log")
            log_axis(axes[row][col].yaxis)
            axes[row][col].grid(True, which="major", alpha=0.3)
            axes[row][col].tick_params(labelsize=8)
    axes[0][0].set_ylabel("forward latency (ms, median)")
    axes[1][0].set_ylabel("counted forward MACs")
    seen: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend([seen[k] for k in series_keys if k in seen], [k for k in series_keys if k in seen],
               loc="outside right center", fontsize=8, title="series")
    title = f"Latency and MACs vs {param}"
    fig.suptitle(f"{title}\n{facts}", fontsize=10)
    save_png(fig, path)
    others = [f for f in fields if f not in ("op", "impl")]
    lines = f"one line per operator and combination of {', '.join(others)}" if others \
        else "one line per operator and implementation"
    return Plot(path, title, f"forward latency (ms, log scale) and counted MACs (log scale) against "
                             f"{param}, one panel per input shape, {lines}")


# ---- latency against MACs -----------------------------------------------------------------


def plot_latency_vs_macs(records: Sequence[Record], fits: Sequence[GroupFit], path: Path,
                         facts: str) -> Plot | None:
    """Every timed row on log-log axes, one colour per op/impl, with its fitted power law."""
    groups = group_records([r for r in records if fwd_ms(r) and r.counted.get("fwd_MACs")])
    if not groups:
        return None
    by_label = {f"{f.op}[{f.impl}]": f for f in fits}
    fig = new_figure(7.5, 5.2)
    ax = fig.subplots()
    for color, ((op, impl), rows) in zip(palette(len(groups)), groups.items(), strict=True):
        label = f"{op}[{impl}]"
        xs = [r.counted["fwd_MACs"] for r in rows]
        ys = [fwd_ms(r) for r in rows]
        fit = by_label.get(label)
        line = fit.latency_vs_macs if fit else None
        shown = label + (f" (exponent {line.exponent:.2f}, R^2 {line.r2:.2f})" if line else "")
        ax.scatter(xs, ys, s=14, color=color, label=shown, alpha=0.85)
        if line:
            lo, hi = min(xs), max(xs)
            grid = [lo * (hi / lo) ** (i / 40) for i in range(41)]
            ax.plot(grid, [line.predict(x) for x in grid], color=color, linewidth=1, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis(ax.xaxis)
    log_axis(ax.yaxis)
    ax.set_xlabel("counted forward MACs (1 MAC = 2 FLOPs)")
    ax.set_ylabel("forward latency (ms, median)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    title = "Latency vs counted MACs"
    ax.set_title(f"{title}\n{facts}", fontsize=10)
    save_png(fig, path)
    return Plot(path, title, "each timed row (log-log), one colour per operator and implementation; "
                             "lines: least-squares power-law fits, exponent and R^2 in the legend")


# ---- the non-local vs local crossover -----------------------------------------------------


@dataclass(frozen=True)
class Crossing:
    """Where, over H x W, a global operator's latency crosses a local one's."""

    channels: Any
    global_label: str
    local_label: str
    pixels: float | None  # None: no crossing within the measured sizes
    between: tuple[int, int]  # the measured sizes around it (or the range measured)
    global_slower_after: bool  # past the crossing (or everywhere) the global one is slower

    def text(self) -> str:
        side = "slower" if self.global_slower_after else "faster"
        low, high = self.between
        if self.pixels is None:
            return (f"C={self.channels}: {self.global_label} is {side} than {self.local_label} at "
                    f"every measured size ({low:,}-{high:,} pixels)")
        edge = math.sqrt(self.pixels)
        return (f"C={self.channels}: {self.global_label} becomes {side} than {self.local_label} at "
                f"about {self.pixels:,.0f} pixels (~{edge:.0f}x{edge:.0f}), between the measured "
                f"{low:,} and {high:,}")


def crossings(records: Sequence[Record], global_ops: Sequence[str] = GLOBAL_OPS,
              value: Callable[[Record], float | None] = fwd_ms) -> list[Crossing]:
    """For each channel count, global operator and local operator measured at 2+ common
    sizes: the first size where their `value`s (forward latency by default, or counted
    MACs) cross, by log-linear interpolation of the ratio between the measured sizes
    (exact for two power laws)."""
    found = []
    for (channels, g_label, l_label), points in _pairs(records, global_ops, value).items():
        for (a_px, a_ratio), (b_px, b_ratio) in zip(points, points[1:], strict=False):
            if (a_ratio - 1) * (b_ratio - 1) < 0 or a_ratio == 1:
                t = math.log(1 / a_ratio) / math.log(b_ratio / a_ratio) if a_ratio != b_ratio else 0.0
                px = math.exp(math.log(a_px) + t * (math.log(b_px) - math.log(a_px)))
                found.append(Crossing(channels, g_label, l_label, px, (a_px, b_px), b_ratio > 1))
                break
        else:
            found.append(Crossing(channels, g_label, l_label, None, (points[0][0], points[-1][0]),
                                  points[-1][1] > 1))
    return found


def crossovers(records: Sequence[Record], global_ops: Sequence[str] = GLOBAL_OPS) -> list[str]:
    """The crossings in words, one line each (the report's and the plot's caption)."""
    return [c.text() for c in crossings(records, global_ops)]


def _pairs(records: Sequence[Record], global_ops: Sequence[str],
           value: Callable[[Record], float | None] = fwd_ms) -> dict[tuple, list[tuple[int, float]]]:
    """(channels, global series, local series) -> [(pixels, global / local value)]."""
    timed = [r for r in records if value(r) and r.config.get("height")]
    series = _group(timed, lambda r: (r.config.get("channels"), _crossover_label(r)))
    out: dict[tuple, list[tuple[int, float]]] = {}
    for (channels, g_label), g_rows in series.items():
        if g_rows[0].config.get("op") not in global_ops:
            continue
        g_at = _median_by_pixels(g_rows, value)
        for (c2, l_label), l_rows in series.items():
            if c2 != channels or l_rows[0].config.get("op") in global_ops:
                continue
            l_at = _median_by_pixels(l_rows, value)
            common = sorted(set(g_at) & set(l_at))
            if len(common) >= 2:
                out[(channels, g_label, l_label)] = [(px, g_at[px] / l_at[px]) for px in common]
    return out


def _median_by_pixels(rows: Sequence[Record],
                      value: Callable[[Record], float | None] = fwd_ms) -> dict[int, float]:
    """H x W -> the median value over the rows of that size (the other parameters)."""
    at: dict[int, list[float]] = {}
    for r in rows:
        at.setdefault(r.config["height"] * r.config["width"], []).append(value(r))
    return {px: float(statistics.median(v)) for px, v in at.items()}


def _crossover_label(record: Record) -> str:
    return f"{record.config.get('op')}[{record.config.get('impl')}]"


def plot_crossover(records: Sequence[Record], path: Path, facts: str,
                   global_ops: Sequence[str] = GLOBAL_OPS) -> Plot | None:
    """Latency against H x W for the global and the local operators, one panel per channel
    count; drawn when the records hold a global and a local operator at 2+ sizes."""
    pairs = _pairs(records, global_ops)
    if not pairs:
        return None
    found = crossings(records, global_ops)
    channels = sorted({c for c, _, _ in pairs})
    fig = new_figure(4.6 * len(channels) + 0.6, 4.8)
    axes = fig.subplots(1, len(channels), squeeze=False)[0]
    timed = [r for r in records if fwd_ms(r) and r.config.get("height")]
    labels = sorted({_crossover_label(r) for r in timed})
    colors = dict(zip(labels, palette(len(labels)), strict=True))
    for ax, c in zip(axes, channels, strict=True):
        rows = [r for r in timed if r.config.get("channels") == c]
        for label, series in sorted(_group(rows, _crossover_label).items()):
            # several configurations of one op at a size: the median line, the range shaded
            at: dict[int, list[float]] = {}
            for r in series:
                at.setdefault(r.config["height"] * r.config["width"], []).append(fwd_ms(r))
            px = sorted(at)
            medians = _median_by_pixels(series)
            med = [medians[p] for p in px]
            is_global = series[0].config.get("op") in global_ops
            ax.plot(px, med, marker="o", markersize=4, color=colors[label],
                    linestyle="--" if is_global else "-", label=label + (" (global)" if is_global else ""))
            if any(len(at[p]) > 1 for p in px):
                ax.fill_between(px, [min(at[p]) for p in px], [max(at[p]) for p in px],
                                color=colors[label], alpha=0.12)
        for crossing in (x for x in found if x.channels == c and x.pixels):
            ax.axvline(crossing.pixels, color="grey", linestyle=":", linewidth=1)
            edge = math.sqrt(crossing.pixels)
            ax.annotate(f"{crossing.global_label} = {crossing.local_label}\n~{edge:.0f}x{edge:.0f}",
                        (crossing.pixels, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                        color="dimgrey", ha="left", xytext=(3, 0), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        log_axis(ax.xaxis)
        log_axis(ax.yaxis)
        ax.set_xlabel("H x W (pixels)")
        ax.set_title(f"C={c}", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("forward latency (ms, median)")
    title = "Global vs local operators over H x W"
    fig.suptitle(f"{title}\n{facts}", fontsize=10)
    save_png(fig, path)
    text = "; ".join(c.text() for c in found)
    return Plot(path, title, "forward latency against the number of pixels, dashed: the global "
                             f"operator(s) {', '.join(global_ops)}; shaded: the range over other "
                             f"parameters. {text}")


# ---- achieved bandwidth against the ceiling -----------------------------------------------


def plot_bandwidth(records: Sequence[Record], path: Path, facts: str,
                   ceiling_gbs: float | None = None) -> Plot | None:
    """Achieved GB/s of each row against the measured bandwidth ceiling; drawn only when
    the rows carry roofline columns."""
    rows = [r for r in records if record_value(r, ACHIEVED_GBS_NAMES) and r.counted.get("fwd_MACs")]
    if not rows:
        return None
    ceilings = [c for c in (record_value(r, CEILING_GBS_NAMES) for r in rows) if c]
    ceiling = ceiling_gbs or (max(ceilings) if ceilings else None)
    groups = group_records(rows)
    fig = new_figure(7.5, 5.0)
    ax = fig.subplots()
    for color, ((op, impl), group) in zip(palette(len(groups)), groups.items(), strict=True):
        ax.scatter([r.counted["fwd_MACs"] for r in group],
                   [record_value(r, ACHIEVED_GBS_NAMES) for r in group],
                   s=14, color=color, label=f"{op}[{impl}]")
    if ceiling:
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1,
                   label=f"measured ceiling {ceiling:,.1f} GB/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_axis(ax.xaxis)
    log_axis(ax.yaxis)
    ax.set_xlabel("counted forward MACs")
    ax.set_ylabel("achieved bandwidth (GB/s, minimal bytes / latency)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    title = "Achieved bandwidth vs the measured ceiling"
    ax.set_title(f"{title}\n{facts}", fontsize=10)
    save_png(fig, path)
    return Plot(path, title, "each row's achieved GB/s; dashed: the bandwidth ceiling measured on "
                             "this device" if ceiling else "each row's achieved GB/s (no ceiling recorded)")


# ---- all that apply -----------------------------------------------------------------------


def sweep_plots(records: Sequence[Record], fits: Sequence[GroupFit], out_dir: Path, stem: str = "sweep",
                environment: Any = None, global_ops: Sequence[str] = GLOBAL_OPS) -> list[Plot]:
    """Every plot that applies to the records, written as `out_dir/<stem>-<name>.png`."""
    facts = title_facts(records, environment)
    made = [
        plot_vs_param(records, "k", out_dir / f"{stem}-vs-k.png", facts),
        plot_latency_vs_macs(records, fits, out_dir / f"{stem}-latency-vs-macs.png", facts),
        plot_crossover(records, out_dir / f"{stem}-crossover.png", facts, global_ops),
        plot_bandwidth(records, out_dir / f"{stem}-bandwidth.png", facts),
    ]
    return [p for p in made if p is not None]
