"""`lrprof compare`: two reports in, a regression verdict out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import EXIT_FAILED, EXIT_INCONCLUSIVE, app, out_dir
from lrprof.spec.errors import SpecError

ON_INCONCLUSIVE = ("fail", "pass", "rerun")


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
    on_inconclusive: Annotated[
        str, typer.Option(help="a row past the threshold that cannot be judged (noisy, unreliable "
                          "timing): fail (exit 3), pass (exit 0, said on stderr), or rerun (re-time "
                          "those rows here, interleaved in fresh processes, then decide)")
    ] = "fail",
    rerun_budget: Annotated[
        str, typer.Option(help="wall time a rerun may take, e.g. 120s")
    ] = "120s",
    format_: Annotated[str, typer.Option("--format", help="text, markdown or json")] = "text",
    out: Annotated[Path | None, typer.Option(help="also write DIR/compare.{md,csv,json}")] = None,
) -> None:
    """Compare two reports: exit 0 without regression, 1 with one, 2 on bad input, 3 when a
    row past the threshold cannot be judged (inconclusive)."""
    from lrprof.gate import compare as cmp
    from lrprof.report import compare as render
    from lrprof.report import write_atomic

    if format_ not in render.RENDERERS:
        raise SpecError("format", f"one of {', '.join(render.RENDERERS)}", format_)
    if on_inconclusive not in ON_INCONCLUSIVE:
        raise SpecError("on-inconclusive", f"one of {', '.join(ON_INCONCLUSIVE)}", on_inconclusive)
    budget_s = _seconds(rerun_budget)
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
    result.on_inconclusive = on_inconclusive
    if on_inconclusive == "rerun" and result.inconclusive and not result.regression:
        _rerun(result, budget_s)
    typer.echo(render.RENDERERS[format_](result), nl=format_ == "text")
    if out is not None:
        write_atomic(out / "compare.md", render.render_markdown(result))
        write_atomic(out / "compare.json", render.render_json(result))
        write_atomic(out / "compare.csv", render.render_csv(result))
    if result.regression:
        raise typer.Exit(EXIT_FAILED)
    if result.inconclusive:
        if on_inconclusive == "pass":
            typer.echo(f"lrprof: warning: {len(result.inconclusive)} inconclusive row(s) passed "
                       "(--on-inconclusive pass)", err=True)
            return
        raise typer.Exit(EXIT_INCONCLUSIVE)


def _seconds(text: str) -> float:
    raw = str(text).strip().lower().removesuffix("s").strip()
    try:
        value = float(raw)
    except ValueError:
        raise SpecError("rerun-budget", "seconds, such as 120s", text) from None
    if not value > 0 or value == float("inf"):
        raise SpecError("rerun-budget", "a finite number of seconds > 0", text)
    return value


def _rerun(result, budget_s: float) -> None:
    """Re-time the inconclusive layer rows (and their baselines) here, then judge them again."""
    from lrprof.gate import rerun
    from lrprof.measure.timing import TimingOptions
    from lrprof.profile.replicate import retime

    items, skipped = rerun.plan(result)
    if not items:
        result.rerun = {"processes": 0, "seconds": 0.0, "budget_s": budget_s, "rows": [],
                        "not_rerun": skipped}
        return
    records = rerun.rows_to_time(items)
    stats = [s for r in records for s in r.latency.values()]
    threads = next((s.threads for s in stats if s.threads), 1)
    # as long per process as the report timed each row (at most the default half second)
    timed_s = min((s.median_ms * s.runs * s.calls_per_run / 1e3 / s.processes for s in stats),
                  default=0.5)
    timing = TimingOptions(min_runs=10, min_time_s=min(max(timed_s, 0.02), 0.5))
    names = [r.name for r in records]

    def measured(per_row):
        return dict(zip(names, per_row, strict=True))

    device = str(records[0].config.get("device", "cpu"))
    done = retime([r.config for r in records], device, threads,
                  any("fwd_bwd" in r.latency for r in records), timing, budget_s,
                  lambda per_row: rerun.settled(items, measured(per_row), result.thresholds,
                                                len(next(iter(per_row[0].values()), []))))
    facts = {"processes": done["processes"], "seconds": done["seconds"], "budget_s": budget_s,
             "threads": threads, "min_time_s": timing.min_time_s, "timed": names,
             "failed": done["failed"], "oversubscribed": done["oversubscribed"]}
    rerun.apply(result, items, skipped, measured(done["per_row"]), facts)
