"""Instructions per call of every row under callgrind (`--instructions`), all rows in one
valgrind process (see `lrprof.measure.instructions` for why and how it is counted).

The child is this module: valgrind runs `python -m lrprof.profile.instructions REQUEST RESULT`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrprof.measure.instructions import METHOD, NUMBER, WARMUP, collect_calls, dump_total
from lrprof.profile.child import child_env, child_main, run_child
from lrprof.profile.replicate import build_row, spec_from_dict, spec_to_dict
from lrprof.profile.steps import phase_calls
from lrprof.record.records import Record
from lrprof.spec.errors import describe
from lrprof.spec.layer import LayerSpec


def count_rows(rows: Sequence[tuple[LayerSpec, Record]], backward: bool, seed: int) -> None:
    """Instructions per call of every row's phases into `record.counted["<phase>_instructions"]`;
    a failure is added to each row's error."""
    if not rows:
        return
    request = {"specs": [spec_to_dict(spec) for spec, _ in rows], "backward": backward, "seed": seed}
    def valgrind(tmp: Path) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                "--dump-instr=no", "--dump-line=no", f"--callgrind-out-file={tmp / 'cg.out'}"]

    def totals_of(tmp: Path, entries: list) -> list[int]:
        return [dump_total((tmp / f"cg.out.{i + 1}").read_text()) for i in range(len(entries))]

    done = run_child("lrprof.profile.instructions", request, prefix="lrprof-callgrind-", wrap=valgrind,
                     env=child_env(PYTHONHASHSEED="0"), collect=totals_of,
                     stderr_filter=lambda line: not line.startswith("=="))
    if done.failed:
        for _, record in rows:
            record.add_error(f"instructions: valgrind {done.failed}")
        return
    entries, totals = done.result, done.collected
    empty = totals[0]
    for entry, total in zip(entries[1:], totals[1:], strict=True):
        record = rows[entry["row"]][1]
        if "error" in entry:
            record.add_error(f"instructions: {entry['error']}")
            continue
        record.counted[f"{entry['phase']}_instructions"] = round((total - empty) / NUMBER)
        record.detail["instructions"] = {"method": METHOD, "empty_collection": empty}


def worker(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Count every row; returns the manifest (what each dump, in order, holds)."""
    torch.set_num_threads(1)
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                   capture_output=True, timeout=600)
    manifest: list[dict[str, Any]] = [{"row": None, "phase": "empty"}]
    collect_calls(lambda: None, NUMBER)
    cpu = torch.device("cpu")
    for index, data in enumerate(request["specs"]):
        try:
            module, inputs = build_row(spec_from_dict(data), int(request["seed"]), cpu)
            phases = phase_calls(module, inputs, bool(request["backward"]))
        except Exception as exc:
            manifest.append({"row": index, "phase": "fwd", "error": f"building: {describe(exc)}"})
            collect_calls(lambda: None, 0)  # keep one dump per manifest entry
            continue
        for name, phase in phases.items():
            try:
                for _ in range(WARMUP):
                    phase.fn()
            except Exception as exc:
                manifest.append({"row": index, "phase": name, "error": describe(exc)})
                collect_calls(lambda: None, 0)
                continue
            manifest.append({"row": index, "phase": name})
            collect_calls(phase.fn, NUMBER)
    return manifest


if __name__ == "__main__":
    sys.exit(child_main(worker, sys.argv[1:]))
