"""Where each row's time and energy go, measured in the rows' own runs after the timed ones:
per-op self time beside the counter's per-op work (`detail.op_times`), a Chrome/Perfetto
trace with a range per row and phase, and joules per pass (or why not)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrprof.measure import energy, optimes
from lrprof.profile.steps import Phase
from lrprof.record.records import Record
from lrprof.spec.errors import describe

TRACE_NAME = "{command}-trace.json.gz"


def trace_path(options: Any, command: str) -> Path | None:
    """Where `--trace DIR` puts this command's trace."""
    return Path(options.trace) / TRACE_NAME.format(command=command) if options.trace else None


def counted_ops(record: Record) -> dict[str, dict[str, tuple[int, int]]]:
    """{phase: {op: (MACs, exps)}} of one pass, from the counter's per-op list."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for entry in record.detail.get("ops", []):
        phase = "fwd" if entry["phase"] == "fwd" else "fwd_bwd"
        macs, exps = out.setdefault(phase, {}).get(entry["op"], (0, 0))
        out[phase][entry["op"]] = (macs + entry["macs"], exps + entry["exps"])
    if "fwd_bwd" in out:  # a forward+backward call runs the forward's ops too
        for op, (macs, exps) in out.get("fwd", {}).items():
            m, e = out["fwd_bwd"].get(op, (0, 0))
            out["fwd_bwd"][op] = (m + macs, e + exps)
    return out


def _blocks(record: Record) -> dict[str, int]:
    """Each phase's calls per timed run (a block of consecutive calls), capped: profiled the
    way it was timed, a small op's time is that of warm caches, as in the timed runs."""
    return {phase: max(1, min(stats.calls_per_run, optimes.MAX_BLOCK))
            for phase, stats in record.latency.items()}


def add_op_times(rows: Sequence[tuple[Record, dict[str, Phase]]], device: torch.device,
                 trace: Path | None = None) -> Path | None:
    """`record.detail["op_times"]` for every row: [{"phase", "op", "calls", "self_ms", "MACs",
    "exps", "share_pct", "GMAC_per_s"}] per call of the row; the trace written, if asked."""
    rows = [(r, p) for r, p in rows if p]
    if not rows:
        return None
    profiled = [optimes.ProfiledRow(record.name, {name: phase.fn for name, phase in phases.items()},
                                    counted_ops(record), _blocks(record)) for record, phases in rows]
    try:
        found = optimes.profile_rows(profiled, device, trace=trace)
    except Exception as exc:  # the profiler failing costs no figure already measured
        for record, _ in rows:
            record.detail["op_times_error"] = describe(exc)
        return None
    for record, _ in rows:
        table = []
        for phase, ops in found.get(record.name, {}).items():
            stats = record.latency.get(phase)
            table += optimes.with_rates(ops, stats.median_ms if stats else None)
        record.detail["op_times"] = table
        record.detail["op_times_method"] = optimes.METHOD
        if trace is not None:
            record.detail["trace"] = str(trace)
    return trace


def add_energy(rows: Sequence[tuple[Record, dict[str, Phase]]], device: torch.device) -> None:
    """Joules per call of each phase, or why not: `record.detail["energy"]`, and the
    figures people read in `record.derived` (`energy` says why when there are none)."""
    source = energy.meter(device)
    for record, phases in rows:
        found: dict[str, Any] = {}
        for name, phase in phases.items():
            try:
                found[name] = energy.energy_per_call(phase.fn, device, source)
            except Exception as exc:
                found[name] = {"unavailable": f"failed: {describe(exc)}"}
        record.detail["energy"] = found
        fwd = found.get("fwd", {"unavailable": "no forward phase"})
        if "joules_per_call" in fwd:
            joules = fwd["joules_per_call"]
            record.derived["fwd_mJ_per_pass"] = joules * 1e3
            macs = record.counted.get("fwd_MACs")
            if macs and joules > 0:
                record.derived["fwd_GMAC_per_J"] = macs / joules / 1e9
            if "fwd_bwd" in found and "joules_per_call" in found["fwd_bwd"]:
                record.derived["fwd_bwd_mJ_per_pass"] = found["fwd_bwd"]["joules_per_call"] * 1e3
            record.derived["energy"] = f"{joules * 1e3:.3g} mJ per forward pass ({fwd['source']})"
        else:
            record.derived["energy"] = f"unavailable: {fwd['unavailable']}"
