"""What every plot shares: the canvas, colours, log axes and the title's facts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrprof.record.records import Record

DPI = 110


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str  # what it shows, in one or two sentences (the markdown's text beside it)


def title_facts(records: Sequence[Record], environment: Any = None) -> str:
    """'AMD EPYC 7B13 (cpu), float32, 2 threads' from the environment and the rows."""
    parts = []
    if environment is not None:
        parts.append(f"{environment.device_name} ({environment.device})")
    dtypes = sorted({str(r.config.get("dtype")) for r in records if r.config.get("dtype")})
    if dtypes:
        parts.append(", ".join(dtypes))
    threads = sorted({s.threads for r in records for s in r.latency.values() if s.threads})
    if threads:
        parts.append(f"{', '.join(map(str, threads))} thread{'s' if threads != [1] else ''}")
    return ", ".join(parts)


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def fwd_ms(record: Record) -> float | None:
    stats = record.latency.get("fwd")
    return stats.median_ms if stats else None


def si_label(value: float, _position: Any = None) -> str:
    """Tick labels: 2k, 40M, 1.5G; plain below 1000."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def log_axis(axis: Any, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log scale with readable labels (1, 2, 5 per decade; 2k, 40M) instead of 6x10^1;
    `subs=(1.0,)` labels decades only (a narrow panel)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(si_label))
    axis.set_minor_formatter(NullFormatter())
