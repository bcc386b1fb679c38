"""The statistics behind the gate, on synthetic samples whose answers are known: the ratio of
medians, its two-level bootstrap interval, the Mann-Whitney p beside it, pooled replicates,
and the bounds that flag a timing unreliable."""

from __future__ import annotations

import numpy as np
import pytest

from lrprof.gate.stats import mann_whitney_p, point_ratio, ratio_test
from lrprof.measure import noise
from lrprof.measure.timing import Stats

RUNS = [1.00, 1.02, 0.99, 1.01, 0.98, 1.03, 1.00, 0.97, 1.02, 1.01]  # 1-3 % spread, median 1.005


def scaled(values, factor):
    return [v * factor for v in values]


def test_identical_samples_give_ratio_one_and_an_interval_around_it():
    t = ratio_test([RUNS], [list(RUNS)])
    assert t.ratio == pytest.approx(1.0)
    assert t.low < 1.0 < t.high
    assert not t.significant
    assert t.processes == (1, 1)


def test_a_scaled_copy_gives_the_scale_and_a_significant_interval():
    t = ratio_test([RUNS], [scaled(RUNS, 1.3)])
    assert t.ratio == pytest.approx(1.3)
    assert t.low > 1.2 and t.high < 1.4  # the runs spread 3 %: the interval is tight
    assert t.significant


def test_the_interval_is_deterministic_for_a_seed():
    a = ratio_test([RUNS], [scaled(RUNS, 1.1)], seed=3)
    b = ratio_test([RUNS], [scaled(RUNS, 1.1)], seed=3)
    assert (a.low, a.high) == (b.low, b.high)


def test_drift_between_processes_is_not_significant_though_pooled_runs_say_it_is():
    """Three processes per side at 0.9, 1.0, 1.1 (old) and 1.0, 1.1, 1.2 (new): each run's
    spread is 1-3 %, so the pooled runs differ beyond doubt for a test that takes them as
    independent (Mann-Whitney p 0.0002), but a process of the new side can be faster than
    one of the old: resampling processes puts 1 inside the interval."""
    old = [scaled(RUNS, f) for f in (0.9, 1.0, 1.1)]
    new = [scaled(RUNS, f) for f in (1.0, 1.1, 1.2)]
    t = ratio_test(old, new)
    assert t.mann_whitney_p is not None and t.mann_whitney_p < 0.002
    assert t.low < 1.0 < t.high
    assert not t.significant
    one_each = ratio_test([scaled(RUNS, 1.10)], [scaled(RUNS, 1.20)])
    assert one_each.significant  # one process per side cannot see the drift


def test_consistent_processes_are_significant():
    old = [scaled(RUNS, f) for f in (0.99, 1.00, 1.01)]
    new = [scaled(RUNS, 1.3 * f) for f in (1.01, 0.99, 1.00)]
    t = ratio_test(old, new)
    assert t.ratio == pytest.approx(1.3, rel=0.01)
    assert t.significant and t.low > 1.2


def test_normalised_ratio_cancels_a_slower_machine():
    """Row and baseline both 1.3x slower (the machine): normalised ratio 1, not significant;
    only the row slower (the code): 1.3, significant."""
    row, base = [RUNS, scaled(RUNS, 1.02)], [scaled(RUNS, 0.5), scaled(RUNS, 0.51)]
    machine = ratio_test(row, [scaled(g, 1.3) for g in row], base, [scaled(g, 1.3) for g in base])
    assert machine.ratio == pytest.approx(1.0)
    assert not machine.significant
    code = ratio_test(row, [scaled(g, 1.3) for g in row], base, [list(g) for g in base])
    assert code.ratio == pytest.approx(1.3)
    assert code.significant


def test_normalised_pairs_processes_of_row_and_baseline():
    """Each process ran at its own machine speed (0.8x .. 1.25x), row and baseline alike:
    pairing them by process cancels it, so the interval stays tight around 1."""
    speeds_old, speeds_new = (0.8, 1.0, 1.25), (1.25, 0.8, 1.0)
    old = [scaled(RUNS, s) for s in speeds_old]
    old_ref = [scaled(RUNS, 0.5 * s) for s in speeds_old]
    new = [scaled(RUNS, s) for s in speeds_new]
    new_ref = [scaled(RUNS, 0.5 * s) for s in speeds_new]
    t = ratio_test(old, new, old_ref, new_ref)
    assert t.ratio == pytest.approx(1.0, abs=0.02)
    assert 0.95 < t.low <= t.high < 1.05


def test_point_ratio_is_the_ratio_of_pooled_medians():
    assert point_ratio([[1, 2, 3]], [[2, 4, 6]]) == pytest.approx(2.0)
    assert point_ratio([[1, 2], [3]], [[4, 5, 6]]) == pytest.approx(2.5)
    assert point_ratio([[2.0]], [[3.0]], [[1.0]], [[2.0]]) == pytest.approx(0.75)


def test_mann_whitney_exact_small_sample():
    # new entirely above old, 3 and 3 runs: exact two-sided p = 2 / C(6, 3) = 0.1
    assert mann_whitney_p([[1, 2, 3]], [[4, 5, 6]]) == pytest.approx(0.1)
    assert mann_whitney_p([[1, 1]], [[1, 1]]) is None


