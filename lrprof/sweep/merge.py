"""Join the rows files of one sweep (its shards, or one resumed file) into one set of
records: one per grid row, in grid order, with what is missing and what was measured
twice said, not hidden.

Files must come from one setup (device type and model, torch and lrprof versions) and
one grid; anything else is refused unless `allow_mixed`, and then every difference is a
warning in the report. A row measured again after a failure (`--retry-failed`) replaces
the failed line; a row measured successfully twice (overlapping shards) is a duplicate:
the first measurement is kept and the duplicate reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrprof.build.grid import config_key
from lrprof.measure.device import Environment
from lrprof.record.records import Record
from lrprof.record.validate import check_json_record
from lrprof.spec.errors import InputError
from lrprof.sweep.run import setup_differences
from lrprof.sweep.store import Contents, RowLine, read_rows


@dataclass
class Merged:
    records: list[Record]  # one per measured grid row, in grid order
    environment: Environment
    sources: list[Path]
    grid_size: int
    missing: list[str] = field(default_factory=list)  # names of grid rows no file holds
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # rows measured more than once
    retried: int = 0  # failed rows measured again, the later line kept
    extra: list[str] = field(default_factory=list)  # rows of no grid the files declare
    invalid: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing


def rows_files(paths: list[Path]) -> list[Path]:
    """The rows files named, and the `*.jsonl` files in each directory named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise InputError(f"{path}: no sweep rows files (*.jsonl) in this directory")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    return list(dict.fromkeys(files))


def _name_of(config: dict[str, Any]) -> str:
    from lrprof.build.ops.registry import spec_label
    from lrprof.spec.layer import LayerSpec

    fields = {k: config[k] for k in ("op", "impl", "channels", "height", "width", "batch", "dtype")
              if k in config}
    params = {k: v for k, v in config.items() if k not in fields and k != "device"}
    try:
        return spec_label(LayerSpec(device=str(config.get("device", "cpu")), **fields, **params))
    except Exception:  # an operator this process does not know: the identity itself
        return config_key(config)


def merge_rows(paths: list[Path], allow_mixed: bool = False) -> Merged:
    files = rows_files(paths)
    contents: list[Contents] = []
    for path in files:
        c = read_rows(path)
        if c.header is None:
            raise InputError(f"{path}: not an lrprof sweep rows file (no header line)")
        contents.append(c)
    first = contents[0]
    warnings: list[str] = []
    for c in contents:
        if c.bad_lines:
            warnings.append(f"{c.path}: lines {', '.join(map(str, c.bad_lines[:10]))} are not sweep "
                            "rows and were skipped")
        if c.torn_tail:
            warnings.append(f"{c.path}: its last line was cut short (a killed run) and was skipped")
    mixed = []
    base_env = first.header["environment"]
    for c in contents:
        for header in c.headers:
            diffs = setup_differences(base_env, header.get("environment") or {})
            if diffs:
                mixed.append(f"{c.path} differs from {first.path}: {'; '.join(diffs)}")
    fingerprints = {c.header["grid"].get("fingerprint") for c in contents}
    if len(fingerprints) > 1:
        mixed.append(f"the files come from {len(fingerprints)} different grids")
    if mixed and not allow_mixed:
        raise InputError("cannot merge: " + "; ".join(mixed) + " (--allow-mixed merges them anyway)")
    warnings += mixed
    threads = sorted({str(h.get("options", {}).get("threads")) for c in contents for h in c.headers})
    if len(threads) > 1:
        warnings.append(f"rows ran on different CPU thread settings: {', '.join(threads)}")

    # the grid: every file's latest declaration, in order, each row once
    grid: dict[str, dict[str, Any]] = {}
    invalid: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, dict[str, str]] = {}
    for c in contents:
        for config in c.header["grid"].get("configs", []):
            grid.setdefault(config_key(config), config)
        for entry in c.header["grid"].get("invalid", []):
            invalid.setdefault(config_key(entry["config"]), entry)
        for op, reasons in (c.header["grid"].get("unavailable") or {}).items():
            unavailable.setdefault(op, {}).update(reasons)
    shards = _shards(contents, warnings)

    lines: dict[str, list[RowLine]] = {}
    for c in contents:
        for number, line in enumerate(c.rows):
            check_json_record(c.path, number, line.record.to_dict())  # NaN, negative counts: refused
            lines.setdefault(line.key, []).append(line)
    chosen: dict[str, Record] = {}
    duplicates, retried = [], 0
    for key, found in lines.items():
        ok = [line for line in found if not line.record.error]
        if len(ok) > 1:
            duplicates.append({"name": ok[0].record.name, "times": len(ok),
                               "files": sorted({line.source for line in ok})})
        if ok:
            retried += any(line.record.error for line in found)
            chosen[key] = ok[0].record
        else:
            chosen[key] = found[-1].record
    records = [chosen[k] for k in grid if k in chosen]
    merged = Merged(
        records=records,
        environment=Environment.from_dict(base_env),
        sources=files,
        grid_size=len(grid),
        missing=[_name_of(config) for k, config in grid.items() if k not in chosen],
        duplicates=duplicates,
        retried=retried,
        extra=[chosen[k].name for k in chosen if k not in grid],
        invalid=list(invalid.values()),
        unavailable=unavailable,
        warnings=warnings,
        shards=shards,
        argv=list(first.header.get("argv") or []),
        options=dict(first.header.get("options") or {}),
    )
    if merged.extra:
        shown = ", ".join(merged.extra[:5]) + (" ..." if len(merged.extra) > 5 else "")
        warnings.append(f"{len(merged.extra)} row(s) belong to no grid these files declare and were "
                        f"left out: {shown}")
    return merged


def _shards(contents: list[Contents], warnings: list[str]) -> list[str]:
    """The shards present ('2/8'), with a warning for shards of the split that no file holds."""
    seen: dict[int, set[int]] = {}
    for c in contents:
        shard = c.header.get("shard") or {}
        seen.setdefault(int(shard.get("count", 1)), set()).add(int(shard.get("index", 1)))
    if len(seen) > 1:
        warnings.append(f"the files come from different splits: {', '.join(f'{n} shards' for n in seen)}")
    for count, indices in seen.items():
        absent = sorted(set(range(1, count + 1)) - indices)
        if absent:
            warnings.append(f"no file for shard(s) {', '.join(f'{i}/{count}' for i in absent)}")
    return [f"{i}/{n}" for n, indices in sorted(seen.items()) for i in sorted(indices)]
