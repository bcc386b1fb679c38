"""Is a latency change real? A confidence interval for the ratio of two medians that knows
the samples come in processes.

The timed runs of one process are not independent draws of what the next process will see:
fresh processes of identical code drift apart by 0.88x-1.17x on the 2-core machines here
while each run's quartiles are 1-3 % wide. A test that treats pooled samples as independent
(Mann-Whitney U on the pooled runs, or a plain bootstrap) calls such a drift significant at
any level. So the interval comes from a two-level bootstrap: resample the processes with
replacement, then the runs within each resampled process, and take the ratio of the pooled
medians. With one process per side it reduces to the plain bootstrap of the runs (the
between-process drift is then invisible, which is what `--repeat` is for).

Normalised (`compare --normalize baseline`): each side's statistic is the row's median over
the median of its baseline row (a 3x3 conv timed interleaved in the same processes). The
baseline's runs are resampled with the same process draw as the row's, so a process that
ran on a slow machine slows both and cancels.

The Mann-Whitney U p-value of the pooled runs (scipy) is reported beside the interval for
reference (it is what asv uses); the decision uses the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.99
RESAMPLES = 2000
MIN_SAMPLES = 5  # fewer runs per side: no interval (compare falls back to the spread rule)


@dataclass(frozen=True)
class RatioTest:
    """new / old (normalised: each side over its baseline), with its bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    processes: tuple[int, int]  # old, new
    mann_whitney_p: float | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 1: the two sides differ at this confidence."""
        return self.low > 1.0 or self.high < 1.0

    def interval_text(self) -> str:
        a, b = self.processes
        procs = f"{a} vs {b} process{'es' if max(a, b) > 1 else ''}"
        return f"{self.confidence:.0%} CI {self.low:.3f}-{self.high:.3f}x ({procs})"


def _padded(groups: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Groups as one NaN-padded array (processes x longest group) and their sizes."""
    sizes = np.array([len(g) for g in groups])
    out = np.full((len(groups), int(sizes.max())), np.nan)
    for i, g in enumerate(groups):
        out[i, :len(g)] = g
    return out, sizes


def _draw_runs(values: np.ndarray, sizes: np.ndarray, picks: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """For each resample (row of `picks`, process indices), every picked process's runs
    resampled with replacement; NaN-padded to a fixed width. Returns resamples x samples."""
    n = sizes[picks]  # resamples x processes
    width = values.shape[1]
    inner = (rng.random((*picks.shape, width)) * n[..., None]).astype(np.int64)
    drawn = values[picks[..., None], inner]
    drawn[np.arange(width)[None, None, :] >= n[..., None]] = np.nan
    return drawn.reshape(picks.shape[0], -1)


def _side(groups: Sequence[Sequence[float]], ref: Sequence[Sequence[float]] | None,
          resamples: int, rng: np.random.Generator,
          factors: Sequence[float] | None = None) -> np.ndarray:
    """Bootstrap distribution of one side's statistic: the pooled median (over the pooled
    median of the reference, with the same processes drawn); times a process factor drawn
    from `factors` when given (a side of one process borrowing the drift it cannot show)."""
    picks = rng.integers(len(groups), size=(resamples, len(groups)))
    values, sizes = _padded(groups)
    stat = np.nanmedian(_draw_runs(values, sizes, picks, rng), axis=1)
    if ref is not None:
        ref_values, ref_sizes = _padded(ref)
        stat = stat / np.nanmedian(_draw_runs(ref_values, ref_sizes, picks, rng), axis=1)
    if factors is not None and len(factors):
        stat = stat * np.asarray(factors, dtype=float)[rng.integers(len(factors), size=resamples)]
    return stat


def process_factors(groups: Sequence[Sequence[float]],
                    ref: Sequence[Sequence[float]] | None = None) -> list[float]:
    """How far each process's statistic (its median, over its reference's median) lies from
    the median of them all: the drift between fresh processes, as factors around 1."""
    if ref is not None:
        pairs = [(g, r) for g, r in zip(groups, ref, strict=True) if len(g) and len(r)]
        stats = [float(np.median(g)) / float(np.median(r)) for g, r in pairs]
    else:
        stats = [float(np.median(g)) for g in groups if len(g)]
    centre = float(np.median(stats)) if stats else 0.0
    return [s / centre for s in stats] if centre > 0 else []


def _median(groups: Sequence[Sequence[float]]) -> float:
    return float(np.median(np.concatenate([np.asarray(g, dtype=float) for g in groups])))


def point_ratio(old: Sequence[Sequence[float]], new: Sequence[Sequence[float]],
                old_ref: Sequence[Sequence[float]] | None = None,
                new_ref: Sequence[Sequence[float]] | None = None) -> float:
    """new / old of the pooled medians (each over its reference's pooled median)."""
    a, b = _median(old), _median(new)
    if old_ref is not None and new_ref is not None:
        a, b = a / _median(old_ref), b / _median(new_ref)
    return b / a


def ratio_test(old: Sequence[Sequence[float]], new: Sequence[Sequence[float]],
               old_ref: Sequence[Sequence[float]] | None = None,
               new_ref: Sequence[Sequence[float]] | None = None,
               confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0,
               old_factors: Sequence[float] | None = None) -> RatioTest:
    """The ratio new/old and its two-level percentile bootstrap interval. `old`, `new`: the
    samples of each process; `*_ref`: the reference row's samples of the same processes
    (same number of groups, in the same order); `old_factors`: the drift between processes
    (`process_factors`) the old side is given when it has too few processes to show its
    own. Deterministic for a given seed."""
    if old_ref is not None and new_ref is not None:
        old, old_ref = _paired(old, old_ref)
        new, new_ref = _paired(new, new_ref)
    else:
        old_ref = new_ref = None
        old, new = [g for g in old if len(g)], [g for g in new if len(g)]
    if not old or not new:
        raise ValueError("each side needs at least one sample")
    rng = np.random.default_rng(seed)
    a = _side(old, old_ref, resamples, rng, old_factors)
    b = _side(new, new_ref, resamples, rng)
    tail = (1 - confidence) / 2
    low, high = np.quantile(b / a, [tail, 1 - tail])
    return RatioTest(point_ratio(old, new, old_ref, new_ref), float(low), float(high), confidence,
                     (len(old), len(new)), mann_whitney_p(old, new))


def _paired(row: Sequence[Sequence[float]], ref: Sequence[Sequence[float]]
            ) -> tuple[list[Sequence[float]], list[Sequence[float]]]:
    """The processes where both the row and its reference have samples, still paired."""
    if len(row) != len(ref):
        raise ValueError("a reference needs the samples of the same processes as its row")
    kept = [(g, r) for g, r in zip(row, ref, strict=True) if len(g) and len(r)]
    return [g for g, _ in kept], [r for _, r in kept]


def mann_whitney_p(old: Sequence[Sequence[float]], new: Sequence[Sequence[float]]) -> float | None:
    """Two-sided Mann-Whitney U p-value of the pooled runs (scipy); None if scipy cannot say."""
    from scipy.stats import mannwhitneyu

    a = np.concatenate([np.asarray(g, dtype=float) for g in old])
    b = np.concatenate([np.asarray(g, dtype=float) for g in new])
    if len(a) == 0 or len(b) == 0 or (np.all(a == a[0]) and np.all(b == a[0])):
        return None
    return float(mannwhitneyu(b, a, alternative="two-sided").pvalue)
