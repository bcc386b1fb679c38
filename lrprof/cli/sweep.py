"""`lrprof sweep`: a grid of layer configurations (lists and ranges of every operator's
parameters), measured row by row into a durable rows file, then fitted, plotted and
reported; resumable, shardable, and submittable as a Slurm job array."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import (
    EXIT_FAILED,
    EXIT_OK,
    app,
    argv,
    on_interrupt,
    out_dir,
    say,
    set_threads,
    write_sweep_report,
)
from lrprof.cli.options import LISTS, schema_options, shared
from lrprof.spec.errors import InputError, SpecError

HELP = """Measure a grid of layer configurations and check how cost grows against the model.

Every parameter takes comma lists and ranges start:stop[:step] (stop included). Rows are
appended to OUT/rows.jsonl as they finish; the report follows.
"""

COMMON: list[tuple] = shared(
    "op", "impl", "channels", "size", "batch", "device", "dtype", "baseline", "threads", "min_runs",
    "min_time",
    channels=f"channels C ({LISTS})", size=f"input size N or HxW ({LISTS})", batch=f"batch size B ({LISTS})",
    baseline="conv3x3 (each row timed interleaved with a dense 3x3 conv of its own shape) or none",
    threads="CPU threads per row (default: torch's; on Slurm the task's)",
    min_runs=(5, "fewest timed runs per row and phase (>= 2)"),
    min_time=(0.1, "CPU: seconds of timed calls per row and phase, at least"),
) + [
    ("warmup", int, 1, "warm-up calls per row and phase before timing (>= 0)"),
    ("memory_runs", int, 1, "peak-memory runs per row and phase (>= 1)"),
    ("timeout", float, 600.0, "seconds a row may take before its worker is stopped and the row "
                              "recorded as a timeout (0: no limit)"),
    ("out", Path | None, None, "directory for the rows file(s), the report and the plots (default: "
                               "reports/sweep-<grid id>, one directory per grid)"),
    ("shard", str | None, None, "I/N: measure only slice I of N (1-based; deterministic, balanced)"),
    ("imports", str | None, None, "module(s) to import first, comma-separated (a user's own operators)",
     "--import"),
    ("param", list[str] | None, None, "NAME=VALUES: an operator parameter by name, for operators that "
                                      "--import registers (repeatable)"),
    ("shards", int | None, None, "--slurm: array tasks (default: --array-parallelism, at most the rows)"),
    ("partition", str | None, None, "--slurm: partition"),
    ("gpus_per_task", int | None, None, "--slurm: GPUs per array task"),
    ("cpus_per_task", int | None, None, "--slurm: CPUs per array task"),
    ("array_parallelism", int, 16, "--slurm: array tasks running at once"),
    ("time_limit", int, 120, "--slurm: minutes per array task"),
    ("mem_gb", float | None, None, "--slurm: memory per array task, GB"),
    ("slurm_cluster", str, "slurm", "--slurm: slurm, or local (the same array run on this machine by "
                                    "submitit's local executor)"),
]
FLAGS: list[tuple] = [
    ("backward", "--backward", False, "also count and time forward+backward"),
    ("stock", "--stock/--no-stock", False, "also run stock fvcore and FlopCounterMode on every row (slow)"),
    ("check_output", "--check-output/--no-check-output", True,
     "check each row's output against the operator's float64 reference"),
    ("resume", "--resume", False, "continue: skip the rows OUT's rows file already holds"),
    ("retry_failed", "--retry-failed", False, "with --resume: measure rows that failed again"),
    ("allow_mixed", "--allow-mixed", False, "resume a rows file measured on another device or versions"),
    ("dry_run", "--dry-run", False, "print the grid and its size, measure nothing"),
    ("plots", "--plots/--no-plots", True, "write PNG plots beside the markdown"),
    ("in_process", "--in-process", False,
     "measure in this process: no per-row timeout, a crash ends the sweep (for debugging)"),
    ("slurm", "--slurm", False, "submit the shards as one Slurm job array (pip install 'lrprof[slurm]')"),
    ("wait", "--wait", False, "--slurm: wait for the array, then merge and write the report"),
    ("quiet", "--quiet", False, "no progress and no table: print only the paths written"),
]


def _timeout(value: float) -> float | None:
    if not math.isfinite(value) or value < 0:
        raise SpecError("timeout", "a finite number of seconds >= 0 (0: no limit)", value)
    return value or None


def build_config(common: dict[str, Any], flags: dict[str, Any], op_params: dict[str, Any]):
    from lrprof.measure.timing import TimingOptions
    from lrprof.spec.options import MeasureOptions
    from lrprof.spec.params import split_list
    from lrprof.sweep.run import SweepConfig

    if common["baseline"] not in ("conv3x3", "none"):
        raise SpecError("baseline", "conv3x3 or none", common["baseline"])
    if isinstance(common["warmup"], bool) or common["warmup"] < 0:
        raise SpecError("warmup", "must be an integer >= 0", common["warmup"])
    timing = TimingOptions(min_runs=common["min_runs"], min_time_s=common["min_time"],
                           warmup=common["warmup"], warmup_s=0.0)
    measure = MeasureOptions(backward=flags["backward"], timing=timing, memory_runs=common["memory_runs"],
                             stock_counters=flags["stock"], check_output=flags["check_output"],
                             baseline=common["baseline"] != "none")
    set_threads(common["threads"])
    threads = common["threads"]
    if threads is None and not flags["slurm"]:
        import torch

        threads = torch.get_num_threads()  # the worker runs on what this process would
    imports = tuple(split_list(common["imports"], "import")) if common["imports"] else ()
    return SweepConfig(
        ops=common["op"], params={k: str(v) for k, v in op_params.items()}, impl=common["impl"],
        channels=common["channels"], size=common["size"], batch=common["batch"], dtype=common["dtype"],
        device=common["device"], options=measure, threads=threads, timeout_s=_timeout(common["timeout"]),
        imports=imports, isolate=not flags["in_process"], argv=tuple(argv()),
    )


def dry_run_text(plan, shard) -> str:
    from lrprof.build.ops.registry import spec_label
    from lrprof.sweep.run import shard_indices

    by_op: dict[str, int] = {}
    for spec in plan.specs:
        by_op[spec.op] = by_op.get(spec.op, 0) + 1
    ops = ", ".join(f"{op}: {n}" for op, n in by_op.items())
    lines = [f"grid: {len(plan.specs)} rows ({ops or 'none'}); "
             f"{len(plan.invalid)} invalid combination(s) skipped"]
    indices = list(range(len(plan.specs)))
    if shard is not None:
        indices = shard_indices(plan.specs, shard)
        lines.append(f"shard {shard}: {len(indices)} rows")
    width = len(str(len(plan.specs)))
    lines += [f"  {i + 1:>{width}}  {spec_label(plan.specs[i])}" for i in indices]
    if plan.invalid:
        lines.append("invalid combinations (skipped):")
        lines += [f"  {entry['name']}: {entry['reason']}" for entry in _invalid(plan)]
    for op, reasons in plan.unavailable.items():
        lines += [f"not measured here: {op}[{name}]: {why}" for name, why in reasons.items()]
    return "\n".join(lines)


def _invalid(plan) -> list[dict[str, Any]]:
    from lrprof.sweep.run import invalid_entries

    return invalid_entries(plan)


def _submit(config, plan, common: dict[str, Any], flags: dict[str, Any]) -> int:
    from lrprof.sweep.merge import merge_rows
    from lrprof.sweep.run import slurm_executor, submit_array

    out = out_dir(common["out"])
    count = common["shards"] or min(common["array_parallelism"], len(plan.specs))
    if count < 1 or count > len(plan.specs):
        raise SpecError("shards", f"an integer in 1..{len(plan.specs)} (the grid's rows)", count)
    if common["slurm_cluster"] not in ("slurm", "local"):
        raise SpecError("slurm-cluster", "slurm or local", common["slurm_cluster"])
    executor = slurm_executor(out / "slurm", cluster=common["slurm_cluster"], partition=common["partition"],
                              gpus_per_task=common["gpus_per_task"], cpus_per_task=common["cpus_per_task"],
                              array_parallelism=common["array_parallelism"], time_min=common["time_limit"],
                              mem_gb=common["mem_gb"])
    jobs = submit_array(config, out, count, executor)
    typer.echo(f"submitted {count} array task(s) ({common['slurm_cluster']}): job "
               f"{str(jobs[0].job_id).split('_')[0]}; rows go to {out}/rows-shard-*.jsonl; logs in "
               f"{out / 'slurm'}")
    if not flags["wait"]:
        typer.echo(f"when they are done: lrprof merge {out} --out {out}")
        return EXIT_OK
    failed = 0
    for index, job in enumerate(jobs, 1):
        try:
            summary = job.result()
        except Exception as exc:  # the task itself failed (not one row): its log says why
            typer.echo(f"lrprof: array task {index}/{count} failed: {str(exc).strip().splitlines()[-1:]}",
                       err=True)
            failed += 1
            continue
        if not flags["quiet"]:
            typer.echo(f"task {index}/{count}: {summary['measured']} measured, {summary['skipped']} "
                       f"already there, {summary['failed']} failed")
    merged = merge_rows([out])
    code = write_sweep_report(merged, out, flags["quiet"], flags["plots"])
    return EXIT_FAILED if failed else code


def _plan(config, slurm: bool):
    """The grid. With --slurm the rows run elsewhere: a device this machine lacks (a login
    node without a GPU) is checked by the tasks, and the grid is checked here on the CPU."""
    import dataclasses

    from lrprof.sweep.run import plan_sweep

    try:
        return plan_sweep(config)
    except SpecError as exc:
        if not slurm or exc.param != "device":
            raise
        return plan_sweep(dataclasses.replace(config, device="cpu"))


def sweep(**options: Any) -> None:
    from lrprof.sweep.merge import merge_rows
    from lrprof.sweep.run import Shard, run_sweep, shard_indices

    common = {name: options.pop(name) for name, *_ in COMMON}
    flags = {name: options.pop(name) for name, *_ in FLAGS}
    op_params = {name: value for name, value in options.items() if value is not None}
    for item in common["param"] or []:
        name, sep, values = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not name or not values.strip():
            raise SpecError("param", "NAME=VALUES, e.g. --param k=3,5", item)
        if name in op_params:
            raise SpecError("param", f"{name} is given twice (--{name.replace('_', '-')} and --param)", item)
        op_params[name] = values.strip()
    config = build_config(common, flags, op_params)
    shard = Shard.parse(common["shard"]) if common["shard"] else None
    if flags["retry_failed"] and not flags["resume"]:
        raise SpecError("retry-failed", "only with --resume", True)
    if flags["slurm"] and shard is not None:
        raise SpecError("shard", "not with --slurm (the array runs every shard; see --shards)", str(shard))
    plan = _plan(config, flags["slurm"])
    if flags["dry_run"]:
        typer.echo(dry_run_text(plan, shard))
        raise typer.Exit(EXIT_OK)
    if not plan.specs:
        raise InputError("no valid row in the grid: " + "; ".join(e["reason"] for e in _invalid(plan)[:3]))
    common["out"] = common["out"] or Path("reports") / f"sweep-{plan.fingerprint()[:8]}"
    if flags["slurm"]:
        raise typer.Exit(_submit(config, plan, common, flags))
    out = out_dir(common["out"])
    if not flags["quiet"]:
        say(f"lrprof: {len(plan.specs)} rows{f' (shard {shard})' if shard else ''}, "
            f"{len(plan.invalid)} invalid combination(s) skipped; rows go to {out}")
    on_interrupt(_keeper(out, shard, len(shard_indices(plan.specs, shard)) if shard else len(plan.specs)))
    run = run_sweep(config, out, shard, resume=flags["resume"], retry_failed=flags["retry_failed"],
                    allow_mixed=flags["allow_mixed"], quiet=flags["quiet"], plan=plan)
    if shard is not None:
        typer.echo(f"shard {shard}: {run.measured} rows measured, {run.skipped} already there, "
                   f"{run.failed} failed; wrote {run.path}")
        typer.echo(f"when every shard is done: lrprof merge {out} --out {out}")
        raise typer.Exit(EXIT_FAILED if run.failed else EXIT_OK)
    merged = merge_rows([run.path], allow_mixed=flags["allow_mixed"])
    wall = sum(line_wall for line_wall in _row_walls(run.path))
    raise typer.Exit(write_sweep_report(merged, out, flags["quiet"], flags["plots"], wall))


def _keeper(out: Path, shard, total: int):
    """On Ctrl-C or SIGTERM: the rows measured so far are already in the rows file (each
    fsynced as it finished); a partial sweep report of them is written beside it (a shard
    keeps its rows file only: `lrprof merge` reports the shards)."""

    def keep(why: str) -> tuple[int, int, Path]:
        from lrprof.report import report_paths
        from lrprof.report.run import finish_sweep
        from lrprof.sweep.fits import fit_records
        from lrprof.sweep.merge import merge_rows
        from lrprof.sweep.run import rows_path
        from lrprof.sweep.store import read_rows

        path = rows_path(out, shard)
        if not path.is_file() or read_rows(path).header is None:
            return 0, total, out
        merged = merge_rows([path], allow_mixed=True)
        if shard is not None:
            return len(read_rows(path).rows), total, path
        partial = {"interrupted_by": why, "rows_kept": len(merged.records), "rows_total": merged.grid_size,
                   "not_measured": merged.missing}
        finish_sweep(merged, fit_records(merged.records), report_paths("sweep", out), False, argv(),
                     sum(_row_walls(path)), partial)
        return len(merged.records), merged.grid_size, out

    return keep


def _row_walls(path: Path) -> list[float]:
    from lrprof.sweep.store import read_rows

    return [line.wall_s or 0.0 for line in read_rows(path).rows]


schema_options(sweep, COMMON, FLAGS)
app.command("sweep", help=HELP, epilog=helptext.SWEEP)(sweep)
