"""`compare --on-inconclusive rerun`: what to re-time, and the verdict on what was re-timed.

An inconclusive row's configuration (`config` in the new report) names everything needed to
build it again; its 3x3 conv baseline row, when the new report has one, is re-timed beside
it. The command (`lrprof.cli.compare`) times these rows here, in fresh processes one after
the other, all rows interleaved in each (`lrprof.profile.replicate.retime`), until the rows
are decided or the budget is spent. Then each row is judged again on the old report's
samples against the rerun's:

- relative to the baseline row when both reports have one (each side's median over its
  baseline's, the baseline timed in the same processes): this machine's speed, now, cancels,
  whatever machine or load the old report saw;
- the rerun's processes give the interval the drift between fresh processes; an old side
  of one process borrows that drift (`lrprof.gate.stats.process_factors`), since its own
  interval cannot show it;
- a change past the threshold is worse when the interval excludes 1, within the threshold
  is the same, and anything else stays inconclusive. The rerun's own timings are checked
  like a report's (`lrprof.measure.noise`): the drift between its processes is in the
  interval, but a rerun that was itself disturbed cannot decide a change past the threshold
  either way, nor call a row the same while its interval reaches past the threshold:
  inconclusive. Disturbed means, for a rerun relative to the baseline row, per-process
  ratios that scatter (IQR past 10% of their median) or a CPU oversubscribed in most of its
  processes: the row and its baseline take turns in every process, so a machine that slows
  or drifts slows both and the ratio holds (the absolute timings' flags are then shown, not
  decisive); without a baseline row, the absolute timings' flags (IQR, drift within a run,
  preemption, an oversubscribed CPU) decide.

The rerun stops early (after at least three processes) only when every row is decided with
confidence: worse or better, or an interval wholly within the threshold.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from lrprof.gate import stats as gate_stats
from lrprof.gate.match import row_key
from lrprof.gate.verdict import (
    BETTER,
    INCONCLUSIVE,
    NOISE,
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
from lrprof.measure.timing import Stats
from lrprof.record.records import Record

MIN_PROCESSES = 3  # before a rerun may stop early: the drift between processes needs a few
RATIO_IQR_BOUND = 0.10  # a normalised rerun's per-process ratios may scatter this much (IQR / median)


@dataclass
class Item:
    """One inconclusive row to re-time, with what its verdict needs."""

    row: RowResult
    old: Record
    new: Record
    old_base: Record | None  # the baseline rows (3x3 conv of the same run), when both have one
    new_base: Record | None
    phases: list[str] = field(default_factory=list)


def plan(comparison) -> tuple[list[Item], list[str]]:
    """The rows a rerun can re-time, and why the others cannot (one line each)."""
    old_loaded, new_loaded = comparison.loaded
    old_by_key = {row_key(r): r for r in old_loaded.records}
    new_by_name, old_by_name = new_loaded.by_name(), old_loaded.by_name()
    items, skipped = [], []
    for row in comparison.inconclusive:
        new = next((r for r in new_loaded.records if r.name == row.name and r.config == row.config), None)
        old = old_by_key.get(row_key(new)) if new is not None else None
        if new is None or old is None or row.kind != "layer":
            skipped.append(f"{row.name}: a {row.kind} row; only layer rows can be re-timed from their "
                           "configuration")
            continue
        old_base = old_by_name.get(str(old.derived.get("baseline") or ""))
        new_base = new_by_name.get(str(new.derived.get("baseline") or ""))
        if old_base is None or new_base is None:
            old_base = new_base = None
        phases = [p for p in new.latency if p in old.latency
                  and (new_base is None or (p in new_base.latency and p in old_base.latency))]
        items.append(Item(row, old, new, old_base, new_base, phases))
    return items, skipped


def rows_to_time(items: list[Item]) -> list[Record]:
    """The records whose configurations are re-timed (each once): the rows and their baselines."""
    out: dict[str, Record] = {}
    for item in items:
        out.setdefault(item.new.name, item.new)
        if item.new_base is not None:
            out.setdefault(item.new_base.name, item.new_base)
    return list(out.values())


# measured: row name -> phase -> the samples of each rerun process (empty where it failed)
Measured = dict[str, dict[str, list[tuple[float, ...]]]]


def _test(item: Item, phase: str, measured: Measured, t: Thresholds,
          oversubscribed: int = 0) -> MetricChange | None:
    new_groups = list(measured.get(item.new.name, {}).get(phase, []))
    if sum(1 for g in new_groups if len(g)) < 1:
        return None
    old_stats: Stats = item.old.latency[phase]
    normalised = item.new_base is not None
    old_ref = new_ref = None
    if normalised:
        old_ref = item.old_base.latency[phase].process_samples()
        new_ref = measured.get(item.new_base.name, {}).get(phase, [])
        if len(new_ref) != len(new_groups) or len(old_ref) != old_stats.processes:
            normalised, old_ref, new_ref = False, None, None
    kept = sum(1 for g in new_groups if len(g))
    factors = None
    if old_stats.processes < 2 and kept >= 2:
        factors = gate_stats.process_factors(new_groups, new_ref)
    try:
        test = gate_stats.ratio_test(old_stats.process_samples(), new_groups, old_ref, new_ref,
                                     confidence=t.confidence, old_factors=factors)
    except ValueError:
        return None
    if normalised:
        metric = f"{phase}_latency_vs_baseline"
        a = old_stats.median_ms / item.old_base.latency[phase].median_ms
        b = test.ratio * a
    else:
        metric, a = f"{phase}_median_ms", old_stats.median_ms
        b = test.ratio * a
    facts = {"ratio": test.ratio, "ci_low": test.low, "ci_high": test.high, "confidence": test.confidence,
             "processes": list(test.processes), "mann_whitney_p": test.mann_whitney_p,
             "method": "two-level bootstrap of the ratio of medians; rerun"
                       + ("; old side borrows the rerun's drift between processes" if factors else "")}
    change = judge(metric, a, b, test, t, facts, single_process=min(test.processes) < 2 and factors is None)
    against = "relative to its baseline row, " if normalised else ""
    change.why = f"rerun here ({against}{kept} fresh processes): {change.why}"
    if normalised:
        disturbed = _ratio_disturbed(new_groups, new_ref, oversubscribed)
        waived = _disturbed(new_groups, 0) + _disturbed(new_ref, 0)
        if waived and not disturbed:
            shown = "; ".join(dict.fromkeys(waived))
            change.why += (f" [absolute timings disturbed ({shown}), but the row and its baseline were "
                           "interleaved in every process and their ratio held steady: the ratio is judged]")
    else:
        disturbed = _disturbed(new_groups, oversubscribed)
    if disturbed and (change.status in (WORSE, BETTER, NOISE)
                      or (change.status == SAME and test.high > 1 + t.max_slowdown)):
        change.status = INCONCLUSIVE
        change.why += f" [the rerun was disturbed too: {'; '.join(dict.fromkeys(disturbed))}]"
    return change


def _disturbed(groups: list[tuple[float, ...]], oversubscribed: int) -> list[str]:
    """Why the rerun's own timing of a row is not to be trusted (the drift between its
    processes aside: the interval has it)."""
    parts = [Stats.from_times(list(g), 1, "rerun") for g in groups if len(g) >= 2]
    if not parts:
        return []
    reasons = [r for r in noise.reliability(Stats.pooled(parts)) if not r.startswith("process medians")]
    if oversubscribed:
        reasons.append(f"oversubscribed in {oversubscribed} of its processes")
    return reasons


def _ratio_disturbed(groups: list[tuple[float, ...]], reference: list[tuple[float, ...]],
                     oversubscribed: int) -> list[str]:
    """Why a normalised rerun's ratio (the row over its baseline, timed interleaved in each
    process) is not to be trusted. A slower or drifting machine slows both rows of a
    process alike, so the absolute timings' flags (IQR, drift within a run, preemption)
    do not apply to the ratio; what does: the per-process ratios scattering more than
    RATIO_IQR_BOUND (their IQR over their median: something hit one row and not the other),
    or the CPU oversubscribed in more than half of the processes."""
    ratios = [_median(g) / _median(r) for g, r in zip(groups, reference, strict=False)
              if len(g) and len(r) and _median(r) > 0]
    reasons = []
    if len(ratios) >= 4:
        q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        if median > 0 and (q3 - q1) / median > RATIO_IQR_BOUND:
            reasons.append(f"per-process ratios to the baseline scatter: IQR {(q3 - q1) / median:.0%} of "
                           f"their median (bound {RATIO_IQR_BOUND:.0%})")
    elif len(ratios) < MIN_PROCESSES:
        reasons.append(f"{len(ratios)} process(es) with both rows timed (at least {MIN_PROCESSES})")
    if oversubscribed and 2 * oversubscribed > len(groups):
        reasons.append(f"oversubscribed in {oversubscribed} of its {len(groups)} processes")
    return reasons


def tests(items: list[Item], measured: Measured, t: Thresholds,
          oversubscribed: int = 0) -> dict[str, list[MetricChange]]:
    """Each item's latency verdicts on what the rerun measured so far."""
    out = {}
    for item in items:
        out[item.row.name] = [c for p in item.phases
                              if (c := _test(item, p, measured, t, oversubscribed)) is not None]
    return out


