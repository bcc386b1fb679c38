"""Rendering a `Report`: a terminal table, markdown, CSV and JSON, written atomically."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from tabulate import tabulate

from lrprof.errors import SpecError
from lrprof.record import Report, Section
from lrprof.report.numbers import fmt, latency_text  # noqa: F401  (re-exported for renderers)

FORMATS = ("md", "csv", "json")


def _headers(rows: list[dict[str, Any]]) -> list[str]:
    headers: list[str] = []
    for row in rows:
        headers += [h for h in row if h not in headers]
    return headers


def _table(rows: list[dict[str, Any]], tablefmt: str, headers: list[str] | None = None,
           text_limit: int | None = None, header_width: int | None = None,
           shorten: tuple[str, ...] = ()) -> str:
    """A table; for terminals, `header_width` wraps long headers onto several lines and
    `text_limit` cuts the text of the first column and the `shorten` ones (a row's name, a
    verdict), never a number."""
    if not rows:
        return "(no rows)"
    headers = headers or _headers(rows)
    body = [[fmt(row.get(h)) for h in headers] for row in rows]
    if text_limit is not None:
        cut = [i for i, h in enumerate(headers) if i == 0 or h in shorten]
        for line in body:
            for i in cut:
                if len(line[i]) > text_limit:
                    line[i] = line[i][:text_limit - 1] + "…"
    shown = headers
    if header_width is not None:
        widths = [max([len(line[i]) for line in body] + [1]) for i in range(len(headers))]
        shown = ["\n".join(textwrap.wrap(h, max(header_width, w), break_on_hyphens=False)) or h
                 for h, w in zip(headers, widths, strict=True)]
    return tabulate(body, headers=shown, tablefmt=tablefmt, disable_numparse=True)


def _width(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def fitted_table(section: Section, width: int) -> tuple[str, int]:
    """The section's table for a terminal `width` columns wide: its essential columns (all
    of them when it names none), then as many others as fit, headers wrapped onto several
    lines; past that, row names are shortened. Returns the table and how many columns were
    left out."""
    every = _headers(section.rows)
    if not every:
        return _table(section.rows, "simple"), 0
    essential = [h for h in section.essential if h in every] or every

    def render(headers: list[str], text_limit: int | None = None) -> str:
        return _table(section.rows, "simple", headers, text_limit, header_width=10,
                      shorten=section.shorten)

    chosen = list(essential)
    for header in (h for h in every if h not in essential):  # the others, in order, while they fit
        if _width(render([h for h in every if h in chosen or h == header])) <= width:
            chosen.append(header)
    headers = [h for h in every if h in chosen]  # the table's own column order
    table = render(headers)
    cut = [headers[0], *section.shorten]
    limit = max((len(fmt(row.get(h))) for row in section.rows for h in cut), default=0)
    while _width(table) > width and limit > 16:
        limit -= 2
        table = render(headers, limit)
    return table, len(every) - len(headers)


def terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


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
    return lines


def render_terminal(report: Report, width: int | None = None) -> str:
    """What fits a terminal `width` columns wide (default: this terminal's): each section's
    essential columns, notes wrapped; the markdown and CSV keep everything."""
    width = width or terminal_width()
    parts = [_wrap(f"lrprof {report.command} - {report.environment.summary()}", width)]
    left_out = 0
    for section in (s for s in report.sections if s.show != "markdown"):
        table, dropped = fitted_table(section, width)
        left_out += dropped
        parts += [f"\n{_wrap(section.title, width)}", table]
        if section.note:
            parts.append(_wrap(section.note, width))
    parts += [_wrap(f"note: {n}", width, "  ") for n in report.notes]
    if left_out:
        parts.append(_wrap(f"({left_out} more columns in the markdown and CSV reports)", width))
    return "\n".join(parts)


def _wrap(text: str, width: int, indent: str = "") -> str:
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)) or text


def render_markdown(report: Report) -> str:
    parts = [f"# lrprof {report.command}", ""]
    parts += [f"- {line}" for line in environment_lines(report)]
    command = f"`lrprof {' '.join(report.argv)}`" if report.argv else "the Python API (no command line)"
    parts += [f"- created {report.created}", f"- command: {command}", ""]
    for section in (s for s in report.sections if s.show != "terminal"):
        parts += [f"## {section.title}", "", _table(section.rows, "github"), ""]
        if section.note:
            parts += [section.note, ""]
        if section.legend:
            parts += [f"- **{name}**: {meaning}" for name, meaning in section.legend.items()] + [""]
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
