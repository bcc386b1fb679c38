"""A strict reading of a report before anything is compared: every value a gate decides on
must be what the writer writes (a finite number >= 0 where a figure belongs, an integer
count, a configuration that names the row). Anything else is one `InputError` naming the
file, the row and the field, so `lrprof compare` exits 2 instead of calling a NaN latency
"noise", a negative one "better", or dying on a string.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lrprof.record.records import (
    EXACT_COLUMNS,
    INSTRUCTION_COLUMNS,
    LEGACY_NAMES,
    PHASES,
    latency_columns,
    memory_columns,
    noise_columns,
    parse_counts,
    parse_samples,
)
from lrprof.spec.errors import InputError

STAT_FIELDS = ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms")
MEMORY_FIELDS = ("peak_bytes", "min_bytes", "max_bytes")
NOISE_FIELDS = ("minor_faults_per_call", "major_faults_per_call", "involuntary_switches_per_s")
GATED = EXACT_COLUMNS + INSTRUCTION_COLUMNS
ORDER_SLACK = 1e-9  # relative: min <= q1 <= median <= q3 <= max up to rounding


class _Where:
    """File and row, for the one line an error becomes."""

    def __init__(self, path: Path, row: str) -> None:
        self.path, self.row = path, row

    def fail(self, field: str, problem: str) -> InputError:
        return InputError(f"{self.path}: row {self.row}: {field}: {problem}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number(where: _Where, field: str, value: Any, integer: bool = False) -> float | int:
    """A finite number >= 0 (an integer where `integer`); bool is not a number here."""
    kind = "an integer >= 0" if integer else "a finite number >= 0"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        if integer and isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)
        raise where.fail(field, f"{_describe(value)} ({kind} expected)")
    if not math.isfinite(value) or value < 0:
        raise where.fail(field, f"{_describe(value)} ({kind} expected)")
    return value


def _positive_int(where: _Where, field: str, value: Any) -> int:
    value = number(where, field, value, integer=True)
    if value < 1:
        raise where.fail(field, f"{value} (an integer >= 1 expected)")
    return int(value)


def _ordered(where: _Where, prefix: str, values: dict[str, float]) -> None:
    names = list(values)
    for lo, hi in zip(names, names[1:], strict=False):
        if values[lo] > values[hi] * (1 + ORDER_SLACK) + 1e-12:
            raise where.fail(f"{prefix}{lo}", f"{values[lo]!r} is above {prefix}{hi} {values[hi]!r} "
                             "(a distribution needs min <= q1 <= median <= q3 <= max)")


def _samples(where: _Where, field: str, samples: list[Any], runs: int) -> None:
    for i, v in enumerate(samples):
        number(where, f"{field}[{i}]", v)
    if samples and len(samples) != runs:
        raise where.fail(field, f"{len(samples)} samples for {runs} runs")


def _process_runs(where: _Where, field: str, counts: list[Any], samples: int) -> None:
    for i, v in enumerate(counts):
        number(where, f"{field}[{i}]", v, integer=True)
    if counts and sum(counts) != samples:
        raise where.fail(field, f"counts sum to {sum(counts)}, not the {samples} samples")


# ---- JSON ---------------------------------------------------------------------------------


def check_json_record(path: Path, index: int, data: Any) -> None:
    """One record of a JSON report, as `Record.to_dict` writes it."""
    where = _Where(path, f"#{index + 1}")
    if not isinstance(data, dict):
        raise where.fail("record", f"{_describe(data)} (an object expected)")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise where.fail("name", f"{_describe(name)} (a non-empty string expected)")
    where = _Where(path, repr(name))
    if not isinstance(data.get("kind"), str) or not data["kind"]:
        raise where.fail("kind", f"{_describe(data.get('kind'))} (a non-empty string expected)")
    config = data.get("config")
    if not isinstance(config, dict) or not config:
        raise where.fail("config", f"{_describe(config)}: malformed report (a row needs the "
                         "configuration that identifies it)")
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            raise where.fail(f"config.{key}", f"{_describe(value)} (a single value expected)")
    for section in ("counted", "model", "exact", "checks", "latency", "memory", "derived", "detail"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise where.fail(section, f"{_describe(data[section])} (an object expected)")
    for group in ("counted", "model", "exact"):  # version 2's groups, and version 1's one
        for key, value in (data.get(group) or {}).items():
            if LEGACY_NAMES.get(key, key) in GATED:
                number(where, f"{group}.{key}", value, integer=True)
    for phase, stats in (data.get("latency") or {}).items():
        _json_latency(where, f"latency.{phase}.", stats)
    for phase, stats in (data.get("memory") or {}).items():
        _json_memory(where, f"memory.{phase}.", stats)
    derived = data.get("derived") or {}
    if "baseline" in derived and not isinstance(derived["baseline"], str):
        raise where.fail("derived.baseline", f"{_describe(derived['baseline'])} (a row name expected)")
    if data.get("error") is not None and not isinstance(data["error"], str):
        raise where.fail("error", f"{_describe(data['error'])} (a string or null expected)")


def _json_latency(where: _Where, prefix: str, stats: Any) -> None:
    if not isinstance(stats, dict):
        raise where.fail(prefix.rstrip("."), f"{_describe(stats)} (an object expected)")
    for f in (*STAT_FIELDS, "runs"):
        if f not in stats:
            raise where.fail(f"{prefix}{f}", "missing")
    values = {f: number(where, f"{prefix}{f}", stats[f]) for f in STAT_FIELDS}
    _ordered(where, prefix, {"min_ms": values["min_ms"], "q1_ms": values["q1_ms"],
                             "median_ms": values["median_ms"], "q3_ms": values["q3_ms"],
                             "max_ms": values["max_ms"]})
    runs = _positive_int(where, f"{prefix}runs", stats["runs"])
    _positive_int(where, f"{prefix}calls_per_run", stats.get("calls_per_run", 1))
    if stats.get("threads") is not None:
        _positive_int(where, f"{prefix}threads", stats["threads"])
    samples = stats.get("samples_ms") or []
    if not isinstance(samples, list):
        raise where.fail(f"{prefix}samples_ms", f"{_describe(samples)} (a list expected)")
    _samples(where, f"{prefix}samples_ms", samples, runs)
    counts = stats.get("process_runs") or []
    if not isinstance(counts, list):
        raise where.fail(f"{prefix}process_runs", f"{_describe(counts)} (a list expected)")
    _process_runs(where, f"{prefix}process_runs", counts, len(samples))
    for f in NOISE_FIELDS:
        if stats.get(f) is not None:
            number(where, f"{prefix}{f}", stats[f])


def _json_memory(where: _Where, prefix: str, stats: Any) -> None:
    if not isinstance(stats, dict):
        raise where.fail(prefix.rstrip("."), f"{_describe(stats)} (an object expected)")
    for f in (*MEMORY_FIELDS, "runs"):
        if f not in stats:
            raise where.fail(f"{prefix}{f}", "missing")
    values = {f: number(where, f"{prefix}{f}", stats[f], integer=True) for f in MEMORY_FIELDS}
    _ordered(where, prefix, {"min_bytes": values["min_bytes"], "peak_bytes": values["peak_bytes"],
                             "max_bytes": values["max_bytes"]})
    _positive_int(where, f"{prefix}runs", stats["runs"])
    if stats.get("resident_bytes") is not None:
        number(where, f"{prefix}resident_bytes", stats["resident_bytes"], integer=True)


# ---- CSV ----------------------------------------------------------------------------------


def _present(value: Any) -> bool:
    return value not in (None, "")


def check_csv_row(path: Path, index: int, row: dict[str, Any]) -> None:
    """One CSV row, its cells already typed by `parse_cell` (so 'nan' is a float NaN)."""
    name = row.get("name")
    where = _Where(path, f"{index + 2} ({name!r})" if _present(name) else f"{index + 2}")
    if not _present(name):
        raise where.fail("name", "empty (every row needs a name)")
    if not _present(row.get("kind")):
        raise where.fail("kind", "empty (every row needs a kind)")
    identity = row.get("identity")
    if _present(identity):
        for col in str(identity).split():
            if col not in row:
                raise where.fail("identity", f"names column {col!r}, which the file does not have")
    for col, value in row.items():
        if _present(value) and LEGACY_NAMES.get(col, col) in GATED:
            number(where, col, value, integer=True)
    for phase in PHASES:
        _csv_latency(where, row, phase)
        _csv_memory(where, row, phase)


def _csv_latency(where: _Where, row: dict[str, Any], phase: str) -> None:
    cols = latency_columns(phase)
    stat_cols, runs_col, calls_col, samples_col, process_col = cols[:5], cols[5], cols[6], cols[7], cols[8]
    if not any(_present(row.get(c)) for c in (*stat_cols, runs_col)):
        return  # this phase was not timed
    for col in (*stat_cols, runs_col):
        if not _present(row.get(col)):
            raise where.fail(col, "missing" if col not in row else "empty while other "
                             f"{phase} latency columns are filled")
    values = {c: number(where, c, row[c]) for c in stat_cols}
    ordered = [stat_cols[3], stat_cols[1], stat_cols[0], stat_cols[2], stat_cols[4]]
    _ordered(where, "", {c: values[c] for c in ordered})
    runs = _positive_int(where, runs_col, row[runs_col])
    if _present(row.get(calls_col)):
        _positive_int(where, calls_col, row[calls_col])
    try:
        samples = parse_samples(row.get(samples_col))
    except ValueError:
        raise where.fail(samples_col, f"{_describe(row.get(samples_col))} (numbers separated by "
                         "spaces expected)") from None
    _samples(where, samples_col, list(samples), runs)
    try:
        counts = parse_counts(row.get(process_col))
    except ValueError:
        raise where.fail(process_col, f"{_describe(row.get(process_col))} (integers separated by "
                         "spaces expected)") from None
    _process_runs(where, process_col, list(counts), len(samples))
    for col in noise_columns(phase):
        if _present(row.get(col)):
            number(where, col, row[col])


def _csv_memory(where: _Where, row: dict[str, Any], phase: str) -> None:
    cols = memory_columns(phase)
    if not any(_present(row.get(c)) for c in cols[:4]):
        return
    for col in cols[:4]:
        if not _present(row.get(col)):
            raise where.fail(col, "missing" if col not in row else "empty while other "
                             f"{phase} memory columns are filled")
    values = {c: number(where, c, row[c], integer=True) for c in cols[:3]}
    _ordered(where, "", {cols[1]: values[cols[1]], cols[0]: values[cols[0]], cols[2]: values[cols[2]]})
    _positive_int(where, cols[3], row[cols[3]])
    if _present(row.get(cols[4])):
        number(where, cols[4], row[cols[4]], integer=True)
