"""Rendering a `Report`: a terminal table, markdown, CSV and JSON, written atomically.

The public renderers, one import away: `from lrprof.report import layer_report,
render_markdown` (the report builders of each command are loaded on first use).
"""

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

from lrprof.record.records import Report, Section, partial_text
from lrprof.report.numbers import fmt, latency_text  # noqa: F401  (re-exported for renderers)
from lrprof.spec.errors import SpecError

FORMATS = ("md", "csv", "json")


def _headers(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of the rows, in order, less those empty in every row (a figure no row
    has, such as a work ratio where no exact model exists); the files keep them all."""
    headers: list[str] = []
    for row in rows:
        headers += [h for h in row if h not in headers]
    return [h for h in headers if any(row.get(h) not in (None, "") for row in rows)]


def _table(rows: list[dict[str, Any]], tablefmt: str, headers: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    headers = headers or _headers(rows)
    body = [[fmt(row.get(h)) for h in headers] for row in rows]
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


HEADER_WRAP = 10  # a terminal header wraps onto several lines rather than widen its column
MIN_TEXT = 12  # a shortened name or verdict keeps at least this many characters
GAP = "  "


def terminal_table(rows: list[dict[str, Any]], headers: list[str], text_limit: int | None = None,
                   cut: tuple[str, ...] = ()) -> str:
    """Columns two spaces apart, headers wrapped onto several lines, the `cut` text columns
    (a name, a verdict) shortened to `text_limit`; numbers are never cut."""
    body = [[fmt(row.get(h)) for h in headers] for row in rows]
    if text_limit is not None:
        for i, h in enumerate(headers):
            if h in cut:
                for line, short in zip(body, shorten([line[i] for line in body], text_limit), strict=True):
                    line[i] = short
    widths = [max([len(line[i]) for line in body] + [1]) for i in range(len(headers))]
    wrapped = [textwrap.wrap(h, max(HEADER_WRAP, w), break_on_hyphens=False, break_long_words=False) or [h]
               for h, w in zip(headers, widths, strict=True)]
    widths = [max(w, *(len(x) for x in lines)) for w, lines in zip(widths, wrapped, strict=True)]
    depth = max(len(lines) for lines in wrapped)
    out = [GAP.join(lines[d].ljust(w) if d < len(lines) else " " * w
                    for lines, w in zip(wrapped, widths, strict=True)).rstrip() for d in range(depth)]
    out.append(GAP.join("-" * w for w in widths))
    out += [GAP.join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in body]
    return "\n".join(out)


def _end_cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _distinct(texts: list[str], shortened: list[str]) -> bool:
    return len(set(shortened)) == len(set(texts))


def _tail_cut(text: str, limit: int) -> str:
    """The text's last words kept whole after a '…', its start before it."""
    if len(text) <= limit:
        return text
    words = text.split(" ")
    tail: list[str] = []
    while len(words) > len(tail) + 1 and len(" ".join([words[-1 - len(tail)], *tail])) <= limit - 4:
        tail.insert(0, words[-1 - len(tail)])
    if not tail:
        return _end_cut(text, limit)
    end = " ".join(tail)
    return text[:limit - len(end) - 2] + "… " + end


def shorten(texts: list[str], limit: int) -> list[str]:
    """Each text cut to at most `limit` characters, texts that differ still differing: cut at
    the end where that keeps them apart; else the words every text shares (after the first:
    the operator) dropped, so 'lr[unfold] k=3 m=8 s=1 C=64 28x28 B=1' and '... 56x56 B=1'
    read 'lr[unfold] 28x28' and 'lr[unfold] 56x56', and the end kept after a '…' where
    even those are too long."""
    ends = [_end_cut(t, limit) for t in texts]
    words = [t.split(" ") for t in texts]
    shared = set(words[0][1:]).intersection(*(w[1:] for w in words[1:])) if words else set()
    # the words shown whole: two texts apart only by a word the cut halved read alike
    whole = [e.removesuffix("…").rsplit(" ", 1)[0] if e.endswith("…") else e for e in ends]
    if _distinct(texts, whole):
        return ends
    kept = [" ".join([w[0]] + [x for x in w[1:] if x not in shared]) for w in words]
    for candidate in ([_tail_cut(t, limit) for t in kept], ends, [_end_cut(t, limit) for t in kept]):
        if _distinct(texts, candidate):
            return candidate
    for tail in range(min(8, limit - 2), limit - 1):  # the distinguishing characters at the end
        head = limit - 1 - tail
        middle = [t if len(t) <= limit else t[:head] + "…" + t[-tail:] for t in kept]
        if _distinct(texts, middle):
            return middle
    return ends


def wrapped_table(rows: list[list[str]], headers: list[str], width: int, narrowest: int = 8) -> str:
    """A table of text (help, descriptions) for a terminal `width` columns wide: the widest
    columns narrowed, their cells wrapped onto several lines, until it fits; nothing cut."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    while sum(widths) + len(GAP) * (len(widths) - 1) > width and max(widths) > narrowest:
        widest = widths.index(max(widths))
        widths[widest] -= 1

    def lines(values: list[str]) -> list[str]:
        split = [textwrap.wrap(v, w, break_on_hyphens=False) or [""] for v, w in zip(values, widths,
                                                                                  strict=True)]
        depth = max(len(x) for x in split)
        return [GAP.join((x[d] if d < len(x) else "").ljust(w) for x, w in zip(split, widths, strict=True))
                .rstrip() for d in range(depth)]

    out = lines(headers) + [GAP.join("-" * w for w in widths)]
    for row in cells:
        out += lines(row)
    return "\n".join(out)


def _width(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def fitted_table(section: Section, width: int) -> tuple[str, int]:
    """The section's table for a terminal `width` columns wide: its essential columns in
    their priority order (all columns when it names none), then the others, each while the
    table fits; names and verdicts may be shortened to make room, numbers never. The
    columns keep the table's own order. Returns the table and how many were left out."""
    every = _headers(section.rows)
    if not every:
        return "(no rows)", 0
    cut = (every[0], *section.shorten)
    essential = [h for h in section.essential if h in every] or every
    if every[0] not in essential:
        essential.insert(0, every[0])
    candidates = essential + [h for h in every if h not in essential]

    def render(chosen: list[str], limit: int | None) -> str:
        return terminal_table(section.rows, [h for h in every if h in chosen], limit, cut)

    def best_limit(chosen: list[str]) -> int:
        """The longest text the chosen columns leave room for."""
        limit = max((len(fmt(row.get(h))) for row in section.rows for h in cut), default=0)
        while limit > MIN_TEXT and _width(render(chosen, limit)) > width:
            limit -= 1
        return limit

    chosen = [candidates[0]]
    for header in essential[1:]:  # essentials may shorten names and verdicts to fit
        if _width(render(chosen + [header], MIN_TEXT)) <= width:
            chosen.append(header)
    limit = best_limit(chosen)
    for header in candidates[len(essential):]:  # the others only where they cost no text
        if _width(render(chosen + [header], limit)) <= width:
            chosen.append(header)
    return render(chosen, limit), len(every) - len(chosen)


def terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


def known_width() -> int | None:
    """The terminal's width where one is known (COLUMNS, a terminal); None for a pipe or a
    file, where a message stays on one line for whoever reads it by line."""
    return shutil.get_terminal_size((0, 0)).columns or None


def fit_lines(text: str, width: int | None = None, indent: str = "  ") -> str:
    """`text` wrapped to `width`, or to the known width; whole where none is known."""
    width = width or known_width()
    return wrap(text, width, indent) if width else text


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


def render_terminal(report: Report, width: int | None = None) -> str:
    """What fits a terminal `width` columns wide (default: this terminal's): each section's
    essential columns, notes wrapped; the markdown and CSV keep everything."""
    width = width or terminal_width()
    parts = [wrap(f"lrprof {report.command} - {report.environment.summary()}", width)]
    left_out = 0
    if report.partial:
        parts.append(wrap(f"PARTIAL REPORT: {partial_text(report.partial)}", width))
    for section in (s for s in report.sections if s.show != "markdown"):
        table, dropped = fitted_table(section, width)
        left_out += dropped
        parts += [f"\n{wrap(section.title, width)}", table]
        if section.note:
            parts.append(wrap(section.note, width))
    parts += [wrap(f"note: {n}", width, "  ") for n in report.notes]
    if left_out:
        parts.append(wrap(f"({left_out} more columns in the markdown and CSV reports)", width))
    return "\n".join(parts)


def wrap(text: str, width: int, indent: str = "") -> str:
    """`text` on lines of at most `width` characters (a word longer than that is cut)."""
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)) or text



