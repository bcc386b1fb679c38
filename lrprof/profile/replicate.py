"""`--repeat N`: time the rows of a layer profile in N fresh processes and pool their runs.

One process's runs say nothing about the next process: fresh processes of identical code
drift apart by 0.88x-1.17x on the 2-core machines here, while each run's quartiles are
1-3 % wide (address layout, allocator state, what else the machine did). So each of the N
processes builds every row from its spec (same seed, same weights), times all rows in one
interleaved schedule (the first row rotating from process to process) and hands back its
runs; the parent pools them, keeping which runs came from which process, so the report can
give the spread between processes beside the spread within one, and `lrprof compare` can
resample processes, not only runs. Counting, the output check and memory stay in the
parent: they do not drift.

The worker is this module: `python -m lrprof.profile.replicate REQUEST.json RESULT.json`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lrprof.measure import noise
from lrprof.measure.timing import Stats, TimingOptions
from lrprof.profile.child import child_main, run_child
from lrprof.record.records import Record
from lrprof.spec.errors import describe
from lrprof.spec.layer import LayerSpec


def build_row(spec: LayerSpec, seed: int, device: torch.device) -> tuple[nn.Module, tuple[Any, ...]]:
    """The module and inputs of a resolved spec: the same weights and input for a given
    seed in every process (the profile, its timing replicates, its instruction counts)."""
    from lrprof.build.ops.registry import get_op

    op = get_op(spec.op)
    torch.manual_seed(seed)
    module = op.impl(spec.impl).build(spec).to(device=device, dtype=spec.torch_dtype).eval()
    return module, op.make_inputs(spec, torch.Generator().manual_seed(seed))


def spec_to_dict(spec: LayerSpec) -> dict[str, Any]:
    return {"op": spec.op, "channels": spec.channels, "height": spec.height, "width": spec.width,
            "batch": spec.batch, "dtype": spec.dtype, "device": spec.device, "impl": spec.impl,
            "params": dict(spec.params)}


def spec_from_dict(data: dict[str, Any]) -> LayerSpec:
    fields = {k: v for k, v in data.items() if k != "params"}
    return LayerSpec(**fields, params=tuple(data.get("params", {}).items()))


def run_process(request: dict[str, Any], index: int) -> dict[str, Any]:
    """One timing process: its per-row results, or {"failed": why}."""
    done = run_child("lrprof.profile.replicate", {**request, "rotate": index}, prefix="lrprof-repeat-")
    return {"failed": done.failed} if done.failed else done.result


def time_in_processes(rows: Sequence[tuple[LayerSpec, Record]], device: torch.device, repeat: int,
                      timing: TimingOptions, backward: bool, seed: int,
                      on_process: Callable[[int], None] | None = None) -> None:
    """Time every row in `repeat` fresh processes, one after the other; each record gets the
    pooled Stats of the processes so far after each one (`on_process(k)`: k done), so an
    interrupted profile keeps what it measured. A process's failure stays in its rows."""
    request = {"specs": [spec_to_dict(spec) for spec, _ in rows], "device": str(device),
               "backward": backward, "seed": seed, "threads": torch.get_num_threads(),
               "timing": dataclasses.asdict(timing)}
    per_row: list[dict[str, list[Stats | None]]] = [{} for _ in rows]
    sessions: list[dict[str, Any]] = []
    for k in range(repeat):
        result = run_process(request, k)
        if "failed" in result:
            for _, record in rows:
                record.add_error(f"timing process {k + 1} of {repeat}: {result['failed']}")
            result = {"rows": [{} for _ in rows], "noise": None}
        if result.get("noise"):
            sessions.append(result["noise"])
        for (_, record), phases, got in zip(rows, per_row, result["rows"], strict=True):
            for phase in set(phases) | set(got):
                value = got.get(phase)
                if isinstance(value, dict) and "error" in value:
                    record.add_error(f"timing {phase} in process {k + 1}: {value['error']}")
                    value = None
                stats = Stats.from_dict(value) if isinstance(value, dict) else None
                phases.setdefault(phase, [None] * k).append(stats)
            for phase in phases:  # a phase this process did not report keeps its slot
                if len(phases[phase]) < k + 1:
                    phases[phase].append(None)
        _pool(rows, per_row, repeat)
        noise.flag_rows([record for _, record in rows], sessions)
        if on_process:
            on_process(k + 1)


SPEC_FIELDS = ("op", "impl", "batch", "channels", "height", "width", "dtype", "device")


