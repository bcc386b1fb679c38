"""Rendering a `Report`: a terminal table, markdown, CSV and JSON, written atomically."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from tabulate import tabulate

from lrprof.errors import SpecError
from lrprof.measure.timing import Stats
from lrprof.record import Report

FORMATS = ("md", "csv", "json")


def fmt(value: Any) -> str:
    """Human formatting for tables: big counts get thousands separators, floats 4 digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1e6:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.4g}"
        return f"{value:,.4g}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _table(rows: list[dict[str, Any]], tablefmt: str) -> str:
    if not rows:
        return "(no rows)"
    headers: list[str] = []
    for row in rows:
        headers += [h for h in row if h not in headers]
    body = [[fmt(row.get(h)) for h in headers] for row in rows]
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def environment_lines(report: Report) -> list[str]:
    env = report.environment
    lines = [
        f"device: {env.device_name} ({env.device})",
        f"torch {env.torch_version}, lrprof {env.lrprof_version}, python {env.python_version}, "
        f"commit {env.git_commit or 'n/a'}",
        f"CPU: {env.cpu_model or 'unknown'}, {env.cpu_logical_cores} logical cores, "
        f"torch threads {env.torch_threads}",
    ]
    if env.cuda:
        lines.append("CUDA: " + ", ".join(f"{k}={v}" for k, v in env.cuda.items()))
    if env.unreadable:
        lines.append("unreadable: " + "; ".join(f"{k}: {v}" for k, v in env.unreadable.items()))
    for c in env.ceilings:
        lines.append(f"ceilings: {c['device']} {c['dtype']}: {c['bandwidth_GBps']:.1f} GB/s copy, "
                     f"{c['compute_GFLOPs']:.1f} GFLOP/s matmul ({c['method']})")
    return lines


def latency_text(stats: Stats | None, digits: int = 3) -> str:
    """'12.345 [12.1-12.6] n=10', or n=10x100 when each run averages 100 calls."""
    if stats is None:
        return ""
    runs = f"{stats.runs}x{stats.calls_per_run}" if stats.calls_per_run > 1 else f"{stats.runs}"
    return (f"{stats.median_ms:.{digits}f} [{stats.q1_ms:.{digits}f}-{stats.q3_ms:.{digits}f}] "
            f"n={runs}")


def render_terminal(report: Report) -> str:
    parts = [f"lrprof {report.command} - {report.environment.summary()}"]
    for section in (s for s in report.sections if s.show != "markdown"):
        parts.append(f"\n{section.title}")
        parts.append(_table(section.rows, "simple"))
        if section.note:
            parts.append(section.note)
    parts += [f"note: {n}" for n in report.notes]
    return "\n".join(parts)


def render_markdown(report: Report) -> str:
    parts = [f"# lrprof {report.command}", ""]
    parts += [f"- {line}" for line in environment_lines(report)]
    parts += [f"- created {report.created}", f"- command: `lrprof {' '.join(report.argv)}`", ""]
    for section in (s for s in report.sections if s.show != "terminal"):
        parts += [f"## {section.title}", "", _table(section.rows, "github"), ""]
        if section.note:
            parts += [section.note, ""]
    if report.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(parts)


def render_csv(report: Report) -> str:
    rows = report.rows()
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return buffer.getvalue()


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


RENDERERS = {"md": render_markdown, "csv": render_csv, "json": render_json}


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; reports are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(directory: Path) -> None:
    """Fail before measuring, not after, when the reports could not be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".lrprof-probe-"):
            pass
    except OSError as exc:
        raise SpecError("out", "a directory lrprof can create and write to",
                        f"{directory} ({exc.strerror or exc})") from None


def report_paths(command: str, out: Path | None, default_dir: Path = Path("reports")) -> dict:
    """`--out DIR` gives stable names (DIR/layer.md ...) for scripts and CI; without it,
    timestamped names under reports/ so that runs accumulate."""
    if out is not None:
        base = out / command
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = default_dir / f"{command}-{stamp}"
        serial = 1
        while any(base.with_name(f"{base.name}.{f}").exists() for f in FORMATS):
            serial += 1  # a second run within the same second
            base = default_dir / f"{command}-{stamp}-{serial}"
    return {f: base.with_name(f"{base.name}.{f}") for f in FORMATS}


def write_report(report: Report, paths: dict[str, Path]) -> list[Path]:
    written = []
    for fmt_name, path in paths.items():
        write_atomic(path, RENDERERS[fmt_name](report))
        written.append(path)
    return written
