"""`lrprof compare`: two reports in, a regression verdict out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import EXIT_FAILED, app, out_dir
from lrprof.spec.errors import SpecError


@app.command(epilog=helptext.COMPARE)
def compare(
    old: Annotated[Path, typer.Argument(help="baseline report (.json or .csv)")],
    new: Annotated[Path, typer.Argument(help="current report (.json or .csv)")],
    max_slowdown: Annotated[str, typer.Option(help="latency growth allowed, e.g. 10%")] = "10%",
    max_memory_growth: Annotated[str, typer.Option(help="peak memory growth allowed")] = "5%",
    max_instruction_growth: Annotated[
        str, typer.Option(help="growth of instructions per call allowed (reports made with --instructions)")
    ] = "1%",
    normalize: Annotated[
        str, typer.Option(help="none, or baseline: gate each row's latency relative to the 3x3 conv "
                          "baseline row of the same run (cancels machine speed; for shared runners)")
    ] = "none",
    allow_model_change: Annotated[
        bool, typer.Option("--allow-model-change", help="do not fail when params or MACs change")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="different device or versions: error, not a warning")
    ] = False,
    require_all: Annotated[
        bool, typer.Option("--require-all", help="fail when a baseline row is missing from NEW")
    ] = False,
    format_: Annotated[str, typer.Option("--format", help="text, markdown or json")] = "text",
    out: Annotated[Path | None, typer.Option(help="also write DIR/compare.{md,csv,json}")] = None,
) -> None:
    """Compare two reports: exit 0 without regression, 1 with one, 2 on bad input."""
    from lrprof.gate import compare as cmp
    from lrprof.report import compare as render
    from lrprof.report import write_atomic

    if format_ not in render.RENDERERS:
        raise SpecError("format", f"one of {', '.join(render.RENDERERS)}", format_)
    if normalize not in cmp.NORMALIZE:
        raise SpecError("normalize", f"one of {', '.join(cmp.NORMALIZE)}", normalize)
    thresholds = cmp.Thresholds(
        max_slowdown=cmp.parse_percent(max_slowdown, "max-slowdown"),
        max_memory_growth=cmp.parse_percent(max_memory_growth, "max-memory-growth"),
        max_instruction_growth=cmp.parse_percent(max_instruction_growth, "max-instruction-growth"),
        normalize=normalize,
        allow_model_change=allow_model_change,
        require_all=require_all,
    )
    if out is not None:
        out_dir(out)
    result = cmp.compare(old, new, thresholds, strict=strict)
    typer.echo(render.RENDERERS[format_](result), nl=format_ == "text")
    if out is not None:
        write_atomic(out / "compare.md", render.render_markdown(result))
        write_atomic(out / "compare.json", render.render_json(result))
        write_atomic(out / "compare.csv", render.render_csv(result))
    if result.regression:
        raise typer.Exit(EXIT_FAILED)