def config_to_request(config: dict[str, Any]) -> dict[str, Any]:
    """A report row's `config` (a layer spec's identity, `LayerSpec.config`) as a worker's spec."""
    return {**{k: config[k] for k in SPEC_FIELDS if k in config},
            "params": {k: v for k, v in config.items() if k not in SPEC_FIELDS}}


def retime(configs: Sequence[dict[str, Any]], device: str, threads: int, backward: bool,
           timing: TimingOptions, budget_s: float, enough: Callable[[list[dict[str, list]]], bool],
           max_processes: int = 40, seed: int = 0) -> dict[str, Any]:
    """Re-time rows given by their report configurations in fresh processes, one after the
    other, every row interleaved in each (the first row rotating), until `enough(per_row)`
    says they are decided or the next process would not fit in `budget_s`.
    per_row[i][phase]: the samples of each process (empty where it failed). Returns
    {"per_row", "processes", "seconds", "failed", "oversubscribed" (processes that saw it)}."""
    import time

    request = {"specs": [config_to_request(c) for c in configs], "device": device,
               "backward": backward, "seed": seed, "threads": threads,
               "timing": dataclasses.asdict(timing)}
    per_row: list[dict[str, list]] = [{} for _ in configs]
    failed: list[str] = []
    oversubscribed: list[str] = []  # the processes whose timing session saw an oversubscribed CPU
    started = time.perf_counter()
    k = 0
    while k < max_processes:
        spent = time.perf_counter() - started
        if k and (spent + spent / k > budget_s or enough(per_row)):
            break
        result = run_process(request, k)
        k += 1
        rows = result.get("rows") or [{} for _ in configs]
        if "failed" in result:
            failed.append(f"process {k}: {result['failed']}")
        if (result.get("noise") or {}).get("warning"):
            oversubscribed.append(result["noise"]["warning"])
        for phases, got in zip(per_row, rows, strict=True):
            for phase in set(phases) | {p for p, v in got.items() if isinstance(v, dict)}:
                value = got.get(phase)
                if isinstance(value, dict) and "error" in value:
                    failed.append(f"process {k}: {phase}: {value['error']}")
                    value = None
                samples = tuple(value["samples_ms"]) if isinstance(value, dict) else ()
                phases.setdefault(phase, [()] * (k - 1)).append(samples)
            for phase in phases:
                if len(phases[phase]) < k:
                    phases[phase].append(())
    return {"per_row": per_row, "processes": k, "seconds": round(time.perf_counter() - started, 1),
            "failed": "; ".join(failed[:3]) or None, "oversubscribed": len(oversubscribed),
            "oversubscription": oversubscribed[0].split(":")[0] if oversubscribed else None}


def _pool(rows: Sequence[tuple[LayerSpec, Record]], per_row: list[dict[str, list[Stats | None]]],
          repeat: int) -> None:
    for (_, record), phases in zip(rows, per_row, strict=True):
        for phase, parts in phases.items():
            if any(p is not None for p in parts):
                pooled = Stats.pooled(parts)
                method = f"{pooled.method}; runs pooled from {len(parts)} of {repeat} fresh processes"
                record.latency[phase] = dataclasses.replace(pooled, method=method)


# ---- the worker ---------------------------------------------------------------------------


def worker(request: dict[str, Any]) -> dict[str, Any]:
    """Build and time every requested row in this process; JSON-ready results."""
    from lrprof.profile.steps import phase_calls, time_phases

    torch.set_num_threads(int(request["threads"]))
    device = torch.device(request["device"])
    specs = [spec_from_dict(d) for d in request["specs"]]
    rows: list[dict[str, Any]] = [{} for _ in specs]
    built = []
    for index, spec in enumerate(specs):
        try:
            module, inputs = build_row(spec, int(request["seed"]), device)
            built.append((index, phase_calls(module, inputs, bool(request["backward"]))))
        except Exception as exc:  # recorded in the row by the parent
            rows[index] = {"fwd": {"error": f"building: {describe(exc)}"}}
    shift = int(request.get("rotate", 0)) % max(len(built), 1)
    built = built[shift:] + built[:shift]
    results, session = time_phases([phases for _, phases in built], device,
                                   TimingOptions(**request["timing"]))
    for (position, phase), result in results.items():
        index = built[position][0]
        rows[index][phase] = ({"error": describe(result)} if isinstance(result, Exception)
                              else result.to_dict())
    return {"rows": rows, "noise": session}


if __name__ == "__main__":
    sys.exit(child_main(worker, sys.argv[1:]))
