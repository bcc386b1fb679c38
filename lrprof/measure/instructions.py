"""Instructions per call under callgrind (`--instructions`): a CPU figure that does not move
with the machine's load or clock, for a gate that must not false-alarm on a shared runner.

Every row is counted in ONE valgrind process: starting Python and importing torch under
callgrind is what costs (about 95 CPU-seconds here with instrumentation on from the start,
25 with it off), so paying it once per report instead of once per row and phase (what
`torch.utils.benchmark.Timer.collect_callgrind` does, 228 s for one small row on this
machine) is what makes the gate usable. The process starts with instrumentation off, turns
it on with `callgrind_control -i on` after the imports, then for each row and phase: build
(same seed and weights as the timed rows), warm up, collect `NUMBER` calls between
`torch._C._valgrind_toggle()` and `torch._C._valgrind_toggle_and_dump_stats()` (the
client requests torch.utils.benchmark uses), one dump per row and phase. One thread and
PYTHONHASHSEED=0, so the count does not depend on thread scheduling or string hashing;
the cost of an empty collection is subtracted.

The worker is this module: `python -m lrprof.measure.instructions REQUEST.json MANIFEST.json`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrprof.record.records import Record
from lrprof.spec.errors import SpecError
from lrprof.spec.layer import LayerSpec

NUMBER = 5  # calls collected per row and phase
WARMUP = 3
TOOLS = ("valgrind", "callgrind_control")
METHOD = (f"callgrind (valgrind): instructions per call, {NUMBER} calls collected after {WARMUP} "
          "warm-up calls, 1 thread, PYTHONHASHSEED=0, all rows in one valgrind process, the cost "
          "of an empty collection subtracted")
_TOTALS = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


def check_available() -> None:
    """A one-line SpecError (exit 2) when instruction counting cannot run here."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SpecError("instructions", f"needs {' and '.join(missing)} on PATH (install valgrind, "
                        "e.g. apt-get install valgrind)")
    supported = getattr(torch._C, "_valgrind_supported_platform", None)
    if supported is None or not supported():
        raise SpecError("instructions", "this torch build has no valgrind support")


def dump_total(text: str) -> int:
    """The instruction total of one callgrind dump file."""
    found = _TOTALS.search(text)
    if found is None:
        raise ValueError("no totals line in the callgrind dump")
    return int(found.group(1))


def count_rows(rows: Sequence[tuple[LayerSpec, Record]], backward: bool, seed: int) -> None:
    """Instructions per call of every row's phases into `record.exact["<phase>_instructions"]`;
    a failure is added to each row's error."""
    from lrprof.profile.replicate import child_env, spec_to_dict
    from lrprof.profile.steps import add_error

    if not rows:
        return
    request = {"specs": [spec_to_dict(spec) for spec, _ in rows], "backward": backward, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="lrprof-callgrind-") as tmp:
        req, manifest, out = Path(tmp) / "request.json", Path(tmp) / "manifest.json", Path(tmp) / "cg.out"
        req.write_text(json.dumps(request))
        env = {**child_env(), "PYTHONHASHSEED": "0"}
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                   "--dump-instr=no", "--dump-line=no", f"--callgrind-out-file={out}",
                   sys.executable, "-m", "lrprof.measure.instructions", str(req), str(manifest)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not manifest.is_file():
            lines = [line for line in (done.stderr or "").splitlines()
                     if line.strip() and not line.startswith("==")]
            why = f"valgrind exit {done.returncode}: {(lines or ['no output'])[-1][:300]}"
            for _, record in rows:
                add_error(record, f"instructions: {why}")
            return
        entries = json.loads(manifest.read_text())
        totals = [dump_total(Path(f"{out}.{i + 1}").read_text()) for i in range(len(entries))]
    empty = totals[0]
    for entry, total in zip(entries[1:], totals[1:], strict=True):
        record = rows[entry["row"]][1]
        if "error" in entry:
            add_error(record, f"instructions: {entry['error']}")
            continue
        record.exact[f"{entry['phase']}_instructions"] = round((total - empty) / NUMBER)
        record.detail["instructions"] = {"method": METHOD, "empty_collection": empty}


# ---- the worker, under valgrind ------------------------------------------------------------


def _collect(fn: Any, number: int) -> None:
    torch._C._valgrind_toggle()
    for _ in range(number):
        fn()
    torch._C._valgrind_toggle_and_dump_stats()


def worker(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Count every row; returns the manifest (what each dump, in order, holds)."""
    from lrprof.profile.replicate import build_row, spec_from_dict
    from lrprof.profile.steps import phase_calls
    from lrprof.spec.errors import describe

    torch.set_num_threads(1)
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                   capture_output=True, timeout=600)
    manifest: list[dict[str, Any]] = [{"row": None, "phase": "empty"}]
    _collect(lambda: None, NUMBER)
    cpu = torch.device("cpu")
    for index, data in enumerate(request["specs"]):
        try:
            module, inputs = build_row(spec_from_dict(data), int(request["seed"]), cpu)
            phases = phase_calls(module, inputs, bool(request["backward"]))
        except Exception as exc:
            manifest.append({"row": index, "phase": "fwd", "error": f"building: {describe(exc)}"})
            _collect(lambda: None, 0)  # keep one dump per manifest entry
            continue
        for name, phase in phases.items():
            try:
                for _ in range(WARMUP):
                    phase.fn()
            except Exception as exc:
                manifest.append({"row": index, "phase": name, "error": describe(exc)})
                _collect(lambda: None, 0)
                continue
            manifest.append({"row": index, "phase": name})
            _collect(phase.fn, NUMBER)
    return manifest


def main(argv: list[str]) -> int:
    manifest = worker(json.loads(Path(argv[0]).read_text()))
    Path(argv[1]).write_text(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
