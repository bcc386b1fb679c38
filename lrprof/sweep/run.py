"""Sweeps: a grid of layer configurations measured row by row, each row appended to disk
the moment it is done, so a sweep can be killed, resumed, cut into shards and spread over
machines (a Slurm job array, a CI matrix), then merged into one report.

    config = SweepConfig(ops="lr", params={"k": "3:9:2", "m": "1,8"}, channels="64")
    plan = plan_sweep(config)                   # every valid row; invalid ones with reasons
    run = run_sweep(config, Path("runs"))       # measures, appends runs/rows.jsonl
    merged = merge_rows([run.path])             # lrprof.sweep.merge: the rows as one report's records

Each row is `profile_layers` of one configuration (built, counted, output-checked, timed,
memory measured), by default interleaved with its own 3x3 conv baseline of the same shape
(`MeasureOptions.baseline`): the ratio then comes from one schedule, so a machine that
slows down halfway through a long sweep moves both and not the ratio. A row's identity is
its record's `config` (`grid.config_key`): resume, shards and merge match on it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrprof.build.grid import Invalid, config_key, layer_grid, resolve_grid
from lrprof.build.ops.registry import spec_label
from lrprof.profile.progress import Progress
from lrprof.record.records import Record
from lrprof.spec.errors import InputError, SpecError
from lrprof.spec.layer import LayerSpec, resolve_device
from lrprof.spec.options import MeasureOptions
from lrprof.sweep.store import Contents, RowLine, RowWriter, read_rows
from lrprof.sweep.worker import RowRunner, WorkerSettings, import_modules

ROWS_FILE = "rows.jsonl"
# What must agree between sessions writing one file, and between the files of one merge.
SAME_SETUP = ("device", "device_name", "torch_version", "lrprof_version")


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep: the grid as typed (lists and ranges), how each row
    is measured, and how rows are isolated. Picklable: a Slurm array task gets a copy."""

    ops: str = "lr"
    params: Mapping[str, str] = field(default_factory=dict)
    impl: str | None = None
    channels: str = "64"
    size: str = "56"
    batch: str = "1"
    dtype: str = "float32"
    device: str = "auto"
    options: MeasureOptions = field(default_factory=MeasureOptions)
    threads: int | None = None  # torch CPU threads in the worker (None: torch's default)
    timeout_s: float | None = 600.0  # per row; None: no limit
    imports: tuple[str, ...] = ()  # modules registering a user's operators
    isolate: bool = True  # rows in a worker process (timeouts, crashes, broken contexts)
    argv: tuple[str, ...] = ()

    def settings(self) -> WorkerSettings:
        return WorkerSettings(self.options, self.threads, self.imports)


