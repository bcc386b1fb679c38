"""What a compared metric and row are called: the statuses, the thresholds, one metric's
change and one row's result, and the rules that turn a ratio test into a verdict (worse,
better, same, noise or inconclusive) and a row's metrics into its status, with what would
decide an inconclusive row. `lrprof.gate.compare` applies them to two reports,
`lrprof.gate.rerun` to what a rerun measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lrprof.gate import stats as gate_stats
from lrprof.record.records import INSTRUCTION_COLUMNS, Record

WORSE, MODEL, ERROR, NOISE, BETTER, SAME = "worse", "model change", "error", "noise", "better", "same"
INCONCLUSIVE = "inconclusive"  # past the threshold, but neither a regression nor noise for sure


NOT_COMPARED = "not compared"  # nothing in common to compare (the old row failed): never "same"


SEVERITY = {ERROR: 0, MODEL: 1, WORSE: 2, INCONCLUSIVE: 3, NOT_COMPARED: 4, NOISE: 5, BETTER: 6, SAME: 7}


FAILING = {ERROR, MODEL, WORSE}


MIN_RUNS_FOR_IQR = 4


NORMALIZE = ("none", "baseline")


# Fresh processes of identical code drift 0.88x-1.17x on the 2-core machines: with one
# process on a side, a significant change inside this band may be that drift.
UNSEEN_DRIFT = 0.20


# What decides an inconclusive row, by reason.
DECIDE_REPEAT = "--repeat N (more fresh processes per side: the interval then sees their drift)"
DECIDE_QUIET = "a quieter runner (nothing else on the timed cores)"
DECIDE_RERUN = "--on-inconclusive rerun (re-time the row here, interleaved with its baseline)"
DECIDE_INSTRUCTIONS = "--instructions (deterministic instruction counts gate the CPU path)"


@dataclass(frozen=True)
class Thresholds:
    max_slowdown: float = 0.10  # fraction: 0.10 = 10 %
    max_memory_growth: float = 0.05
    max_instruction_growth: float = 0.01
    allow_model_change: bool = False
    require_all: bool = False  # a baseline row missing from the new report fails
    normalize: str = "none"  # "baseline": latency relative to the same run's 3x3 conv row
    confidence: float = gate_stats.CONFIDENCE


@dataclass
class MetricChange:
    metric: str
    old: float | int | None
    new: float | int | None
    change_pct: float | None
    status: str
    why: str = ""
    # latency: the ratio's bootstrap interval and the Mann-Whitney p of the pooled runs
    test: dict[str, Any] | None = None


@dataclass
class RowResult:
    kind: str
    name: str
    config: dict[str, Any]
    status: str
    metrics: list[MetricChange] = field(default_factory=list)
    unreliable: list[str] = field(default_factory=list)  # why a timing is not to be trusted
    # inconclusive: why, what would decide it, and what a rerun measured (lrprof.gate.rerun)
    reasons: list[str] = field(default_factory=list)
    decide: list[str] = field(default_factory=list)
    rerun: dict[str, Any] | None = None

    @property
    def worst_change(self) -> float:
        changes = [m.change_pct for m in self.metrics if m.status == self.status and m.change_pct]
        return max((abs(c) for c in changes), default=0.0)


def judge(metric: str, a: float, b: float, test: gate_stats.RatioTest, t: Thresholds,
          facts: dict[str, Any], single_process: bool) -> MetricChange:
    """The verdict on one ratio test: same within the threshold; past it, worse or better
    when the interval excludes 1 (and, with one process on a side, clears the drift between
    processes that interval cannot see); else noise when the interval rules out a slowdown
    past the threshold, inconclusive when it does not."""
    pct = 100 * (test.ratio - 1)
    limit = f"{100 * t.max_slowdown:g}%"
    if abs(test.ratio - 1) <= t.max_slowdown:
        return MetricChange(metric, a, b, pct, SAME, f"within {limit} ({test.interval_text()})", facts)
    if not test.significant:
        status = NOISE if test.high <= 1 + t.max_slowdown else INCONCLUSIVE
        return MetricChange(metric, a, b, pct, status,
                            f"past {limit} but not significant: {test.interval_text()} includes 1", facts)
    drift = 1 + UNSEEN_DRIFT
    if single_process and not (test.low > drift or test.high < 1 / drift):
        return MetricChange(metric, a, b, pct, INCONCLUSIVE,
                            f"past {limit}, {test.interval_text()}, but one process per side cannot "
                            f"tell that from the drift between fresh processes (up to "
                            f"{100 * UNSEEN_DRIFT:g}%)", facts)
    return MetricChange(metric, a, b, pct, WORSE if test.ratio > 1 else BETTER,
                        f"past {limit} and significant: {test.interval_text()}", facts)


def is_latency(metric: str) -> bool:
    return metric.endswith(("_median_ms", "_latency_vs_baseline"))


def settle(result: RowResult, new: Record) -> None:
    """The row's status (its worst metric), and for an inconclusive row its reasons and what
    would decide it."""
    result.status = min((m.status for m in result.metrics), key=SEVERITY.__getitem__)
    result.reasons, result.decide = [], []
    judged = [m for m in result.metrics if m.status == INCONCLUSIVE]
    if not judged:
        return
    decide: list[str] = []
    for m in judged:
        result.reasons.append(f"{m.metric}: {m.why}")
        if result.unreliable:
            decide.append(DECIDE_QUIET)
        if (m.test or {}).get("processes") is None or min(m.test["processes"]) < 5:
            decide.append(DECIDE_REPEAT)
    if result.unreliable:
        result.reasons.append("timing flagged unreliable: " + "; ".join(result.unreliable))
    if result.kind == "layer" and result.rerun is None:
        decide.append(DECIDE_RERUN)
    if str(new.config.get("device", "cpu")).startswith("cpu") and not any(
            c in new.counted for c in INSTRUCTION_COLUMNS):
        decide.append(DECIDE_INSTRUCTIONS)
    result.decide = list(dict.fromkeys(decide))
