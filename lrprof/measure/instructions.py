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

This module is the instrument (the tools, the client requests, a dump's total); the
profile's `lrprof.profile.instructions` runs the rows under it in one valgrind process.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import torch

from lrprof.spec.errors import SpecError

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


def collect_calls(fn: Any, number: int) -> None:
    torch._C._valgrind_toggle()
    for _ in range(number):
        fn()
    torch._C._valgrind_toggle_and_dump_stats()
