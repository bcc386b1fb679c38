"""Does cost grow the way the formula says, and where does the formula stop predicting
time? Power-law fits over a sweep's rows, per operator and implementation:

- counted MACs against the published O-model: the ratio counted / published (min, median,
  max over the grid) and the exponent b of counted = a * published^b (b = 1: the count
  grows exactly like the formula; a constant factor shows in a, not in b);
- forward latency against counted MACs, and against the minimal bytes when the rows carry
  them: the exponent (1: time proportional to work), R^2 (how much of the time the power
  law explains), and the rows furthest from the fitted line, named.

Fits are ordinary least squares of log y on log x. The exponent's 95% interval is a
bootstrap: rows are resampled with replacement and, for latency, each row's value is
re-drawn as the median of its raw timed samples resampled, so the interval holds both the
spread between configurations and the measurement noise of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrprof.record.records import Record

BOOTSTRAP = 2000
CONFIDENCE = 0.95
DEPARTURES = 3  # rows named per fit
# Where a row keeps the figures the roofline columns add (issue 14): the first name found.
MIN_BYTES_NAMES = ("fwd_min_bytes", "min_bytes", "minimal_bytes")
ACHIEVED_GBS_NAMES = ("fwd_achieved_GB_per_s", "fwd_GB_per_s", "achieved_GB_per_s")
CEILING_GBS_NAMES = ("bandwidth_ceiling_GB_per_s", "ceiling_GB_per_s", "measured_bandwidth_GB_per_s")


def record_value(record: Record, names: Sequence[str]) -> float | None:
    """The first of `names` the record holds (counted, model, derived or checks), as a float."""
    for name in names:
        for table in (record.counted, record.model, record.derived, record.checks):
            value = table.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
    return None


def minimal_bytes(record: Record) -> float | None:
    return record_value(record, MIN_BYTES_NAMES)


@dataclass(frozen=True)
class PowerFit:
    """y = coefficient * x ** exponent, fitted on logs."""

    x: str
    y: str
    n: int
    exponent: float
    coefficient: float
    r2: float
    ci: tuple[float, float] | None  # the exponent's bootstrap interval
    stderr: float  # the exponent's standard error from the regression

    def predict(self, x: float) -> float:
        return self.coefficient * x ** self.exponent

    def exponent_text(self) -> str:
        ci = f" [{self.ci[0]:.3f}, {self.ci[1]:.3f}]" if self.ci else ""
        return f"{self.exponent:.3f}{ci}"

    def formula(self) -> str:
        return f"{self.y} = {self.coefficient:.3g} * {self.x}^{self.exponent:.3f}"


@dataclass(frozen=True)
class Departure:
    """A row whose measured value is furthest from its fit's prediction."""

    name: str
    measured: float
    predicted: float

    @property
    def factor(self) -> float:
        return self.measured / self.predicted


@dataclass
class GroupFit:
    """The fits of one operator's implementation over the grid."""

    op: str
    impl: str
    rows: int
    macs_ratio: tuple[float, float, float] | None = None  # counted / published: min, median, max
    macs_vs_model: PowerFit | None = None
    latency_vs_macs: PowerFit | None = None
    latency_vs_bytes: PowerFit | None = None
    departures: list[Departure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.op}[{self.impl}]"


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of y on the same row of x (NaN where x is flat)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    sxx = (xc * xc).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, (xc * yc).sum(axis=-1) / sxx, np.nan)