def render_markdown(report: Report) -> str:
    parts = [f"# lrprof {report.command}", ""]
    if report.partial:
        parts += [f"**Partial report**: {partial_text(report.partial)}.", ""]
    parts += [f"- {line}" for line in environment_lines(report)]
    command = f"`lrprof {' '.join(report.argv)}`" if report.argv else "the Python API (no command line)"
    parts += [f"- created {report.created}", f"- command: {command}", ""]
    for index, section in enumerate(s for s in report.sections if s.show != "terminal"):
        parts += [f"## {section.title}", "", _table(section.rows, "github"), ""]
        if section.note:
            parts += [section.note, ""]
        if section.legend:
            parts += [f"- **{name}**: {meaning}" for name, meaning in section.legend.items()] + [""]
        if index == 0 and report.figures:  # the pictures right after the main table
            parts += ["## Figures", ""]
            for figure in report.figures:
                parts += [f"![{figure['title']}]({figure['file']})", "", figure.get("caption", ""), ""]
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


# report builder -> its module; loaded on first use (the builders import this module)
_BUILDERS = {
    "layer_report": "lrprof.report.layer",
    "net_report": "lrprof.report.net",
    "module_report": "lrprof.report.module",
    "audit_report": "lrprof.report.audit",
    "sweep_report": "lrprof.report.sweep",
    "count_report": "lrprof.report.count",
}


def __getattr__(name: str) -> Any:
    import importlib

    module = _BUILDERS.get(name)
    if module is None:
        raise AttributeError(f"module 'lrprof.report' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
