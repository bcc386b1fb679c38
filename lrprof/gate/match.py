"""Which rows of two reports are the same configuration: rows match on their identity
(every field of `config`, as the file lists it); an unmatched row is named with its nearest
row on the other side and the fields that differ; setups that differ are warned about."""

from __future__ import annotations

from typing import Any

from lrprof.record.load import Loaded
from lrprof.record.records import Record
from lrprof.spec.words import plural


def row_key(record: Record) -> tuple:
    return (record.kind, *sorted((k, str(v)) for k, v in record.config.items()))


def differing_fields(a: Record, b: Record) -> list[tuple[str, Any, Any]]:
    """The identity fields where two rows differ: (field, a's value, b's value); a field
    only one of them has differs too."""
    fields = list(dict.fromkeys([*a.config, *b.config]))
    return [(f, a.config.get(f), b.config.get(f)) for f in fields
            if str(a.config.get(f)) != str(b.config.get(f))]


def nearest(record: Record, candidates: list[Record]) -> tuple[Record, list[tuple[str, Any, Any]]] | None:
    """The candidate of the same kind whose identity differs in the fewest fields."""
    same_kind = [c for c in candidates if c.kind == record.kind]
    if not same_kind:
        return None
    best = min(same_kind, key=lambda c: len(differing_fields(c, record)))
    return best, differing_fields(best, record)


def unmatched_entry(record: Record, candidates: list[Record], where: str) -> dict[str, Any]:
    """An unmatched row, its nearest row on the other side and the fields that differ
    (values given as this row's, then the nearest's)."""
    found = nearest(record, candidates)
    entry: dict[str, Any] = {"in": where, "name": record.name, "nearest": None, "differs": []}
    if found is not None:
        other, diffs = found
        entry["nearest"] = other.name
        entry["differs"] = [{"field": f, "this": y, "nearest": x} for f, x, y in diffs]
    return entry


def unmatched_text(entry: dict[str, Any]) -> str:
    """'NAME (nearest: NAME2, differs in phi: mul here, sqdiff there)'."""
    if entry["nearest"] is None:
        return f"{entry['name']} (no row of its kind on the other side)"
    what = ", ".join(f"{d['field']}: {_shown(d['this'])} here, {_shown(d['nearest'])} there"
                     for d in entry["differs"])
    return f"{entry['name']} (nearest: {entry['nearest']}; differs in {what})"


def _shown(value: Any) -> str:
    return "(absent)" if value is None else str(value)


def timing_setups(records: list[Record]) -> set[str]:
    return {plural(s.threads, "thread") for r in records for s in r.latency.values() if s.threads}


TIMING_FLAGS = ("--min-runs", "--min-time", "--warmup", "--repeat", "--threads")


def _given(argv: list[str] | None) -> dict[str, str]:
    """The timing options a command line gave ('--min-time 0.1' or '--min-time=0.1')."""
    given: dict[str, str] = {}
    argv = argv or []
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name in TIMING_FLAGS:
            given[name] = value if sep else (argv[i + 1] if i + 1 < len(argv) else "")
    return given


def _fewest_runs(records: list[Record]) -> int | None:
    runs = [s.runs for r in records for s in r.latency.values() if s.runs]
    return min(runs) if runs else None


def _setup_text(loaded: Loaded, runs: int | None) -> str:
    given = _given(loaded.argv)
    flags = " ".join(f"{k} {v}" for k, v in given.items()) or "its default timing"
    least = f", {plural(runs, 'timed run')} per row at least" if runs else ""
    return f"lrprof {loaded.command}, {flags}{least}"


def timing_warnings(old: Loaded, new: Loaded, old_rows: list[Record], new_rows: list[Record]) -> list[str]:
    """Two reports timed under different settings (a sweep's lighter defaults against a
    layer run, other --min-runs or --min-time): their latencies are not equally reliable,
    and a verdict between them should say so."""
    if not (old.command and new.command):  # a CSV report does not say how it was made
        return []
    if old.command == new.command and _given(old.argv) == _given(new.argv):
        return []
    old_runs, new_runs = _fewest_runs(old_rows), _fewest_runs(new_rows)
    return [f"the two reports were timed differently: old {_setup_text(old, old_runs)}; new "
            f"{_setup_text(new, new_runs)} (compare reports made with the same command and timing "
            "options)"]


def environment_warnings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    warnings = []
    for key, label in (("device", "device"), ("device_name", "device model"),
                       ("torch_version", "torch version"), ("lrprof_version", "lrprof version")):
        a, b = old.get(key), new.get(key)
        # A CSV row knows 'cuda', its JSON 'cuda:0': devices compare by type.
        same = (str(a).split(":")[0] == str(b).split(":")[0]) if key == "device" else str(a) == str(b)
        if a and b and not same:
            warnings.append(f"{label} differs: {a} (old) vs {b} (new)")
    return warnings


def by_key(loaded: Loaded, warnings: list[str]) -> dict[tuple, Record]:
    by_key: dict[tuple, Record] = {}
    for record in loaded.records:
        key = row_key(record)
        if key in by_key:
            warnings.append(f"{loaded.path}: rows {by_key[key].name!r} and {record.name!r} have the "
                            "same configuration; only the first is compared")
            continue
        by_key[key] = record
    return by_key
