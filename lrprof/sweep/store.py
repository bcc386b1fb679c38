"""A sweep's rows on disk: one JSON object per line, appended and fsynced one at a time,
so a sweep killed at any moment (SIGKILL, a lost node, a Slurm timeout) keeps every row
it finished, and a resumed sweep knows exactly which rows it need not measure again.

Lines are of two types. A `header` opens every session that writes to the file: the
environment it measured on, the whole grid's row identities, the shard, the options. A
`row` holds one configuration's record, keyed by its identity (`grid.config_key`). A
line cut short by a kill is the last one; reading ignores it, and the next writer cuts
it off before appending.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrprof.record.records import Record
from lrprof.spec.errors import InputError

SCHEMA = "lrprof.sweep.run/1"
HEADER, ROW = "header", "row"


@dataclass
class RowLine:
    """One measured row as stored: its key, its record, and how it was measured."""

    key: str
    record: Record
    index: int | None = None  # position in the full grid
    wall_s: float | None = None  # seconds the row took, worker included
    worker: int | None = None  # the worker process's id
    source: str = ""  # the file it came from


@dataclass
class Contents:
    """What one rows file holds: its headers (one per session) and its rows, in order."""

    path: Path
    headers: list[dict[str, Any]] = field(default_factory=list)
    rows: list[RowLine] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # line numbers that were not JSON
    torn_tail: bool = False  # the last line was cut short (a kill while writing)

    @property
    def header(self) -> dict[str, Any] | None:
        """The latest session's header."""
        return self.headers[-1] if self.headers else None


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, ended by a newline)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            yield number, line.rstrip("\n"), line.endswith("\n")


def read_rows(path: Path) -> Contents:
    """Every header and row of a rows file; a torn last line is noted, not raised."""
    if not path.is_file():
        raise InputError(f"{path}: no such rows file")
    contents = Contents(path)
    for number, text, complete in _lines(path):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            if complete:
                contents.bad_lines.append(number)
            else:
                contents.torn_tail = True
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            contents.bad_lines.append(number)
            continue
        if data.get("type") == HEADER:
            contents.headers.append(data)
        elif data.get("type") == ROW:
            try:
                record = Record.from_dict(data["record"])
            except (KeyError, TypeError, ValueError, AttributeError):
                contents.bad_lines.append(number)
                continue
            contents.rows.append(RowLine(data["key"], record, data.get("index"), data.get("wall_s"),
                                         data.get("worker"), str(path)))
        else:
            contents.bad_lines.append(number)
    return contents


def _cut_torn_tail(path: Path) -> None:
    """Drop an unterminated last line (a write a kill interrupted) before appending."""
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # find the last newline, reading backwards in blocks
        position, block = size, 1 << 16
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            found = chunk.rfind(b"\n")
            if found >= 0:
                handle.truncate(start + found + 1)
                return
            position = start
        handle.truncate(0)


class RowWriter:
    """Appends lines to a rows file, each flushed and fsynced before `append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _cut_torn_tail(path)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        _fsync_dir(path.parent)

    def _write(self, data: dict[str, Any]) -> None:
        self._handle.write(json.dumps(data, default=str, separators=(",", ":")) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def header(self, **fields: Any) -> None:
        self._write({"schema": SCHEMA, "type": HEADER, **fields})

    def row(self, line: RowLine) -> None:
        self._write({"schema": SCHEMA, "type": ROW, "key": line.key, "index": line.index,
                     "wall_s": line.wall_s, "worker": line.worker, "record": line.record.to_dict()})

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(directory: Path) -> None:
    """Make the file's name durable too (a new file in a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
