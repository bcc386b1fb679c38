"""The report of the command that is running: rewritten (marked unfinished) as steps finish,
written partial on an interrupt, and written whole at the end with its plots. A killed run
keeps what it measured; the command line only hands this the profile's callbacks.

    running = RunningReport("layer", paths, render, partial_info)
    records = profile_layers(specs, options, on_start=running.start, on_update=running.update)
    report, written = running.finish(records, plots=True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lrprof.measure.device import Environment
from lrprof.record.records import Report
from lrprof.report import write_report
from lrprof.spec.errors import describe

Render = Callable[[list[Any], Environment | None], Report]
PartialInfo = Callable[[str | None, list[Any]], dict[str, Any]]


class RunningReport:
    """`render(items, environment)` makes the report of the items measured so far (records,
    net profiles); `partial_info(signal or None, items)` says what an incomplete one holds."""

    def __init__(self, command: str, paths: dict[str, Path], render: Render, partial_info: PartialInfo,
                 every_s: float = 0.0) -> None:
        self.command, self.paths = command, paths
        self.render, self.partial_info = render, partial_info
        self.every_s = every_s  # the unfinished report is rewritten at most this often
        self.environment: Environment | None = None
        self.items: list[Any] = []
        self._written = 0.0

    def start(self, environment: Environment) -> None:
        self.environment = environment

    def _partial(self, why: str | None) -> Report:
        report = self.render(self.items, self.environment)
        report.partial = self.partial_info(why, self.items)
        return report

    def update(self, items: Sequence[Any]) -> None:
        """After each step: the unfinished report, so a killed run keeps what it measured."""
        self.items[:] = items
        if time.monotonic() - self._written >= self.every_s:
            write_report(self._partial(None), self.paths)
            self._written = time.monotonic()

    def keep(self, signal_name: str) -> tuple[int, int, Path]:
        """On an interrupt: the partial report; (rows kept, rows planned, directory)."""
        report = self._partial(signal_name)
        write_report(report, self.paths)
        return report.partial["rows_kept"], report.partial["rows_total"], self.paths["json"].parent

    def finish(self, items: Sequence[Any], plots: bool = True) -> tuple[Report, list[Path]]:
        """The whole report, its plots beside the markdown; the report and the paths written."""
        return finish_report(self.render(list(items), self.environment), self.paths, plots)


def finish_report(report: Report, paths: dict[str, Path], plots: bool = True) -> tuple[Report, list[Path]]:
    """Draw the plots that apply beside the markdown, then write every format; a picture
    that cannot be drawn costs no figure (the report says why)."""
    if plots:
        try:
            from lrprof.report.plots import report_figures

            report.figures = report_figures(report, paths["md"])
        except Exception as exc:
            report.notes.append(f"plots not drawn: {describe(exc)}")
    written = write_report(report, paths)
    written += [paths["md"].parent / f["file"] for f in report.figures]
    return report, written


def finish_sweep(merged: Any, fits: Any, paths: dict[str, Path], plots: bool, argv: list[str],
                 wall_s: float | None = None,
                 partial: dict[str, Any] | None = None) -> tuple[Report, list[Path]]:
    """A sweep's report from its merged rows and fits: its plots (a missing matplotlib is a
    note, not a failure) beside the markdown, then every format. `partial`: what an
    interrupted sweep kept (see `partial_text`)."""
    from lrprof.report.sweep import sweep_report

    md = paths["md"]
    made: list[Any] = []
    notes: list[str] = []
    if plots and merged.records:
        try:
            from lrprof.report.plots import sweep_plots
        except ImportError as exc:
            notes.append(f"plots skipped: {exc} (pip install matplotlib)")
        else:
            made = sweep_plots(merged.records, fits, md.parent, md.name[: -len(".md")], merged.environment)
    report = sweep_report(merged, fits, made, argv, plot_dir=md.parent, wall_s=wall_s)
    report.notes += notes
    report.partial = partial
    report, written = finish_report(report, paths, plots)
    return report, written + [p.path for p in made]
