"""Pictures of records, as PNG files beside the markdown that links them. Each plot reads
without the table: units on the axes, a legend, a title naming the device, dtype and
threads. Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, nothing shown on a screen). One module per kind of report: `sweep`, `layer`, `net`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrprof.record.records import Record

DPI = 110


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str  # what it shows, in one or two sentences (the markdown's text beside it)


def title_facts(records: Sequence[Record], environment: Any = None) -> str:
    """'AMD EPYC 7B13 (cpu), float32, 2 threads' from the environment and the rows."""
    parts = []
    if environment is not None:
        parts.append(f"{environment.device_name} ({environment.device})")
    dtypes = sorted({str(r.config.get("dtype")) for r in records if r.config.get("dtype")})
    if dtypes:
        parts.append(", ".join(dtypes))
    threads = sorted({s.threads for r in records for s in r.latency.values() if s.threads})
    if threads:
        parts.append(f"{', '.join(map(str, threads))} thread{'s' if threads != [1] else ''}")
    return ", ".join(parts)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _fwd_ms(record: Record) -> float | None:
    stats = record.latency.get("fwd")
    return stats.median_ms if stats else None


def _si(value: float, _position: Any = None) -> str:
    """Tick labels: 2k, 40M, 1.5G; plain below 1000."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _log_axis(axis: Any, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log scale with readable labels (1, 2, 5 per decade; 2k, 40M) instead of 6x10^1;
    `subs=(1.0,)` labels decades only (a narrow panel)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_si))
    axis.set_minor_formatter(NullFormatter())




def _fwd_ms(record: Record) -> float | None:
    stats = record.latency.get("fwd")
    return stats.median_ms if stats else None


def report_figures(report: Any, markdown: Path) -> list[dict[str, str]]:
    """Draw the pictures that apply to a layer or net report as `<markdown stem>-<name>.png`
    beside it; returns what the markdown links (files relative to it)."""
    from lrprof.report.plots.layer import layer_plots
    from lrprof.report.plots.net import net_plots

    draw = {"layer": layer_plots, "net": net_plots}.get(report.command)
    if draw is None:
        return []
    base = markdown.with_suffix("")
    plots = draw(report.records, base, title_facts(report.records, report.environment))
    return [{"file": p.path.name, "title": p.title, "caption": p.caption} for p in plots]


from lrprof.report.plots.sweep import (  # noqa: E402  (the sweep's plots, as this package offered them)
    GLOBAL_OPS,
    crossovers,
    plot_bandwidth,
    plot_crossover,
    plot_latency_vs_macs,
    plot_vs_param,
    sweep_plots,
)

__all__ = ["DPI", "GLOBAL_OPS", "Plot", "crossovers", "plot_bandwidth", "plot_crossover",
           "plot_latency_vs_macs", "plot_vs_param", "report_figures", "sweep_plots", "title_facts"]
