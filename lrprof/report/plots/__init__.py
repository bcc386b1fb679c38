"""Pictures of records, as PNG files beside the markdown that links them. Each plot reads
without the table: units on the axes, a legend, a title naming the device, dtype and
threads. Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, nothing shown on a screen). One module per kind of report: `sweep`, `layer`, `net`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrprof.report.plots.common import DPI, Plot, title_facts


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


from lrprof.report.plots.sweep import (  # noqa: E402  (the sweep's plots)
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
