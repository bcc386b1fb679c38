"""Where the time goes: each op's self time beside the work the counter gave the same op.

torch's profiler records every row's phases in their own runs, after the timed ones (a
profiler slows what it watches, so it never runs inside the timed runs), each call inside a
`record_function` range named by the row (`lr[fused] k=7 ... fwd`), so one Chrome/Perfetto
trace shows every row. An op's self time includes the time of the ops it calls that the
counter does not see by name (aten::convolution's aten::mkldnn_convolution): every profiled
event's self time goes to its nearest enclosing op that the counter counted, else to the
outermost op of its range, so the ops listed are the counter's and their times add up to
the row's time. On CUDA the time is the kernels' device time, else CPU time.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lrprof.measure.memory import kineto_quiet

RUNS = 5  # profiled blocks per row and phase
MAX_BLOCK = 20  # consecutive calls in a block at most (the profiler's events grow with them)
METHOD = (f"torch.autograd.profiler, {RUNS} blocks per row and phase of as many calls as a timed run "
          f"(at most {MAX_BLOCK}), rows interleaved, after the timed runs (one warm-up call); "
          "each event's self time to its nearest enclosing op the counter counted; per call of the row")


@dataclass
class ProfiledRow:
    """What to profile for one row: its label (the range's name), its phases' calls, and the
    counter's per-op figures of one pass {phase: {op: (MACs, exps)}}."""

    label: str
    phases: dict[str, Callable[[], object]]
    counted: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    block: dict[str, int] = field(default_factory=dict)  # phase -> consecutive calls, as timed


def range_name(label: str, phase: str) -> str:
    return f"{label} {phase}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _event_ms(event: Any, cuda: bool) -> float:
    micros = getattr(event, "self_device_time_total", 0) if cuda else event.self_cpu_time_total
    return float(micros or 0) / 1e3


def attribute(events: Sequence[Any], ranges: dict[str, tuple[str, str]],
              counted_names: dict[str, set[str]], cuda: bool = False) -> dict[tuple[str, str], dict]:
    """{(row label, phase): {op: [self ms in total, calls]}} from profiler events: each event
    under a row's range, its self time to its nearest enclosing counted op (else the
    outermost op below the range). `ranges` maps a range name to (label, phase)."""
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for event in events:
        chain = []  # the event and its ancestors, innermost first
        node = event
        while node is not None:
            chain.append(node)
            node = node.cpu_parent
        top = next((i for i, e in enumerate(chain) if e.name in ranges), None)
        if top is None or top == 0:
            continue  # outside every row's range, or the range itself
        key = ranges[chain[top].name]
        names = counted_names.get(key[0], set())
        owner = next((e for e in chain[:top] if e.name in names), chain[top - 1])
        slot = out.setdefault(key, {}).setdefault(owner.name, [0.0, 0])
        slot[0] += _event_ms(event, cuda)
        if owner is event:
            slot[1] += 1
    return out


def profile_rows(rows: Sequence[ProfiledRow], device: torch.device, runs: int = RUNS,
                 trace: Path | None = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{label: {phase: [{"phase", "op", "calls", "self_ms", "MACs", "exps"}]}}, per call of
    the row, slowest op first; `trace`: also write the Chrome/Perfetto trace (gzip JSON)."""
    # torch.profiler.profile is a wrapper of this one that also imports torch._inductor (and
    # with it torch._dynamo: seconds) on entry; this one records the same events.
    from torch.autograd.profiler import profile, record_function

    cuda = device.type == "cuda"
    ranges: dict[str, tuple[str, str]] = {}
    for row in rows:
        for phase, fn in row.phases.items():
            ranges[range_name(row.label, phase)] = (row.label, phase)
            fn()  # warm: a first call's one-time work is not the op's time
    _synchronize(device)
    with kineto_quiet(), profile(use_device="cuda" if cuda else None) as prof:
        for _ in range(runs):  # rows interleaved in blocks, as the timed runs are: the same caches
            for row in rows:
                for phase, fn in row.phases.items():
                    for _ in range(row.block.get(phase, 1)):
                        with record_function(range_name(row.label, phase)):
                            fn()
                    _synchronize(device)
    if trace is not None:
        write_trace(prof, trace)
    counted_names = {row.label: {op for ops in row.counted.values() for op in ops} for row in rows}
    found = attribute(prof.function_events, ranges, counted_names, cuda)
    result: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        for phase in row.phases:
            ops = found.get((row.label, phase), {})
            work = row.counted.get(phase, {})
            n = runs * row.block.get(phase, 1)  # calls of the row profiled
            table = [{"phase": phase, "op": op, "calls": calls / n, "self_ms": ms / n,
                      "MACs": work.get(op, (0, 0))[0], "exps": work.get(op, (0, 0))[1]}
                     for op, (ms, calls) in ops.items()]
            table.sort(key=lambda r: -r["self_ms"])
            result.setdefault(row.label, {})[phase] = table
    return result


def write_trace(prof: Any, path: Path) -> Path:
    """The profiler's Chrome trace, gzip-compressed (Perfetto and chrome://tracing open it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lrprof-trace-") as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as source, gzip.open(path, "wb") as target:
            shutil.copyfileobj(source, target)
    return path


def with_rates(table: list[dict[str, Any]], row_ms: float | None) -> list[dict[str, Any]]:
    """Each op's share of the row's time and its achieved GMAC/s."""
    out = []
    for entry in table:
        ms = entry["self_ms"]
        out.append({**entry, "share_pct": 100 * ms / row_ms if row_ms else None,
                    "GMAC_per_s": entry["MACs"] / (ms * 1e6) if ms > 0 and entry["MACs"] else None})
    return out
