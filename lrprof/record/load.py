"""Reading a report back: JSON or CSV, every figure validated before anyone decides on it
(`lrprof.record.validate`) and checked against the raw samples beside it
(`lrprof.record.consistency`), into Records and the environment they were measured in."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrprof.record.consistency import check_records
from lrprof.record.records import ENV_COLUMNS, READABLE_SCHEMAS, SCHEMA, Record, parse_cell, partial_text
from lrprof.record.validate import check_csv_row, check_json_record
from lrprof.spec.errors import InputError


@dataclass
class Loaded:
    path: Path
    records: list[Record]
    environment: dict[str, Any]
    partial: str | None = None  # why the report is incomplete, if it is
    command: str | None = None  # the command that wrote it (JSON reports), e.g. "layer", "sweep"
    argv: list[str] | None = None  # its arguments (JSON reports)

    def by_name(self) -> dict[str, Record]:
        found: dict[str, Record] = {}
        for r in self.records:
            found.setdefault(r.name, r)
        return found


def load(path: Path) -> Loaded:
    """A report written by lrprof, as JSON or CSV; anything else is a one-line input error."""
    if path.is_dir():
        found = ", ".join(sorted(p.name for p in path.glob("*.json"))[:5]) or "none here"
        raise InputError(f"{path}: a directory, not a report: name a report file in it (.json or .csv; "
                         f"JSON reports there: {found})")
    if not path.is_file():
        raise InputError(f"{path}: no such report file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise InputError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict) or data.get("schema") not in READABLE_SCHEMAS:
            raise InputError(f"{path}: not an lrprof report (expected schema {SCHEMA} or an earlier "
                             f"version: {', '.join(READABLE_SCHEMAS)})")
        if not isinstance(data.get("records"), list):
            raise InputError(f"{path}: malformed lrprof report (records: a list expected)")
        for index, raw in enumerate(data["records"]):
            check_json_record(path, index, raw)
        try:
            records = [Record.from_dict(r) for r in data["records"]]
            env = dict(data["environment"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed lrprof report ({exc})") from None
        check_records(path, records, csv=False)
        partial = data.get("partial")
        argv = data.get("argv")
        return Loaded(path, records, env, partial_text(partial) if isinstance(partial, dict) else None,
                      data.get("command") if isinstance(data.get("command"), str) else None,
                      [str(a) for a in argv] if isinstance(argv, list) else None)
    if path.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(text.splitlines()))
        except csv.Error as exc:
            raise InputError(f"{path}: not a readable CSV file ({exc})") from None
        if not rows or "kind" not in rows[0] or "name" not in rows[0]:
            raise InputError(f"{path}: not an lrprof CSV report (needs kind and name columns)")
        typed = [{k: parse_cell(v or "") for k, v in row.items() if k is not None} for row in rows]
        for index, row in enumerate(typed):
            check_csv_row(path, index, row)
        try:
            records = [Record.from_row(row) for row in typed]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{path}: malformed lrprof CSV report ({exc})") from None
        check_records(path, records, csv=True)
        env = {c: rows[0].get(c) for c in ENV_COLUMNS if rows[0].get(c)}
        env["device"] = rows[0].get("device")
        return Loaded(path, records, env, rows[0].get("partial_report") or None)
    raise InputError(f"{path}: unknown report format (expected .json or .csv)")


def load_report(path: str | Path) -> Loaded:
    """A report lrprof wrote (JSON or CSV, schema version 1 or 2), every figure validated:
    its records, the environment it was measured in, and why it is partial, if it is."""
    return load(Path(path))
