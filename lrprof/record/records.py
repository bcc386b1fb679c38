"""The value types every command produces: one `Record` per measured configuration, and a
`Report` holding records, the environment they came from, and the tables shown to people.

A record flattens to one CSV row with stable, unit-suffixed column names (`row()`), and
comes back from such a row (`Record.from_row`), so `lrprof compare` reads CSV and JSON alike.
A row names its own identity: the `identity` column lists the columns that define the
configuration (op, impl, shape, dtype, device and every operator parameter), so a reader
needs to know nothing about the operators to match rows.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from lrprof.measure.device import Environment
from lrprof.measure.memory import MemoryStats
from lrprof.measure.timing import Stats

SCHEMA = "lrprof.report/2"
# Earlier versions this package still reads (compare, merge): version 1 kept the counted and the
# model's figures in one group named `exact`.
READABLE_SCHEMAS = ("lrprof.report/1", SCHEMA)

# Reports written before rows named their identity: these columns were the identity.
LEGACY_CONFIG_COLUMNS: tuple[str, ...] = (
    "net", "stage", "layer", "op", "impl", "phi", "geometry_hidden", "batch", "channels",
    "height", "width", "k", "m", "stride", "dtype", "device",
)
IDENTITY_COLUMN = "identity"
# Figures counted at the dispatcher (and the parameters counted on the module) and the cost
# model's figures: both are exact for a given configuration, any change is a change of the model.
COUNTED_COLUMNS: list[str] = ["params", "fwd_MACs", "bwd_MACs", "fwd_exps", "bwd_exps"]
MODEL_COLUMNS: list[str] = ["exact_MACs"]
EXACT_COLUMNS: list[str] = COUNTED_COLUMNS + MODEL_COLUMNS


def is_model_figure(name: str) -> bool:
    """The cost model's figures (its exact term count, the published formula's) as opposed to
    what was counted: `exact_*` and `paper_*`."""
    return name.startswith(("exact_", "paper_"))
# Names earlier reports used for the same figures.
LEGACY_NAMES = {"counted_MACs": "fwd_MACs", "counted_softmax_exps": "fwd_exps",
                "exact_softmax_exps": "exact_exps"}
PHASES = ("fwd", "fwd_bwd")
# Instructions per call under callgrind (`--instructions`): nearly deterministic, gated with
# their own small threshold rather than as exact figures.
INSTRUCTION_COLUMNS: list[str] = [f"{phase}_instructions" for phase in PHASES]
_NOISE_FIELDS = ("minor_faults_per_call", "major_faults_per_call", "involuntary_switches_per_s")
_STAT_FIELDS = ("median", "q1", "q3", "min", "max")
ENV_COLUMNS = ["device_name", "torch_version", "lrprof_version", "git_commit"]


def parse_cell(text: str) -> Any:
    """A CSV cell as the report wrote it: int, float, bool, None for empty, else the text."""
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text


def _renamed(figures: dict[str, Any]) -> dict[str, Any]:
    return {LEGACY_NAMES.get(k, k): v for k, v in figures.items()}


def latency_columns(phase: str) -> list[str]:
    return [f"{phase}_{f}_ms" for f in _STAT_FIELDS] + [f"{phase}_runs", f"{phase}_calls_per_run",
                                                         f"{phase}_samples_ms", f"{phase}_process_runs"]


def noise_columns(phase: str) -> list[str]:
    return [f"{phase}_{f}" for f in _NOISE_FIELDS]


def samples_text(samples: tuple[float, ...]) -> str:
    """Every run's per-call milliseconds, space-separated, exact (repr) so CSV round-trips."""
    return " ".join(repr(float(v)) for v in samples)


def parse_samples(text: Any) -> tuple[float, ...]:
    if text in (None, ""):
        return ()
    if isinstance(text, (int, float)):
        return (float(text),)
    return tuple(float(v) for v in str(text).split())


def parse_counts(text: Any) -> tuple[int, ...]:
    """'10 10 9' (runs per process) -> (10, 10, 9)."""
    if text in (None, ""):
        return ()
    if isinstance(text, int):
        return (text,)
    return tuple(int(v) for v in str(text).split())


def memory_columns(phase: str) -> list[str]:
    return [f"{phase}_peak_bytes", f"{phase}_peak_min_bytes", f"{phase}_peak_max_bytes",
            f"{phase}_memory_runs", f"{phase}_resident_bytes"]