@dataclass
class Plan:
    """The grid, resolved: rows in a stable order, invalid combinations with reasons, and
    implementations that cannot run here."""

    specs: list[LayerSpec]
    invalid: list[Invalid]
    unavailable: dict[str, dict[str, str]]

    @property
    def keys(self) -> list[str]:
        return [config_key(s.config()) for s in self.specs]

    def fingerprint(self) -> str:
        """Identifies the grid (its rows, in order): files of one sweep share it."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]


def plan_sweep(config: SweepConfig) -> Plan:
    """Expand and resolve the grid. Bad input (an unknown op or parameter, a value that no
    row could take) raises SpecError; a combination that is invalid only together (stride
    2 with k 1) is listed in `invalid` and skipped."""
    import_modules(config.imports)
    device = resolve_device(config.device)
    grid = layer_grid(config.ops, dict(config.params), config.impl, config.channels, config.size,
                      config.batch, config.dtype, str(device))
    resolved = resolve_grid(grid)
    return Plan(resolved.specs, resolved.invalid, resolved.unavailable)


# ---- shards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Slice `index` of `count` (1-based, as typed: --shard 2/8)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        allowed = "I/N with integers 1 <= I <= N (e.g. 2/8)"
        parts = str(text).split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            raise SpecError("shard", allowed, text) from None
        if count < 1 or not 1 <= index <= count:
            raise SpecError("shard", allowed, text)
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def file_name(self) -> str:
        return f"rows-shard-{self.index:0{len(str(self.count))}d}-of-{self.count}.jsonl"


def estimated_cost(spec: LayerSpec) -> float:
    """A rough relative cost of measuring a row, for balancing shards: its exact MACs plus
    the bytes its implementation and activations hold (1 MAC weighed like 1 byte)."""
    from lrprof.build.ops.registry import get_op

    try:
        cost = get_op(spec.op).cost(spec)
    except Exception:  # a model that fails here fails in the row, where it is reported
        return 0.0
    moved = sum(cost.implementation_bytes.values()) + sum(cost.activation_bytes.values())
    return float(cost.macs + moved)


def shard_indices(specs: list[LayerSpec], shard: Shard) -> list[int]:
    """The grid positions of one shard, in grid order. Rows are ranked by estimated cost
    (identity breaking ties) and dealt to the shards in a snake (1..N, N..1, ...): every
    row is in exactly one shard, shard sizes differ by at most one, and each gets a like
    share of expensive and cheap rows. Depends on the grid alone, so every task computes
    the same split."""
    ranked = sorted(range(len(specs)),
                    key=lambda i: (-estimated_cost(specs[i]), config_key(specs[i].config())))
    mine = []
    for position, index in enumerate(ranked):
        turn, offset = divmod(position, shard.count)
        owner = offset if turn % 2 == 0 else shard.count - 1 - offset
        if owner == shard.index - 1:
            mine.append(index)
    return sorted(mine)


def rows_path(out: Path, shard: Shard | None) -> Path:
    return out / (shard.file_name() if shard else ROWS_FILE)


# ---- running ------------------------------------------------------------------------------


@dataclass
class SweepRun:
    """What one `run_sweep` did."""

    path: Path
    plan: Plan
    indices: list[int]  # this shard's grid positions
    measured: int = 0  # rows measured in this run
    skipped: int = 0  # rows already in the file (resume)
    failed: int = 0  # rows of this run that failed
    restarts: int = 0  # worker processes replaced
    foreign: int = 0  # rows in the file that are not in this grid slice
    wall_s: float = 0.0


def _setup_of(environment: Mapping[str, Any]) -> dict[str, str]:
    """The facts two runs must share to be one sweep (device type, model, versions)."""
    out = {}
    for key in SAME_SETUP:
        value = environment.get(key)
        out[key] = str(value).split(":")[0] if key == "device" and value else str(value)
    return out


def setup_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    sa, sb = _setup_of(a), _setup_of(b)
    return [f"{k}: {sa[k]} vs {sb[k]}" for k in SAME_SETUP if sa[k] != sb[k]]


def done_keys(contents: Contents, retry_failed: bool) -> set[str]:
    """Keys the file already holds a result for (with `retry_failed`, only the rows whose
    latest line succeeded)."""
    latest: dict[str, Record] = {}
    for line in contents.rows:
        latest[line.key] = line.record
    return {k for k, r in latest.items() if not (retry_failed and r.error)}


def invalid_entries(plan: Plan) -> list[dict[str, Any]]:
    return [{"name": _label(i.spec), "config": i.spec.config(), "reason": i.reason} for i in plan.invalid]


def _label(spec: LayerSpec) -> str:
    """An unresolved spec's name: the values given, in the schema's order."""
    from lrprof.build.ops.registry import get_op

    given = dict(spec.params)
    try:
        order = [(p.label, p.name) for p in get_op(spec.op).schema.params if p.name in given]
    except Exception:  # an unknown operator: its parameters as given
        order = [(name, name) for name in given]
    values = " ".join(f"{label}={given[name]}" for label, name in order)
    impl = f"[{spec.impl}]" if spec.impl else ""
    return f"{spec.op}{impl} {values} C={spec.channels} {spec.height}x{spec.width} B={spec.batch}"


def _same_grid(path: Path, contents: Contents, plan: Plan) -> None:
    """--resume continues the grid the file was made for (or one that holds it: more sizes,
    more values); a file of another grid would be reported as this grid only, its own rows
    dropped, so it is refused."""
    keys = set(plan.keys)
    theirs = {config_key(c): c for h in contents.headers for c in (h.get("grid") or {}).get("configs", [])}
    theirs.update({line.key: line.record.config for line in contents.rows})
    outside = [k for k in theirs if k not in keys]
    if outside:
        example = next((line.record.name for line in contents.rows if line.key in outside), outside[0])
        raise InputError(f"{path} was made for another grid: {len(outside)} of its rows are not in this "
                         f"grid (e.g. {example}); --resume continues the same grid (or a larger one): "
                         "give the grid that made it, or choose another --out")


def run_sweep(config: SweepConfig, out: Path, shard: Shard | None = None, resume: bool = False,
              retry_failed: bool = False, allow_mixed: bool = False, quiet: bool = False,
              stream: Any = None, plan: Plan | None = None,
              environment: Any = None) -> SweepRun:
    """Measure this shard's rows (all rows without a shard) that the file does not hold
    yet, appending each to `out/rows*.jsonl` as soon as it is done. Without `resume` a file
    that already holds rows is refused (nothing is overwritten)."""
    import time

    from lrprof.measure.device import collect

    plan = plan or plan_sweep(config)
    shard_ = shard or Shard(1, 1)
    indices = shard_indices(plan.specs, shard_)
    path = rows_path(out, shard)
    run = SweepRun(path, plan, indices)
    done: set[str] = set()
    environment = environment or collect(resolve_device(config.device))
    if path.exists() and path.stat().st_size > 0:
        contents = read_rows(path)
        if contents.rows and not resume:
            raise InputError(f"{path} already holds {len(contents.rows)} measured rows: pass --resume "
                             "to continue that sweep, or choose another --out")
        for header in contents.headers:
            diffs = setup_differences(header.get("environment") or {}, environment.to_dict())
            if diffs and not allow_mixed:
                raise InputError(f"{path} was measured on another setup ({'; '.join(diffs)}): "
                                 "pass --allow-mixed to add rows to it anyway")
        _same_grid(path, contents, plan)
        done = done_keys(contents, retry_failed)
    keys = plan.keys
    mine = {keys[i] for i in indices}
    run.skipped = len(mine & done)
    run.foreign = len(done - set(keys))
    todo = [i for i in indices if keys[i] not in done]
    started = time.perf_counter()
    with RowWriter(path) as writer:
        writer.header(
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            argv=list(config.argv),
            environment=environment.to_dict(),
            grid={"size": len(plan.specs), "fingerprint": plan.fingerprint(),
                  "configs": [s.config() for s in plan.specs], "invalid": invalid_entries(plan),
                  "unavailable": plan.unavailable},
            shard={"index": shard_.index, "count": shard_.count, "rows": len(indices)},
            options=_options_dict(config),
            resumed=bool(done),
        )
        title = f"lrprof sweep{f' shard {shard}' if shard else ''}"
        work = _eta_weights(plan.specs, todo)
        with Progress(len(indices), "rows", stream=stream, quiet=quiet, done=run.skipped,
                      title=title, total_work=sum(work.values())) as progress:
            runner = RowRunner(config.settings(), isolate=config.isolate, on_restart=progress.message)
            try:
                for index in todo:
                    spec = plan.specs[index]
                    progress.start(spec_label(spec))
                    outcome = runner.run(spec, config.timeout_s)
                    writer.row(RowLine(keys[index], outcome.record, index, round(outcome.wall_s, 3),
                                       outcome.worker))
                    run.measured += 1
                    ok = outcome.record.error is None
                    run.failed += 0 if ok else 1
                    progress.advance(ok, spec_label(spec), _row_note(outcome), work[index])
            except BaseException:  # an interrupt (or a bug): the worker goes at once
                runner.close(kill=True)
                raise
            finally:
                run.restarts = runner.restarts
                runner.close()
    run.wall_s = time.perf_counter() - started
    return run


def _eta_weights(specs: list[LayerSpec], indices: list[int]) -> dict[int, float]:
    """Each row's share of the work left, for the ETA: its estimated cost plus a fixed
    overhead as large as the median row's (building, counting, checking and the timing
    minimum cost every row about the same). On a 2-core CPU sweep of the unfold LR layer
    this tracked each row's seconds with a correlation of 0.85."""
    costs = {i: estimated_cost(specs[i]) for i in indices}
    if not costs:
        return {}
    ordered = sorted(costs.values())
    overhead = ordered[len(ordered) // 2] or 1.0
    return {i: c + overhead for i, c in costs.items()}


def _ms_text(ms: float) -> str:
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


def _row_note(outcome: Any) -> str:
    record = outcome.record
    if record.error:
        return f"{outcome.failure}: {record.error}"
    fwd = record.latency.get("fwd")
    parts = [_ms_text(fwd.median_ms) if fwd else "", f"{outcome.wall_s:.1f} s"]
    verdict = record.checks.get("verdict")
    if record.checks.get("failed"):
        parts.append(f"check failed: {verdict}")
    return ", ".join(p for p in parts if p)


def _options_dict(config: SweepConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config.options)
    out.update({"threads": config.threads, "timeout_s": config.timeout_s, "imports": list(config.imports),
                "isolate": config.isolate})
    return out


# ---- past one machine ---------------------------------------------------------------------


def run_shard_job(config: SweepConfig, out: str, index: int, count: int) -> dict[str, Any]:
    """One task of a job array: the shard's rows, resuming whatever an earlier attempt of
    the same task wrote (a requeued or preempted job loses only its current row). Progress
    goes to the task's log as plain lines."""
    run = run_sweep(config, Path(out), Shard(index, count), resume=True)
    return {"path": str(run.path), "rows": len(run.indices), "measured": run.measured,
            "skipped": run.skipped, "failed": run.failed, "restarts": run.restarts}


def submit_array(config: SweepConfig, out: Path, count: int, executor: Any) -> list[Any]:
    """Submit the `count` shards as one job array with a submitit executor (Slurm, or its
    local executor on this machine); returns the jobs."""
    indices = list(range(1, count + 1))
    return executor.map_array(run_shard_job, [config] * count, [str(out.resolve())] * count,
                              indices, [count] * count)


def slurm_executor(folder: Path, cluster: str = "slurm", partition: str | None = None,
                   gpus_per_task: int | None = None, cpus_per_task: int | None = None,
                   array_parallelism: int | None = None, time_min: int = 60,
                   mem_gb: float | None = None, name: str = "lrprof-sweep",
                   extra: Callable[[Any], None] | None = None) -> Any:
    """A submitit executor for the array (`cluster` "slurm", or "local" to run the same
    array on this machine). Needs the optional extra: pip install 'lrprof[slurm]'."""
    try:
        import submitit
    except ImportError:
        raise InputError("--slurm needs submitit: pip install 'lrprof[slurm]'") from None
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except Exception as exc:  # no sbatch on this machine, an unknown cluster name
        raise InputError(f"--slurm: cannot use the {cluster} cluster here ({exc})") from None
    params: dict[str, Any] = {"timeout_min": time_min, "name": name, "nodes": 1, "tasks_per_node": 1}
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if mem_gb:
        params["mem_gb"] = mem_gb
    if cluster == "slurm":
        if partition:
            params["slurm_partition"] = partition
        if gpus_per_task:
            params["slurm_gpus_per_task"] = gpus_per_task
        if array_parallelism:
            params["slurm_array_parallelism"] = array_parallelism
    elif gpus_per_task:
        params["gpus_per_node"] = gpus_per_task
    executor.update_parameters(**params)
    if extra is not None:
        extra(executor)
    return executor