def settled(items: list[Item], measured: Measured, t: Thresholds, processes: int) -> bool:
    """Every row decided (no metric still inconclusive) after enough processes to stop."""
    if processes < MIN_PROCESSES:
        return False
    verdicts = tests(items, measured, t)
    return all(verdicts[i.row.name] and all(_decided(m, t) for m in verdicts[i.row.name]) for i in items)


def _decided(m: MetricChange, t: Thresholds) -> bool:
    """Worse or better with confidence, or the same with the whole interval within the
    threshold: more processes would not change it (a point estimate within the threshold
    with a wide interval would)."""
    if m.status in (WORSE, BETTER, NOISE):
        return True
    test = m.test or {}
    return m.status == SAME and test.get("ci_low", 0) >= 1 / (1 + t.max_slowdown) and \
        test.get("ci_high", math.inf) <= 1 + t.max_slowdown


def apply(comparison, items: list[Item], skipped: list[str], measured: Measured,
          facts: dict[str, Any]) -> None:
    """Each re-timed row judged again (its latency metrics replaced by the rerun's), the
    rows re-sorted, and what the rerun measured kept in the comparison."""
    t = comparison.thresholds
    verdicts = tests(items, measured, t, int(facts.get("oversubscribed") or 0))
    rows_facts = []
    for item in items:
        changes = verdicts[item.row.name]
        row = item.row
        if changes:
            done = {_phase(m.metric) for m in changes}
            row.metrics = [m for m in row.metrics if not (is_latency(m.metric) and _phase(m.metric) in done)]
            row.metrics += changes
        medians = {p: [float(_median(g)) for g in measured.get(item.new.name, {}).get(p, []) if len(g)]
                   for p in item.phases}
        row.rerun = {"processes": facts.get("processes"), "seconds": facts.get("seconds"),
                     "baseline": item.new_base.name if item.new_base is not None else None,
                     "process_medians_ms": medians,
                     "verdicts": [{"metric": m.metric, "status": m.status, "why": m.why} for m in changes]}
        if not changes:
            row.rerun["failed"] = facts.get("failed") or "the rerun measured nothing for this row"
        settle(row, item.new)
        rows_facts.append({"row": row.name, "status": row.status, **row.rerun})
    comparison.rows.sort(key=lambda r: (SEVERITY[r.status], -r.worst_change))
    comparison.rerun = {**facts, "rows": rows_facts, "not_rerun": skipped}


def _phase(metric: str) -> str:
    for suffix in ("_latency_vs_baseline", "_median_ms"):
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


def _median(group: tuple[float, ...]) -> float:
    return statistics.median(group)
