"""`lrprof merge`: the rows files of a sweep's shards (or of one resumed run) in, one
sweep report out, with the rows that are missing or were measured twice named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import app, out_dir, say, write_sweep_report


@app.command(epilog=helptext.MERGE)
def merge(
    paths: Annotated[list[Path], typer.Argument(help="rows files (*.jsonl), or directories holding them")],
    out: Annotated[Path | None, typer.Option(help="write DIR/sweep.{md,csv,json} and the plots "
                                                  "(default: reports/sweep-<time>.*)")] = None,
    allow_mixed: Annotated[bool, typer.Option(
        "--allow-mixed", help="merge files from different devices, versions or grids (warned)")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write PNG plots")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="print only the paths written")] = False,
) -> None:
    """Merge sweep shards into one report. Exit 0 when every grid row is there and none
    failed, 1 when rows are missing or failed, 2 on bad input.

    Example: lrprof merge runs/ --out reports/sweep
    """
    from lrprof.sweep.merge import merge_rows

    merged = merge_rows(paths, allow_mixed=allow_mixed)
    out_dir(out)
    if not quiet:
        typer.echo(f"merged {len(merged.sources)} file(s): {len(merged.records)} of {merged.grid_size} "
                   f"grid rows, {len(merged.missing)} missing, {len(merged.duplicates)} measured twice")
    for warning in merged.warnings:
        say(f"lrprof: warning: {warning}")
    raise typer.Exit(write_sweep_report(merged, out, quiet, plots))
