"""Two reports in, a regression verdict out.

Rows are matched by their configuration. Exact figures (parameters, MACs) must be equal:
a difference is a change of the model. Noisy figures (latency, memory) regress only when
the change is past the threshold AND past the measured spread of both runs: their
interquartile ranges (min-max when a side has fewer than 4 runs) must not overlap.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrprof.errors import InputError, SpecError
from lrprof.measure.memory import MemoryStats
from lrprof.measure.timing import Stats
from lrprof.record import ENV_COLUMNS, EXACT_COLUMNS, PHASES, SCHEMA, Record, parse_cell
from lrprof.report import fmt

WORSE, MODEL, ERROR, NOISE, BETTER, SAME = "worse", "model change", "error", "noise", "better", "same"
SEVERITY = {ERROR: 0, MODEL: 1, WORSE: 2, NOISE: 3, BETTER: 4, SAME: 5}
FAILING = {ERROR, MODEL, WORSE}
MIN_RUNS_FOR_IQR = 4


@dataclass(frozen=True)
class Thresholds:
    max_slowdown: float = 0.10  # fraction: 0.10 = 10 %
    max_memory_growth: float = 0.05
    allow_model_change: bool = False
    require_all: bool = False  # a baseline row missing from the new report fails


@dataclass
class Loaded:
    path: Path
    records: list[Record]
    environment: dict[str, Any]


@dataclass
class MetricChange:
    metric: str
    old: float | int | None
    new: float | int | None
    change_pct: float | None
    status: str
    why: str = ""


@dataclass
class RowResult:
    kind: str
    name: str
    config: dict[str, Any]
    status: str
    metrics: list[MetricChange] = field(default_factory=list)

    @property
    def worst_change(self) -> float:
        changes = [m.change_pct for m in self.metrics if m.status == self.status and m.change_pct]
        return max((abs(c) for c in changes), default=0.0)


@dataclass
class Comparison:
    old: Path
    new: Path
    rows: list[RowResult]
    only_old: list[str]
    only_new: list[str]
    warnings: list[str]
    thresholds: Thresholds
    # per unmatched row: where it is, its nearest row on the other side, the fields that differ
    unmatched: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failing(self) -> list[RowResult]:
        """Rows with a failing metric; with allow_model_change a changed model alone does
        not fail, but its latency and memory are still gated."""
        gated = FAILING - {MODEL} if self.thresholds.allow_model_change else FAILING
        return [r for r in self.rows if any(m.status in gated for m in r.metrics)]

    @property
    def missing_fails(self) -> bool:
        return self.thresholds.require_all and bool(self.only_old)

    @property
    def regression(self) -> bool:
        return bool(self.failing) or self.missing_fails

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "lrprof.compare/1",
            "old": str(self.old),
            "new": str(self.new),
            "regression": self.regression,
            "thresholds": asdict(self.thresholds),
            "warnings": self.warnings,
            "only_in_old": self.only_old,
            "only_in_new": self.only_new,
            "unmatched": self.unmatched,
            "rows": [asdict(r) for r in self.rows],
        }


def parse_percent(text: str, param: str) -> float:
    """'10%' or '10' -> 0.10."""
    raw = str(text).strip().rstrip("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(param, "a percentage such as 10% (a bare number is read as percent)",
                        text) from None
    if not math.isfinite(value) or value < 0:
        raise SpecError(param, "a finite percentage >= 0", text)
    return value / 100.0


def load(path: Path) -> Loaded:
    """A report written by lrprof, as JSON or CSV; anything else is a one-line input error."""
    if not path.is_file():
        raise InputError(f"{path}: no such report file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise InputError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise InputError(f"{path}: not an lrprof report (expected schema {SCHEMA})")
        try:
            records = [Record.from_dict(r) for r in data["records"]]
            env = dict(data["environment"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed lrprof report ({exc})") from None
        return Loaded(path, records, env)
    if path.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise InputError(f"{path}: not a readable CSV file ({exc})") from None
        if not rows or "kind" not in rows[0] or "name" not in rows[0]:
            raise InputError(f"{path}: not an lrprof CSV report (needs kind and name columns)")
        try:
            records = [Record.from_row({k: parse_cell(v or "") for k, v in row.items()}) for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed lrprof CSV report ({exc})") from None
        env = {c: rows[0].get(c) for c in ENV_COLUMNS if rows[0].get(c)}
        env["device"] = rows[0].get("device")
        return Loaded(path, records, env)
    raise InputError(f"{path}: unknown report format (expected .json or .csv)")


def _key(record: Record) -> tuple:
    return (record.kind, *sorted((k, str(v)) for k, v in record.config.items()))


def differing_fields(a: Record, b: Record) -> list[tuple[str, Any, Any]]:
    """The identity fields where two rows differ: (field, a's value, b's value); a field
    only one of them has differs too."""
    fields = list(dict.fromkeys([*a.config, *b.config]))
    return [(f, a.config.get(f), b.config.get(f)) for f in fields
            if str(a.config.get(f)) != str(b.config.get(f))]


def nearest(record: Record, candidates: list[Record]) -> tuple[Record, list[tuple[str, Any, Any]]] | None:
    """The candidate of the same kind whose identity differs in the fewest fields."""
    same_kind = [c for c in candidates if c.kind == record.kind]
    if not same_kind:
        return None
    best = min(same_kind, key=lambda c: len(differing_fields(c, record)))
    return best, differing_fields(best, record)


def unmatched_entry(record: Record, candidates: list[Record], where: str) -> dict[str, Any]:
    """An unmatched row, its nearest row on the other side and the fields that differ
    (values given as this row's, then the nearest's)."""
    found = nearest(record, candidates)
    entry: dict[str, Any] = {"in": where, "name": record.name, "nearest": None, "differs": []}
    if found is not None:
        other, diffs = found
        entry["nearest"] = other.name
        entry["differs"] = [{"field": f, "this": y, "nearest": x} for f, x, y in diffs]
    return entry


def unmatched_text(entry: dict[str, Any]) -> str:
    """'NAME (nearest: NAME2, differs in phi: mul here, sqdiff there)'."""
    if entry["nearest"] is None:
        return f"{entry['name']} (no row of its kind on the other side)"
    what = ", ".join(f"{d['field']}: {_shown(d['this'])} here, {_shown(d['nearest'])} there"
                     for d in entry["differs"])
    return f"{entry['name']} (nearest: {entry['nearest']}; differs in {what})"


def _shown(value: Any) -> str:
    return "(absent)" if value is None else str(value)


def _noisy(metric: str, old: float, new: float, old_span: tuple[float, float],
           new_span: tuple[float, float], threshold: float, spread_name: str) -> MetricChange:
    if old == new:
        return MetricChange(metric, old, new, 0.0, SAME, "unchanged")
    # From zero any growth is past every threshold; its percentage is undefined (None).
    change = (new - old) / old if old else math.copysign(math.inf, new - old)
    pct = 100 * change if math.isfinite(change) else None
    if abs(change) <= threshold:
        return MetricChange(metric, old, new, pct, SAME, f"within {100 * threshold:g}%")
    separated = new_span[0] > old_span[1] if change > 0 else new_span[1] < old_span[0]
    if not separated:
        return MetricChange(metric, old, new, pct, NOISE,
                            f"past {100 * threshold:g}% but the {spread_name}s overlap")
    return MetricChange(metric, old, new, pct, WORSE if change > 0 else BETTER,
                        f"past {100 * threshold:g}% and outside both {spread_name}s")


def _latency(phase: str, old: Stats, new: Stats, t: Thresholds) -> MetricChange:
    """IQRs when both sides have enough runs for one; otherwise both min-max ranges."""
    if min(old.runs, new.runs) >= MIN_RUNS_FOR_IQR:
        name, old_span, new_span = "IQR", (old.q1_ms, old.q3_ms), (new.q1_ms, new.q3_ms)
    else:
        name, old_span, new_span = "min-max range", (old.min_ms, old.max_ms), (new.min_ms, new.max_ms)
    change = _noisy(f"{phase}_median_ms", old.median_ms, new.median_ms, old_span, new_span,
                    t.max_slowdown, name)
    if old.calls_per_run != new.calls_per_run:  # block means spread less than single calls
        change.why += f" (runs average {old.calls_per_run} vs {new.calls_per_run} calls)"
    return change


def _memory(phase: str, old: MemoryStats, new: MemoryStats, t: Thresholds) -> MetricChange:
    return _noisy(f"{phase}_peak_bytes", old.peak_bytes, new.peak_bytes,
                  (old.min_bytes, old.max_bytes), (new.min_bytes, new.max_bytes),
                  t.max_memory_growth, "min-max range")


def compare_records(old: Record, new: Record, t: Thresholds) -> RowResult:
    metrics: list[MetricChange] = []
    if new.error and not old.error:
        metrics.append(MetricChange("error", None, None, None, ERROR, new.error))
    for col in EXACT_COLUMNS:
        a, b = old.exact.get(col), new.exact.get(col)
        if a is None or b is None:
            continue
        if a != b:
            pct = 100.0 * (b - a) / a if a else None
            metrics.append(MetricChange(col, a, b, pct, MODEL, "exact figure changed"))
        else:
            metrics.append(MetricChange(col, a, b, 0.0, SAME))
    for phase in PHASES:
        if phase in old.latency and phase in new.latency:
            metrics.append(_latency(phase, old.latency[phase], new.latency[phase], t))
        if phase in old.memory and phase in new.memory:
            metrics.append(_memory(phase, old.memory[phase], new.memory[phase], t))
    status = min((m.status for m in metrics), key=SEVERITY.__getitem__, default=SAME)
    return RowResult(new.kind, new.name, new.config, status, metrics)


def _timing_setups(records: list[Record]) -> set[str]:
    return {f"{s.threads} threads" for r in records for s in r.latency.values() if s.threads}


def environment_warnings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    warnings = []
    for key, label in (("device", "device"), ("device_name", "device model"),
                       ("torch_version", "torch version"), ("lrprof_version", "lrprof version")):
        a, b = old.get(key), new.get(key)
        # A CSV row knows 'cuda', its JSON 'cuda:0': devices compare by type.
        same = (str(a).split(":")[0] == str(b).split(":")[0]) if key == "device" else str(a) == str(b)
        if a and b and not same:
            warnings.append(f"{label} differs: {a} (old) vs {b} (new)")
    return warnings


def _by_key(loaded: Loaded, warnings: list[str]) -> dict[tuple, Record]:
    by_key: dict[tuple, Record] = {}
    for record in loaded.records:
        key = _key(record)
        if key in by_key:
            warnings.append(f"{loaded.path}: rows {by_key[key].name!r} and {record.name!r} have the "
                            "same configuration; only the first is compared")
            continue
        by_key[key] = record
    return by_key


def compare(old_path: Path, new_path: Path, thresholds: Thresholds | None = None,
            strict: bool = False) -> Comparison:
    thresholds = thresholds or Thresholds()
    old, new = load(old_path), load(new_path)
    warnings = environment_warnings(old.environment, new.environment)
    old_threads, new_threads = _timing_setups(old.records), _timing_setups(new.records)
    if old_threads and new_threads and old_threads != new_threads:
        warnings.append(f"CPU timings ran on different thread counts: {', '.join(sorted(old_threads))} "
                        f"(old) vs {', '.join(sorted(new_threads))} (new)")
    if strict and warnings:
        raise InputError("reports come from different setups (--strict): " + "; ".join(warnings))
    old_by_key, new_by_key = _by_key(old, warnings), _by_key(new, warnings)
    matched = [k for k in new_by_key if k in old_by_key]
    old_rest = [old_by_key[k] for k in old_by_key if k not in new_by_key]
    new_rest = [new_by_key[k] for k in new_by_key if k not in old_by_key]
    unmatched = ([unmatched_entry(r, new_rest, "old") for r in old_rest]
                 + [unmatched_entry(r, old_rest, "new") for r in new_rest])
    if not matched:
        first = next((unmatched_text(e) for e in unmatched if e["in"] == "new"), "it has no rows")
        raise InputError(f"no row of {new_path} matches a row of {old_path} by configuration: "
                         f"{first}")
    rows = [compare_records(old_by_key[k], new_by_key[k], thresholds) for k in matched]
    rows.sort(key=lambda r: (SEVERITY[r.status], -r.worst_change))
    only_old = [r.name for r in old_rest]
    only_new = [r.name for r in new_rest]
    return Comparison(old_path, new_path, rows, only_old, only_new, warnings, thresholds, unmatched)


# ---- rendering ----------------------------------------------------------------------------


def verdict_line(c: Comparison) -> str:
    counts: dict[str, int] = {}
    for r in c.rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: SEVERITY[i[0]]))
    head = "REGRESSION" if c.regression else "no regression"
    missing = f"; {len(c.only_old)} baseline rows missing (--require-all)" if c.missing_fails else ""
    return f"{head}: {len(c.rows)} matched rows ({tally}){missing}"


def table_rows(c: Comparison, include_same: bool) -> list[list[str]]:
    out = []
    for r in c.rows:
        shown = [m for m in r.metrics if m.status != SAME] or (r.metrics[:1] if include_same else [])
        if r.status == SAME and not include_same:
            continue
        for m in shown:
            change = "" if m.change_pct is None else f"{m.change_pct:+.1f}%"
            out.append([r.status, r.name, m.metric, fmt(m.old), fmt(m.new), change, m.why])
    return out


HEADERS = ["status", "row", "metric", "old", "new", "change", "why"]


def render_text(c: Comparison) -> str:
    from tabulate import tabulate

    lines = [f"warning: {w}" for w in c.warnings]
    lines.append(verdict_line(c))
    rows = table_rows(c, include_same=False)
    if rows:
        lines.append(tabulate(rows, headers=HEADERS, tablefmt="simple", disable_numparse=True))
    lines += _unmatched_lines(c)
    return "\n".join(lines)


def _unmatched_lines(c: Comparison) -> list[str]:
    lines = []
    for where, path in (("old", c.old), ("new", c.new)):
        texts = [unmatched_text(e) for e in c.unmatched if e["in"] == where]
        if texts:
            lines.append(f"only in {path} (not compared): " + "; ".join(texts))
    return lines


def render_markdown(c: Comparison) -> str:
    from tabulate import tabulate

    t = c.thresholds
    parts = [f"## lrprof compare: {verdict_line(c)}", ""]
    parts += [f"> **warning:** {w}" for w in c.warnings] + ([""] if c.warnings else [])
    parts.append(f"Old `{c.old}`, new `{c.new}`. Thresholds: slowdown {100 * t.max_slowdown:g}%, "
                 f"memory growth {100 * t.max_memory_growth:g}%; a noisy change counts only past "
                 "its threshold and outside both runs' spread (IQR, or min-max under "
                 f"{MIN_RUNS_FOR_IQR} runs). Exact figures must be equal.")
    parts.append("")
    rows = table_rows(c, include_same=False)
    if rows:
        parts += [tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True), ""]
    same = sum(1 for r in c.rows if r.status == SAME)
    if same:
        parts += [f"{same} row(s) unchanged.", ""]
    parts += [f"- {line}" for line in _unmatched_lines(c)]
    return "\n".join(parts).rstrip() + "\n"


def render_json(c: Comparison) -> str:
    return json.dumps(c.to_dict(), indent=2, default=str) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