@dataclass
class Record:
    """One measured configuration (a layer, a network, a stage or one layer of a network)."""

    kind: str
    name: str
    config: dict[str, Any]
    counted: dict[str, Any] = field(default_factory=dict)  # params, MACs, exps as counted
    model: dict[str, Any] = field(default_factory=dict)  # the cost model's: exact_MACs, paper_O_MACs
    checks: dict[str, Any] = field(default_factory=dict)  # ratios and verdicts derived from them
    latency: dict[str, Stats] = field(default_factory=dict)  # phase -> distribution
    memory: dict[str, MemoryStats] = field(default_factory=dict)  # phase -> peak
    derived: dict[str, Any] = field(default_factory=dict)  # throughput, shares
    detail: dict[str, Any] = field(default_factory=dict)  # JSON only: term tables, op lists
    error: str | None = None

    def add_error(self, text: str) -> None:
        """A failure of one step, kept beside any earlier one."""
        self.error = f"{self.error}; {text}" if self.error else text

    def exact_figures(self) -> dict[str, Any]:
        """Counted and model figures together: what must not change for a configuration."""
        return {**self.counted, **self.model}

    def key(self) -> tuple:
        return (self.kind, self.name, *sorted((k, str(v)) for k, v in self.config.items()))

    def row(self, env: Environment | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": self.kind, "name": self.name}
        row.update(self.config)
        row[IDENTITY_COLUMN] = " ".join(self.config)
        row.update(self.counted)
        row.update(self.model)
        row.update(self.checks)
        timing = next(iter(self.latency.values()), None)
        for phase in PHASES:
            stats = self.latency.get(phase)
            for col, f in zip(latency_columns(phase), _STAT_FIELDS, strict=False):
                row[col] = getattr(stats, f"{f}_ms") if stats else None
            row[f"{phase}_runs"] = stats.runs if stats else None
            row[f"{phase}_calls_per_run"] = stats.calls_per_run if stats else None
            row[f"{phase}_samples_ms"] = samples_text(stats.samples_ms) if stats else None
            row[f"{phase}_process_runs"] = (" ".join(map(str, stats.process_runs))
                                            if stats and stats.process_runs else None)
            for col, f in zip(noise_columns(phase), _NOISE_FIELDS, strict=True):
                row[col] = getattr(stats, f) if stats else None
        row["timing_method"] = timing.method if timing else None
        row["threads"] = timing.threads if timing else None
        mem = next(iter(self.memory.values()), None)
        for phase in PHASES:
            m = self.memory.get(phase)
            values = ((m.peak_bytes, m.min_bytes, m.max_bytes, m.runs, m.resident_bytes) if m
                      else (None,) * 5)
            row.update(dict(zip(memory_columns(phase), values, strict=True)))
        row["memory_method"] = mem.method if mem else None
        row.update(self.derived)
        if env is not None:
            row.update({c: getattr(env, c) for c in ENV_COLUMNS})
        row["error"] = self.error
        return row

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "config": self.config,
            "counted": self.counted,
            "model": self.model,
            "checks": self.checks,
            "latency": {k: v.to_dict() for k, v in self.latency.items()},
            "memory": {k: v.to_dict() for k, v in self.memory.items()},
            "derived": self.derived,
            "detail": self.detail,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        if "exact" in data:  # version 1: one group, split here by name
            old = _renamed(dict(data.get("exact") or {}))
            counted = {k: v for k, v in old.items() if not is_model_figure(k)}
            model = {k: v for k, v in old.items() if is_model_figure(k)}
        else:
            counted, model = dict(data.get("counted") or {}), dict(data.get("model") or {})
        return cls(
            kind=data["kind"],
            name=data["name"],
            config=dict(data.get("config") or {}),
            counted=counted,
            model=model,
            checks=dict(data.get("checks") or {}),
            latency={k: Stats.from_dict(v) for k, v in (data.get("latency") or {}).items()},
            memory={k: MemoryStats(**v) for k, v in (data.get("memory") or {}).items()},
            derived=dict(data.get("derived") or {}),
            detail=dict(data.get("detail") or {}),
            error=data.get("error"),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """Rebuild what compare needs from a CSV row (values already typed by the reader)."""
        identity = row.get(IDENTITY_COLUMN)
        if identity:
            config = {c: row.get(c) for c in str(identity).split()}
        else:  # a report from before rows named their identity
            config = {c: row[c] for c in LEGACY_CONFIG_COLUMNS if row.get(c) not in (None, "")}
        row = _renamed(row)
        counted = {c: row[c] for c in COUNTED_COLUMNS + INSTRUCTION_COLUMNS if row.get(c) not in (None, "")}
        model = {c: row[c] for c in MODEL_COLUMNS if row.get(c) not in (None, "")}
        latency = {}
        for phase in PHASES:
            if row.get(f"{phase}_median_ms") in (None, ""):
                continue
            latency[phase] = Stats(
                *(float(row[c]) for c in latency_columns(phase)[:5]),
                runs=int(row[f"{phase}_runs"]),
                calls_per_run=int(row[f"{phase}_calls_per_run"] or 1),
                method=str(row.get("timing_method") or ""),
                threads=int(row["threads"]) if row.get("threads") not in (None, "") else None,
                samples_ms=parse_samples(row.get(f"{phase}_samples_ms")),
                process_runs=parse_counts(row.get(f"{phase}_process_runs")),
                **{f: _optional_float(row.get(c))
                   for c, f in zip(noise_columns(phase), _NOISE_FIELDS, strict=True)},
            )
        memory = {}
        for phase in PHASES:
            cols = memory_columns(phase)
            if row.get(cols[0]) in (None, ""):
                continue
            resident = row.get(cols[4])
            memory[phase] = MemoryStats(
                *(int(float(row[c])) for c in cols[:4]),
                resident_bytes=int(float(resident)) if resident not in (None, "") else None,
                method=str(row.get("memory_method") or ""),
            )
        derived = {c: row[c] for c in READ_BACK_DERIVED if row.get(c) not in (None, "")}
        return cls(kind=str(row.get("kind") or ""), name=str(row.get("name") or ""),
                   config=config, counted=counted, model=model, latency=latency, memory=memory,
                   derived=derived, error=row.get("error") or None)


# Derived columns compare needs back from a CSV row: which row is this row's baseline.
READ_BACK_DERIVED = ("role", "baseline", "oversubscribed")


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def partial_text(partial: dict[str, Any]) -> str:
    """'interrupted by SIGINT: 1 of 3 rows measured; never measured: a; b'."""
    missing = "; ".join(partial.get("not_measured") or []) or "none"
    cause = (f"interrupted by {partial['interrupted_by']}" if partial.get("interrupted_by")
             else "unfinished (still running, or killed)")
    processes = (f"; timed in {partial['processes_done']} of {partial['processes_planned']} processes"
                 if partial.get("processes_planned") else "")
    return (f"{cause}: {partial.get('rows_kept')} of {partial.get('rows_total')} rows measured"
            f"{processes}; never measured: {missing}")


@dataclass
class Section:
    """A table for people; machines read the records instead. `show`: "both", or only in
    the "terminal" or only in the "markdown" rendering. `essential`: the columns a terminal
    keeps, in order, when the whole table does not fit (the markdown keeps every column).
    `legend`: what a derived column means, printed with the markdown table."""

    title: str
    rows: list[dict[str, Any]]
    note: str = ""
    show: str = "both"
    essential: tuple[str, ...] = ()
    legend: dict[str, str] = field(default_factory=dict)
    shorten: tuple[str, ...] = ()  # text columns a terminal may cut (the first one always)


@dataclass
class Report:
    command: str
    environment: Environment
    records: list[Record] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    # PNGs beside the markdown: {"file": name relative to it, "title": ..., "caption": ...}
    figures: list[dict[str, str]] = field(default_factory=list)
    # Set when the run was interrupted: {"interrupted_by", "rows_kept", "rows_total",
    # "not_measured": [names]}; None for a complete report.
    partial: dict[str, Any] | None = None

    def rows(self) -> list[dict[str, Any]]:
        rows = [r.row(self.environment) for r in self.records]
        if self.partial:  # every CSV row says the file is incomplete
            for row in rows:
                row["partial_report"] = partial_text(self.partial)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "command": self.command,
            "argv": self.argv,
            "created": self.created,
            "environment": self.environment.to_dict(),
            "partial": self.partial,
            "notes": self.notes,
            "figures": self.figures,
            "records": [r.to_dict() for r in self.records],
            "sections": [{"title": s.title, "note": s.note, "rows": s.rows, "show": s.show,
                          "essential": list(s.essential), "legend": s.legend}
                         for s in self.sections],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            command=data["command"],
            environment=Environment.from_dict(data["environment"]),
            records=[Record.from_dict(r) for r in data.get("records", [])],
            sections=[Section(s["title"], s["rows"], s.get("note", ""), s.get("show", "both"),
                              tuple(s.get("essential") or ()), dict(s.get("legend") or {}))
                      for s in data.get("sections", [])],
            notes=list(data.get("notes", [])),
            argv=list(data.get("argv", [])),
            created=data.get("created", ""),
            figures=list(data.get("figures") or []),
            partial=data.get("partial"),
        )