def test_mismatched_reference_is_refused():
    with pytest.raises(ValueError):
        ratio_test([RUNS, RUNS], [RUNS], [RUNS], [RUNS])


def test_false_significance_rate_with_drifting_processes():
    """Identical code, processes drifting 5 % (log-normal), 10 runs each: with 10 processes
    a side the 99 % interval excludes 1 in few of 100 simulated pairs (the bootstrap of few
    clusters runs a little narrow; with 1 process a side nearly every pair would be called
    significant)."""
    rng = np.random.default_rng(7)

    def side(processes):
        return [list(np.exp(rng.normal(rng.normal(0, 0.05), 0.02, 10))) for _ in range(processes)]

    significant = sum(ratio_test(side(10), side(10), resamples=1000, seed=i).significant
                      for i in range(100))
    assert significant <= 5
    single = sum(ratio_test(side(1), side(1), resamples=500, seed=i).significant for i in range(30))
    assert single >= 15


# ---- pooled replicates ------------------------------------------------------------------------


def test_pooled_stats_keep_processes_apart():
    a = Stats.from_times([1.0, 1.1, 1.2], 10, "m", 1)
    b = Stats.from_times([2.0, 2.1], 20, "m", 1)
    pooled = Stats.pooled([a, None, b])
    assert pooled.samples_ms == (1.0, 1.1, 1.2, 2.0, 2.1)
    assert pooled.process_runs == (3, 0, 2)
    assert pooled.processes == 3
    assert pooled.process_samples() == [(1.0, 1.1, 1.2), (), (2.0, 2.1)]
    assert pooled.process_medians_ms() == [1.1, 2.05]
    assert pooled.median_ms == 1.2 and pooled.runs == 5
    assert Stats.from_dict(pooled.to_dict()) == pooled


def test_pooled_fault_figures_are_weighted_by_calls():
    a = Stats(1, 1, 1, 1, 1, 2, 10, "m", 1, (1.0, 1.0), minor_faults_per_call=1.0,
              major_faults_per_call=0.0, involuntary_switches_per_s=0.0)
    b = Stats(1, 1, 1, 1, 1, 2, 30, "m", 1, (1.0, 1.0), minor_faults_per_call=3.0,
              major_faults_per_call=0.0, involuntary_switches_per_s=40.0)
    pooled = Stats.pooled([a, b])
    assert pooled.minor_faults_per_call == pytest.approx((1 * 20 + 3 * 60) / 80)
    assert pooled.involuntary_switches_per_s == pytest.approx(30.0)  # b timed 3x longer


# ---- reliability bounds ---------------------------------------------------------------------


def test_quiet_timing_is_reliable():
    assert noise.reliability(Stats.from_times(RUNS, 1, "m", 1)) == []


def test_wide_spread_is_unreliable():
    reasons = noise.reliability(Stats.from_times([1.0, 1.5, 0.7, 1.3, 0.8, 1.2], 1, "m", 1))
    assert any(r.startswith("IQR") for r in reasons)


def test_trend_within_a_run_is_unreliable():
    runs = [1.0] * 6 + [1.3] * 6  # the machine got slower half way
    reasons = noise.reliability(Stats.from_times(runs, 1, "m", 1))
    assert any("drifted +30%" in r for r in reasons)


def test_drift_between_processes_is_unreliable():
    pooled = Stats.pooled([Stats.from_times(RUNS, 1, "m", 1), Stats.from_times(scaled(RUNS, 1.3), 1, "m", 1)])
    assert any("process medians" in r for r in noise.reliability(pooled))
    close = Stats.pooled([Stats.from_times(RUNS, 1, "m", 1), Stats.from_times(scaled(RUNS, 1.05), 1, "m", 1)])
    assert not any("process medians" in r for r in noise.reliability(close))


def test_preemption_is_unreliable():
    busy = Stats(1, 1, 1, 1, 1, 2, 1, "m", 1, (1.0, 1.0), involuntary_switches_per_s=250.0)
    assert any("preempted 250" in r for r in noise.reliability(busy))


@pytest.mark.parametrize(("cpus", "others", "threads", "warned"), [
    ([0, 1], 0.0, 2, False), ([0, 1], 1.0, 2, True), ([0, 1], 0.2, 2, False), ([1], 0.0, 2, True),
    ([1], 0.2, 1, False), ([0, 1], 1.0, 1, False)])
def test_oversubscription(cpus, others, threads, warned):
    snap = {"affinity": cpus, "other_runnable": others}
    warning = noise.oversubscription(snap, snap, threads)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith("oversubscribed") and f"{threads} torch threads" in warning


def test_snapshot_reads_this_machine():
    import torch

    snap = noise.snapshot(torch.device("cpu"))
    assert snap["affinity"] and all(isinstance(c, int) for c in snap["affinity"])
    assert snap["load_average"] is None or len(snap["load_average"]) == 3
    assert snap["other_runnable"] is None or snap["other_runnable"] >= 0