def fit_power(x: Sequence[float], y: Sequence[float], x_name: str = "x", y_name: str = "y",
              samples: Sequence[Sequence[float]] | None = None, bootstrap: int = BOOTSTRAP,
              seed: int = 0) -> PowerFit | None:
    """Fit y = a * x^b on positive points; None with fewer than 3 points or 2 distinct x.
    `samples[i]`, when given, are point i's raw measurements (y[i] their median): the
    bootstrap re-draws them."""
    from scipy import stats

    keep = [i for i in range(len(x)) if x[i] and y[i] and x[i] > 0 and y[i] > 0
            and math.isfinite(x[i]) and math.isfinite(y[i])]
    if len(keep) < 3:
        return None
    lx = np.log(np.asarray([x[i] for i in keep], dtype=float))
    ly = np.log(np.asarray([y[i] for i in keep], dtype=float))
    if np.ptp(lx) == 0:
        return None
    result = stats.linregress(lx, ly)
    r2 = float(result.rvalue ** 2) if np.ptp(ly) > 0 else 1.0
    ci = None
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(keep)
        picks = rng.integers(0, n, size=(bootstrap, n))
        if samples is not None:
            redrawn = np.empty((n, bootstrap))
            for row, i in enumerate(keep):
                raw = np.asarray([v for v in samples[i] if v > 0], dtype=float)
                if len(raw) == 0:
                    redrawn[row] = ly[row]
                    continue
                draws = raw[rng.integers(0, len(raw), size=(bootstrap, len(raw)))]
                redrawn[row] = np.log(np.median(draws, axis=1))
            ys = redrawn[picks, np.arange(bootstrap)[:, None]]
        else:
            ys = ly[picks]
        slopes = _slopes(lx[picks], ys)
        slopes = slopes[np.isfinite(slopes)]
        if len(slopes) >= bootstrap // 2:
            tail = 100 * (1 - CONFIDENCE) / 2
            low, high = np.percentile(slopes, [tail, 100 - tail])
            ci = (float(low), float(high))
    return PowerFit(x_name, y_name, len(keep), float(result.slope), float(math.exp(result.intercept)),
                    r2, ci, float(result.stderr))


def _departures(fit: PowerFit, points: list[tuple[str, float, float]]) -> list[Departure]:
    found = [Departure(name, y, fit.predict(x)) for name, x, y in points if x > 0 and y > 0]
    found.sort(key=lambda d: -abs(math.log(d.factor)))
    return found[:DEPARTURES]


def _fwd(record: Record) -> tuple[float | None, tuple[float, ...]]:
    stats = record.latency.get("fwd")
    return (stats.median_ms, stats.samples_ms) if stats else (None, ())


def group_records(records: Sequence[Record]) -> dict[tuple[str, str], list[Record]]:
    groups: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        key = (str(record.config.get("op")), str(record.config.get("impl")))
        groups.setdefault(key, []).append(record)
    return groups


def _latency_fit(rows: list[Record], x_of: Callable[[Record], float | None], x_name: str,
                 seed: int) -> tuple[PowerFit | None, list[tuple[str, float, float]]]:
    points = []
    samples = []
    for r in rows:
        x = x_of(r)
        median, raw = _fwd(r)
        if x and median:
            points.append((r.name, x, median))
            samples.append(raw or (median,))
    fit = fit_power([p[1] for p in points], [p[2] for p in points], x_name, "fwd ms",
                    samples=samples, seed=seed)
    return fit, points


def fit_group(op: str, impl: str, rows: list[Record], seed: int = 0) -> GroupFit:
    group = GroupFit(op, impl, len(rows))
    counted = [(r.counted.get("fwd_MACs"), r.model.get("paper_O_MACs")) for r in rows]
    pairs = [(c, p) for c, p in counted if c and p]
    if pairs:
        ratios = sorted(c / p for c, p in pairs)
        group.macs_ratio = (ratios[0], float(np.median(ratios)), ratios[-1])
        group.macs_vs_model = fit_power([p for _, p in pairs], [c for c, _ in pairs],
                                        "published MACs", "counted MACs", seed=seed)
        if group.macs_vs_model is None:
            group.notes.append("MACs vs the published model: fewer than 3 rows or one published value")
    else:
        group.notes.append("no row has both a count and a published model")
    group.latency_vs_macs, points = _latency_fit(rows, lambda r: r.counted.get("fwd_MACs"), "MACs",
                                                 seed)
    if group.latency_vs_macs is None:
        group.notes.append("latency vs MACs: fewer than 3 timed rows with a count, or one MAC value")
    else:
        group.departures = _departures(group.latency_vs_macs, points)
    if any(minimal_bytes(r) for r in rows):
        group.latency_vs_bytes, _ = _latency_fit(rows, minimal_bytes, "minimal bytes", seed)
    return group


def fit_records(records: Sequence[Record], seed: int = 0) -> list[GroupFit]:
    """One GroupFit per operator and implementation, in the order they first appear."""
    return [fit_group(op, impl, rows, seed) for (op, impl), rows in group_records(records).items()]


def fits_dict(fits: Sequence[GroupFit]) -> list[dict[str, Any]]:
    """The fits as plain data (the JSON report keeps them in full)."""
    from dataclasses import asdict

    out = []
    for f in fits:
        data = asdict(f)
        data["departures"] = [{**asdict(d), "factor": d.factor} for d in f.departures]
        out.append(data)
    return out
