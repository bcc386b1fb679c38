"""Does a report agree with itself? Run after `lrprof.record.validate` (every value has the
right type and range) and before anything is compared: the figures a gate reads must follow
from the raw samples stored beside them.

A latency distribution with raw samples: its median, quartiles, min and max are what
`Stats.from_times` computes from those samples (statistics.median; quartiles by the
inclusive method), within float rounding; its run count is the number of samples and its
per-process run counts add up to it. Counted figures (runs, calls per run, memory runs,
bytes, MACs, instructions) are non-negative integers. A report whose medians were edited
while its samples were not (or the reverse) is one `InputError` naming the file, the row
and the field, so `lrprof compare` exits 2 instead of gating on figures nobody measured.

A distribution without samples (reports from before samples were kept, hand-made ones)
has nothing to be checked against and passes as it is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path

from lrprof.record.records import EXACT_COLUMNS, INSTRUCTION_COLUMNS, Record
from lrprof.spec.errors import InputError

REL_TOL = 1e-9  # float rounding: JSON and CSV keep repr(float), so this is generous
ABS_TOL = 1e-12

# The field names a reader of each format sees: JSON paths, CSV columns.
FieldName = Callable[[str, str], str]


def json_field(phase: str, stat: str) -> str:
    return f"latency.{phase}.{stat}"


def csv_field(phase: str, stat: str) -> str:
    return f"{phase}_{stat}"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def derived_figures(samples: tuple[float, ...]) -> dict[str, float]:
    """What a distribution's summary is, computed from its samples as the writer does."""
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": min(samples), "max_ms": max(samples)}


def _counted(fail: Callable[[str, str], InputError], field: str, value: object, least: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise fail(field, f"{value!r} (a counted figure: an integer >= {least} expected)")


def check_record(path: Path, row: str, record: Record, name: FieldName) -> None:
    """One record; `row` as errors name it, `name(phase, field)` the field as its file spells it."""

    def fail(field: str, problem: str) -> InputError:
        return InputError(f"{path}: row {row}: {field}: {problem}")

    figures = record.exact_figures()
    for col in EXACT_COLUMNS + INSTRUCTION_COLUMNS:
        if col in figures and isinstance(figures[col], (int, float)):
            value = figures[col]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            group = "model" if col in record.model else "counted"
            _counted(fail, col if name is csv_field else f"{group}.{col}", value)
    for phase, stats in record.latency.items():
        _counted(fail, name(phase, "runs"), stats.runs, 1)
        _counted(fail, name(phase, "calls_per_run"), stats.calls_per_run, 1)
        samples = stats.samples_ms
        if not samples:
            continue
        if len(samples) != stats.runs:
            raise fail(name(phase, "runs"), f"{stats.runs}, but {len(samples)} raw samples are stored")
        if stats.process_runs and sum(stats.process_runs) != len(samples):
            raise fail(name(phase, "process_runs"), f"add up to {sum(stats.process_runs)}, but "
                       f"{len(samples)} raw samples are stored")
        if len(samples) < 2:
            continue
        for stat, expected in derived_figures(samples).items():
            stored = getattr(stats, stat)
            if not _close(stored, expected):
                raise fail(name(phase, stat), f"{stored!r} does not follow from the {len(samples)} raw "
                           f"samples stored beside it (they give {expected!r}); the report was edited "
                           "or damaged")
    for phase, mem in record.memory.items():
        prefix = f"memory.{phase}." if name is json_field else f"{phase}_"
        for f in ("peak_bytes", "min_bytes", "max_bytes", "runs"):
            column = f if name is json_field else {"min_bytes": "peak_min_bytes",
                                                    "max_bytes": "peak_max_bytes",
                                                    "runs": "memory_runs"}.get(f, f)
            _counted(fail, f"{prefix}{column}", getattr(mem, f), 1 if f == "runs" else 0)


def check_records(path: Path, records: list[Record], csv: bool) -> None:
    """Every record of a loaded report, named as `lrprof.record.validate` names them."""
    for index, record in enumerate(records):
        row = f"{index + 2} ({record.name!r})" if csv else repr(record.name)
        check_record(path, row, record, csv_field if csv else json_field)
