"""A comparison for people (text, markdown) and for machines (JSON, CSV): the verdict line,
one row per metric that is not the same, unreliable timings and unmatched rows named."""

from __future__ import annotations

import csv
import io
import json

from lrprof.gate.compare import MIN_RUNS_FOR_IQR, SAME, SEVERITY, Comparison
from lrprof.gate.match import unmatched_text
from lrprof.report.numbers import fmt
from lrprof.spec.words import plural


def verdict_line(c: Comparison) -> str:
    counts: dict[str, int] = {}
    for r in c.rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: SEVERITY[i[0]]))
    head = {"regression": "REGRESSION", "inconclusive": "INCONCLUSIVE"}.get(c.verdict, "no regression")
    if c.verdict == "inconclusive" and c.on_inconclusive == "pass":
        head += " (passed: --on-inconclusive pass)"
    missing = (f"; {plural(len(c.only_old), 'baseline row')} missing (--require-all)"
               if c.missing_fails else "")
    flagged = f"; {len(c.unreliable)} with unreliable timings" if c.unreliable else ""
    return f"{head}: {plural(len(c.rows), 'matched row')} ({tally}){missing}{flagged}"


def table_rows(c: Comparison, include_same: bool) -> list[list[str]]:
    out = []
    for r in c.rows:
        shown = [m for m in r.metrics if m.status != SAME] or (r.metrics[:1] if include_same else [])
        if r.status == SAME and not include_same:
            continue
        for m in shown:  # each metric its own status: a row's verdict is not every metric's
            change = "" if m.change_pct is None else f"{m.change_pct:+.1f}%"
            out.append([m.status, r.name, m.metric, fmt(m.old), fmt(m.new), change, m.why])
    return out


HEADERS = ["status", "row", "metric", "old", "new", "change", "why"]


def render_text(c: Comparison, width: int | None = None) -> str:
    """For a terminal `width` columns wide (default: this terminal's): long row names and
    reasons shortened, the figures kept; the markdown, JSON and CSV keep everything."""
    from lrprof.record.records import Section
    from lrprof.report import fit_lines, fitted_table, terminal_width

    lines = [fit_lines(f"warning: {w}", width) for w in c.warnings]
    lines.append(fit_lines(verdict_line(c), width))
    rows = table_rows(c, include_same=False)
    if rows:
        section = Section("", [dict(zip(HEADERS, row, strict=True)) for row in rows],
                          essential=("status", "row", "metric", "old", "new", "change", "why"),
                          shorten=("row", "why"))
        lines.append(fitted_table(section, width or terminal_width())[0])
    lines += [fit_lines(line, width) for line in _unmatched_lines(c) + _unreliable_lines(c)]
    lines += inconclusive_lines(c)
    lines += rerun_lines(c)
    return "\n".join(lines)


def inconclusive_lines(c: Comparison) -> list[str]:
    """Each inconclusive row: why, and what would decide it."""
    out = []
    for r in c.inconclusive:
        out.append(f"inconclusive: {r.name}: {'; '.join(r.reasons)}")
        if r.decide:
            out.append(f"  would decide it: {'; '.join(r.decide)}")
    return out


def rerun_lines(c: Comparison) -> list[str]:
    """What --on-inconclusive rerun measured."""
    if c.rerun is None:
        return []
    f = c.rerun
    out = [f"rerun: {plural(f.get('processes') or 0, 'fresh process', 'fresh processes')} here in "
           f"{f.get('seconds', 0):g} s (budget {f.get('budget_s', 0):g} s), rows timed interleaved: "
           f"{', '.join(f.get('timed') or []) or 'none'}"
           + (f"; {f.get('threads')} thread(s), {f.get('min_time_s'):g} s per row and process"
              if f.get("timed") else "")]
    for row in f.get("rows", []):
        medians = "; ".join(f"{p} medians " + " ".join(fmt(v) for v in vs) + " ms"
                            for p, vs in (row.get("process_medians_ms") or {}).items() if vs)
        verdicts = "; ".join(v["why"] for v in row.get("verdicts", [])) or row.get("failed", "")
        out.append(f"  {row['row']}: {row['status']}: {verdicts}" + (f" ({medians})" if medians else ""))
    out += [f"  not re-timed: {why}" for why in f.get("not_rerun", [])]
    if f.get("failed"):
        out.append(f"  failures: {f['failed']}")
    return out


def _unreliable_lines(c: Comparison) -> list[str]:
    return [f"unreliable timing: {r.name}: {'; '.join(r.unreliable)}" for r in c.unreliable]


def _unmatched_lines(c: Comparison) -> list[str]:
    lines = []
    for where, path in (("old", c.old), ("new", c.new)):
        texts = [unmatched_text(e) for e in c.unmatched if e["in"] == where]
        if texts:
            lines.append(f"only in {path} (not compared): " + "; ".join(texts))
    return lines


def render_markdown(c: Comparison) -> str:
    from tabulate import tabulate

    t = c.thresholds
    parts = [f"## lrprof compare: {verdict_line(c)}", ""]
    parts += [f"> **warning:** {w}" for w in c.warnings] + ([""] if c.warnings else [])
    latency = ("latency relative to the 3x3 conv baseline row of the same run"
               if t.normalize == "baseline" else "latency")
    parts.append(f"Old `{c.old}`, new `{c.new}`. Thresholds: slowdown {100 * t.max_slowdown:g}% "
                 f"({latency}), memory growth {100 * t.max_memory_growth:g}%, instructions "
                 f"{100 * t.max_instruction_growth:g}%. A latency change counts only past its "
                 f"threshold and significant (the {t.confidence:.0%} two-level bootstrap interval of the "
                 "ratio of medians excludes 1; without raw samples: outside both runs' IQR, or "
                 f"min-max under {MIN_RUNS_FOR_IQR} runs); past it but not judged (not significant, "
                 "one process per side inside the drift between processes, or an unreliable timing) is "
                 "inconclusive (exit 3). Memory: outside both min-max ranges. Exact figures must be equal.")
    parts.append("")
    rows = table_rows(c, include_same=False)
    if rows:
        parts += [tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True), ""]
    same = sum(1 for r in c.rows if r.status == SAME)
    if same:
        parts += [f"{same} row(s) unchanged.", ""]
    parts += [f"- {line}" for line in _unmatched_lines(c) + _unreliable_lines(c) + inconclusive_lines(c)
              + rerun_lines(c)]
    return "\n".join(parts).rstrip() + "\n"


def render_json(c: Comparison) -> str:
    return json.dumps(c.to_dict(), indent=2, default=str) + "\n"


def render_csv(c: Comparison) -> str:
    """One line per compared metric of every matched row (unchanged ones too), with the
    row's identity: what a spreadsheet or a later script needs."""

    fields = ["row_status", "kind", "row", "metric", "old", "new", "change_pct", "metric_status", "why",
              "identity"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in c.rows:
        for m in r.metrics:
            writer.writerow({"row_status": r.status, "kind": r.kind, "row": r.name, "metric": m.metric,
                             "old": m.old, "new": m.new, "change_pct": m.change_pct,
                             "metric_status": m.status, "why": m.why,
                             "identity": json.dumps(r.config, sort_keys=True, default=str)})
    return buffer.getvalue()


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
