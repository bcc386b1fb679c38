"""Numbers people read: one rule for every table, so a count never appears as 2.08e+04 next
to 19,624, a latency carries no more digits than its spread supports, and memory is in MiB
everywhere (the CSV and JSON keep exact bytes and full precision).

- whole counts (ints): thousands separators, never rounded (27,124,048 MACs);
- other figures: 3 significant digits (0.957, 12.3, 1,234 from 1,234.5), e-notation only
  below 0.001 (relative errors: 1.5e-07);
- latency: median [first-third quartile] with the decimals the quartiles' width supports
  (two significant digits of the IQR: 213 [185-220] ms, not 213.129 [184.856-220.366]).
"""

from __future__ import annotations

import math
from typing import Any

MIB = 2**20


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return figure(value)
    return str(value)


def figure(value: float, digits: int = 3) -> str:
    """3 significant digits, thousands separators from 1,000 on, e-notation below 0.001."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    if magnitude < 1e-3:
        return f"{value:.{digits - 1}e}".replace("e-0", "e-")
    decimals = digits - 1 - math.floor(math.log10(magnitude))
    return f"{value:.{max(decimals, 0)}f}"


def decimals_for_spread(spread: float, median: float) -> int:
    """Decimals that show two significant digits of the spread (or three of the median
    when the spread is zero)."""
    reference = spread if spread > 0 else abs(median) / 10
    if reference <= 0 or not math.isfinite(reference):
        return 3
    return max(0, 1 - math.floor(math.log10(reference)))


def latency_text(stats: Any, runs: bool = True) -> str:
    """'12.3 [12.1-12.6] n=10', or n=10x100 when each run averages 100 calls (`runs=False`
    leaves the count out, for a table that shows it in a column of its own)."""
    if stats is None:
        return ""
    d = decimals_for_spread(stats.q3_ms - stats.q1_ms, stats.median_ms)
    text = f"{stats.median_ms:.{d}f} [{stats.q1_ms:.{d}f}-{stats.q3_ms:.{d}f}]"
    return f"{text} n={runs_text(stats)}" if runs else text


def runs_text(stats: Any) -> str:
    """'10', or '10x100' when each of the 10 runs averages 100 calls."""
    if stats is None:
        return ""
    return f"{stats.runs}x{stats.calls_per_run}" if stats.calls_per_run > 1 else f"{stats.runs}"


def mib(value: int | float | None) -> float | None:
    """Bytes as MiB for tables (the files keep bytes)."""
    return None if value is None else value / MIB
