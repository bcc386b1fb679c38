"""Two reports in, a regression verdict out.

Rows are matched by their configuration. Exact figures (parameters, MACs) must be equal:
a difference is a change of the model. Instruction counts (`--instructions`) are nearly
deterministic and gated by their own small threshold. Latency regresses only when the
change of the median is past the threshold AND significant: the 99 % two-level bootstrap
interval of the ratio of medians (processes, then runs within each; `lrprof.gate.stats`)
excludes 1. Reports without raw samples fall back to the older rule: the two runs' spreads
(IQR, min-max under 4 runs) must not overlap. Memory uses that spread rule.

A gate fails closed: a latency change past the threshold that cannot be called a regression
or noise with the confidence asked for is **inconclusive** (its own exit status, 3), never a
pass. That is: the interval includes 1; or a side has one process, whose interval cannot see
the drift between fresh processes (up to 0.88x-1.17x here), and the interval does not clear
that drift; or the spreads of reports without samples overlap; or either side's timing is
flagged unreliable (`lrprof.measure.noise`) and the change is past the threshold, or its
interval reaches past it. Each inconclusive row names its reasons and
what would decide it; `lrprof.gate.rerun` re-times such rows on this machine.

`normalize="baseline"` gates each row's latency relative to the 3x3 conv baseline row timed
in the same run (same processes), which cancels the speed of the machine.

Every value decided on is validated first (`lrprof.record.validate`): a NaN, a negative, a
string or a null where a figure belongs, or a figure the old row has and the new row lacks,
is one input error naming the file, the row and the field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lrprof.gate import stats as gate_stats
from lrprof.gate.match import (
    by_key,
    environment_warnings,
    timing_setups,
    timing_warnings,
    unmatched_entry,
    unmatched_text,
)
from lrprof.gate.verdict import (  # noqa: F401  (the verdict's names, for callers of compare)
    BETTER,
    ERROR,
    FAILING,
    INCONCLUSIVE,
    MIN_RUNS_FOR_IQR,
    MODEL,
    NOISE,
    NORMALIZE,
    NOT_COMPARED,
    SAME,
    SEVERITY,
    WORSE,
    MetricChange,
    RowResult,
    Thresholds,
    is_latency,
    judge,
    settle,
)
from lrprof.measure import noise
from lrprof.measure.memory import MemoryStats
from lrprof.measure.timing import Stats
from lrprof.record.load import Loaded, load
from lrprof.record.records import EXACT_COLUMNS, INSTRUCTION_COLUMNS, PHASES, Record
from lrprof.spec.errors import InputError, SpecError


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
    on_inconclusive: str = "fail"  # what the command did with inconclusive rows
    rerun: dict[str, Any] | None = None  # what --on-inconclusive rerun measured
    # the reports read, for a rerun (not part of the verdict's JSON)
    loaded: tuple[Loaded, Loaded] | None = field(default=None, repr=False)

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

    @property
    def unreliable(self) -> list[RowResult]:
        return [r for r in self.rows if r.unreliable]

    @property
    def inconclusive(self) -> list[RowResult]:
        """Rows with a latency change past the threshold that could not be judged."""
        return [r for r in self.rows if any(m.status == INCONCLUSIVE for m in r.metrics)]

    @property
    def verdict(self) -> str:
        """regression (exit 1) before inconclusive (exit 3) before pass (exit 0)."""
        if self.regression:
            return "regression"
        return INCONCLUSIVE if self.inconclusive else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "lrprof.gate.compare/1",
            "old": str(self.old),
            "new": str(self.new),
            "verdict": self.verdict,
            "regression": self.regression,
            "inconclusive": [{"row": r.name, "reasons": r.reasons, "decide": r.decide}
                             for r in self.inconclusive],
            "on_inconclusive": self.on_inconclusive,
            "rerun": self.rerun,
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


def _spread_rule(phase: str, old: Stats, new: Stats, t: Thresholds) -> MetricChange:
    """Reports without raw samples: IQRs when both sides have enough runs, else min-max."""
    if min(old.runs, new.runs) >= MIN_RUNS_FOR_IQR:
        name, old_span, new_span = "IQR", (old.q1_ms, old.q3_ms), (new.q1_ms, new.q3_ms)
    else:
        name, old_span, new_span = "min-max range", (old.min_ms, old.max_ms), (new.min_ms, new.max_ms)
    change = _noisy(f"{phase}_median_ms", old.median_ms, new.median_ms, old_span, new_span,
                    t.max_slowdown, name)
    if old.median_ms != new.median_ms:
        change.why += " (too few raw samples for a test: spread rule)"
    if change.status == NOISE and new.median_ms > old.median_ms:  # slower, spreads overlap: not judged
        change.status = INCONCLUSIVE
    return change


def _testable(*stats: Stats | None) -> bool:
    return all(s is not None and len(s.samples_ms) >= gate_stats.MIN_SAMPLES for s in stats)


def _latency(phase: str, old: Stats, new: Stats, t: Thresholds, old_ref: Stats | None = None,
             new_ref: Stats | None = None) -> MetricChange:
    """The ratio of medians (normalised: each over its baseline's) past the threshold and
    significant (its bootstrap interval excludes 1) -> worse or better."""
    normalised = old_ref is not None and new_ref is not None
    if not _testable(old, new, *((old_ref, new_ref) if normalised else ())):
        if normalised:
            raise InputError(f"--normalize baseline needs {gate_stats.MIN_SAMPLES}+ raw samples per "
                             f"row (reports from lrprof with samples_ms); {phase} has fewer")
        change = _spread_rule(phase, old, new, t)
    else:
        change = _tested(phase, old, new, t, old_ref, new_ref)
    if old.calls_per_run != new.calls_per_run:  # block means spread less than single calls
        change.why += f" (runs average {old.calls_per_run} vs {new.calls_per_run} calls)"
    return change


def _tested(phase: str, old: Stats, new: Stats, t: Thresholds, old_ref: Stats | None,
            new_ref: Stats | None) -> MetricChange:
    normalised = old_ref is not None and new_ref is not None
    if normalised:
        metric = f"{phase}_latency_vs_baseline"
        a, b = old.median_ms / old_ref.median_ms, new.median_ms / new_ref.median_ms
        test = gate_stats.ratio_test(old.process_samples(), new.process_samples(),
                                     old_ref.process_samples(), new_ref.process_samples(),
                                     confidence=t.confidence)
    else:
        metric, a, b = f"{phase}_median_ms", old.median_ms, new.median_ms
        test = gate_stats.ratio_test(old.process_samples(), new.process_samples(),
                                     confidence=t.confidence)
    facts = {"ratio": test.ratio, "ci_low": test.low, "ci_high": test.high,
             "confidence": test.confidence, "processes": list(test.processes),
             "mann_whitney_p": test.mann_whitney_p, "method": "two-level bootstrap of the ratio of medians"}
    if old.samples_ms == new.samples_ms and (not normalised or old_ref.samples_ms == new_ref.samples_ms):
        return MetricChange(metric, a, b, 0.0, SAME, "unchanged", facts)
    return judge(metric, a, b, test, t, facts, single_process=min(test.processes) < 2)




def _memory(phase: str, old: MemoryStats, new: MemoryStats, t: Thresholds) -> MetricChange:
    return _noisy(f"{phase}_peak_bytes", old.peak_bytes, new.peak_bytes,
                  (old.min_bytes, old.max_bytes), (new.min_bytes, new.max_bytes),
                  t.max_memory_growth, "min-max range")


def _instructions(col: str, old: int, new: int, t: Thresholds) -> MetricChange:
    """Instructions per call under callgrind: no test, a small threshold for the little
    that still varies (allocator, Python's dicts) between processes."""
    if old == new:
        return MetricChange(col, old, new, 0.0, SAME, "unchanged")
    change = (new - old) / old if old else math.inf
    pct = 100 * change if math.isfinite(change) else None
    limit = f"{100 * t.max_instruction_growth:g}%"
    if abs(change) <= t.max_instruction_growth:
        return MetricChange(col, old, new, pct, SAME, f"within {limit}")
    return MetricChange(col, old, new, pct, WORSE if change > 0 else BETTER, f"past {limit}")


@dataclass
class _Side:
    """One report, for looking up a row's baseline and naming the file in errors."""

    path: Path
    rows: dict[str, Record] = field(default_factory=dict)


def _missing(old: Record, new: Record, old_side: _Side, new_side: _Side) -> None:
    """A figure the old row has and the new one lacks is a malformed new report (unless
    the new row failed, which is its own verdict)."""
    if new.error:
        return
    lacking = [c for c in EXACT_COLUMNS + INSTRUCTION_COLUMNS if c in old.counted and c not in new.counted]
    lacking += [f"{p} latency" for p in PHASES if p in old.latency and p not in new.latency]
    lacking += [f"{p} memory" for p in PHASES if p in old.memory and p not in new.memory]
    if lacking:
        raise InputError(f"{new_side.path}: row {new.name!r}: {lacking[0]} missing ({old_side.path} "
                         "has it; were the reports made with different options?)")


def _baseline_of(record: Record, side: _Side, phase: str) -> Stats | None:
    """The latency of the row's baseline (same run), or None if it names none."""
    name = record.derived.get("baseline")
    if not name or "measured" not in str(record.derived.get("role", "measured")):
        return None
    base = side.rows.get(name)
    if base is None:
        raise InputError(f"{side.path}: row {record.name!r}: baseline row {name!r} is not in the report")
    stats = base.latency.get(phase)
    if stats is None:
        raise InputError(f"{side.path}: row {name!r} (baseline of {record.name!r}): {phase} latency "
                         "missing, nothing to normalise by")
    return stats


def _unreliable(record: Record, side: str) -> list[str]:
    reasons = [f"{side} {phase}: {why}" for phase, stats in record.latency.items()
               for why in noise.reliability(stats)]
    if record.derived.get("oversubscribed"):
        reasons.append(f"{side}: oversubscribed")
    return reasons


def compare_records(old: Record, new: Record, t: Thresholds, old_side: _Side | None = None,
                    new_side: _Side | None = None) -> RowResult:
    old_side = old_side or _Side(Path("OLD"))
    new_side = new_side or _Side(Path("NEW"))
    _missing(old, new, old_side, new_side)
    metrics: list[MetricChange] = []
    if new.error:
        why = new.error if not old.error else f"{new.error} (failed in the old report too)"
        metrics.append(MetricChange("error", None, None, None, ERROR, why))
    old_exact, new_exact = old.exact_figures(), new.exact_figures()
    for col in EXACT_COLUMNS:
        a, b = old_exact.get(col), new_exact.get(col)
        if a is None or b is None:
            continue
        if a != b:
            pct = 100.0 * (b - a) / a if a else None
            metrics.append(MetricChange(col, a, b, pct, MODEL, "exact figure changed"))
        else:
            metrics.append(MetricChange(col, a, b, 0.0, SAME))
    for col in INSTRUCTION_COLUMNS:
        if col in old.counted and col in new.counted:
            metrics.append(_instructions(col, old.counted[col], new.counted[col], t))
    for phase in PHASES:
        if phase in old.latency and phase in new.latency:
            refs = (None, None)
            if t.normalize == "baseline":
                refs = (_baseline_of(old, old_side, phase), _baseline_of(new, new_side, phase))
                if (refs[0] is None) != (refs[1] is None):
                    raise InputError(f"{new_side.path}: row {new.name!r}: one report names a baseline "
                                     "row for it and the other does not")
            is_reference = t.normalize == "baseline" and refs[0] is None and _is_baseline_only(new)
            if not is_reference:
                metrics.append(_latency(phase, old.latency[phase], new.latency[phase], t, *refs))
        if phase in old.memory and phase in new.memory:
            metrics.append(_memory(phase, old.memory[phase], new.memory[phase], t))
    if not metrics:
        if not old.error:
            raise InputError(f"{new_side.path}: row {new.name!r}: nothing to compare with "
                             f"{old_side.path} (no figure in both rows)")
        metrics.append(MetricChange("error", None, None, None, NOT_COMPARED,
                                    f"the old row failed ({old.error}); nothing to compare"))
    unreliable = _unreliable(old, "old") + _unreliable(new, "new")
    if unreliable:
        for m in metrics:
            if is_latency(m.metric):
                m.why += " [unreliable timing]"
                if m.status in (WORSE, BETTER, NOISE):  # past the threshold on figures not to trust
                    m.status = INCONCLUSIVE
                elif m.status == SAME and m.change_pct and m.test and m.test["ci_high"] > 1 + t.max_slowdown:
                    # within the threshold by its point estimate only: on figures not to trust,
                    # a slowdown past the threshold is not ruled out
                    m.status = INCONCLUSIVE
                    m.why += f"; the interval reaches past {100 * t.max_slowdown:g}%"
    result = RowResult(new.kind, new.name, new.config, SAME, metrics, unreliable)
    settle(result, new)
    return result






def _is_baseline_only(record: Record) -> bool:
    return record.derived.get("role") == "baseline"


def _normalize_warnings(new: Loaded, matched: list[Record]) -> list[str]:
    """Normalising needs baseline rows; rows without one are gated raw, and said so."""
    timed = [r for r in matched if r.latency]
    raw = [r.name for r in timed if not r.derived.get("baseline") and not _is_baseline_only(r)]
    if timed and len(raw) == len(timed):
        raise InputError(f"--normalize baseline: no row of {new.path} names a baseline row (a layer "
                         "report measured with its conv3x3 baseline is needed)")
    if raw:
        return [f"--normalize baseline: {len(raw)} row(s) have no baseline row and are gated on raw "
                f"latency: {', '.join(raw)}"]
    return []


def compare(old_path: Path, new_path: Path, thresholds: Thresholds | None = None,
            strict: bool = False) -> Comparison:
    thresholds = thresholds or Thresholds()
    old, new = load(old_path), load(new_path)
    warnings = environment_warnings(old.environment, new.environment)
    old_threads, new_threads = timing_setups(old.records), timing_setups(new.records)
    if old_threads and new_threads and old_threads != new_threads:
        warnings.append(f"CPU timings ran on different thread counts: {', '.join(sorted(old_threads))} "
                        f"(old) vs {', '.join(sorted(new_threads))} (new)")
    if strict and warnings:
        raise InputError("reports come from different setups (--strict): " + "; ".join(warnings))
    old_by_key, new_by_key = by_key(old, warnings), by_key(new, warnings)
    matched = [k for k in new_by_key if k in old_by_key]
    old_rest = [old_by_key[k] for k in old_by_key if k not in new_by_key]
    new_rest = [new_by_key[k] for k in new_by_key if k not in old_by_key]
    unmatched = ([unmatched_entry(r, new_rest, "old") for r in old_rest]
                 + [unmatched_entry(r, old_rest, "new") for r in new_rest])
    if not matched:
        first = next((unmatched_text(e) for e in unmatched if e["in"] == "new"), "it has no rows")
        raise InputError(f"no row of {new_path} matches a row of {old_path} by configuration: "
                         f"{first}")
    warnings += timing_warnings(old, new, [old_by_key[k] for k in matched], [new_by_key[k] for k in matched])
    old_side, new_side = _Side(old_path, old.by_name()), _Side(new_path, new.by_name())
    if thresholds.normalize == "baseline":
        warnings += _normalize_warnings(new, [new_by_key[k] for k in matched])
    for loaded in (old, new):
        if loaded.partial:
            warnings.append(f"{loaded.path} is a partial report ({loaded.partial})")
    rows = [compare_records(old_by_key[k], new_by_key[k], thresholds, old_side, new_side)
            for k in matched]
    rows.sort(key=lambda r: (SEVERITY[r.status], -r.worst_change))
    only_old = [r.name for r in old_rest]
    only_new = [r.name for r in new_rest]
    return Comparison(old_path, new_path, rows, only_old, only_new, warnings, thresholds, unmatched,
                      loaded=(old, new))
