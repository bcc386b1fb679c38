"""The operator catalogue people read: parameters with defaults and ranges, implementations
and whether each runs on this machine (and why not), and the exact cost model."""

from __future__ import annotations

import json
from typing import Any

import torch
from tabulate import tabulate as _tabulate

from lrprof.build.ops.registry import OpDef, list_ops
from lrprof.report import terminal_width, wrap, wrapped_table


def _fit(text: str, fmt: str, width: int) -> str:
    return text if fmt == "markdown" else wrap(text, width, "  ")


def describe(op: OpDef, device: torch.device, dtype: str = "float32") -> dict[str, Any]:
    return {
        "name": op.name,
        "summary": op.summary,
        "parameters": [{"option": p.flag, "type": p.type.__name__, "default": p.default_text(),
                        "allowed": p.range_text().removeprefix("must be "), "help": p.help}
                       for p in op.schema.params],
        "implementations": [{"name": i.name, "default": i.name == op.default_impl,
                             "available": (reason := i.unavailable_reason(device, dtype)) is None,
                             "why not": reason or "", "backward": i.backward, "summary": i.summary}
                            for i in op.impls],
        "reference": op.reference_impl,
        "exact MACs": op.cost_text,
    }


def catalogue(device: torch.device, dtype: str = "float32") -> list[dict[str, Any]]:
    return [describe(op, device, dtype) for op in list_ops()]


def render(entries: list[dict[str, Any]], fmt: str, device: torch.device, width: int | None = None) -> str:
    """JSON, markdown, or text for a terminal `width` columns wide (default: this terminal's),
    long cells wrapped."""
    if fmt == "json":
        return json.dumps({"device": str(device), "operators": entries}, indent=2) + "\n"
    width = width or terminal_width()

    def tabulate(rows: list[list[str]], headers: list[str], tablefmt: str, disable_numparse: bool) -> str:
        if tablefmt == "github":
            return _tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=disable_numparse)
        return wrapped_table(rows, headers, width)

    table = "github" if fmt == "markdown" else "simple"
    head = "## " if fmt == "markdown" else ""
    parts = [f"{head}Operators (availability on {device})", ""] if fmt == "markdown" else []
    for e in entries:
        parts += [_fit(f"{head}{e['name']}: {e['summary']}", fmt, width), ""]
        params = [[p["option"], p["type"], p["default"], p["allowed"], p["help"]] for p in e["parameters"]]
        parts += [tabulate(params, headers=["parameter", "type", "default", "allowed", "help"],
                           tablefmt=table, disable_numparse=True) if params else "(no parameters)", ""]
        impls = [[i["name"] + (" (default)" if i["default"] else ""),
                  "yes" if i["available"] else f"no: {i['why not']}", i["backward"], i["summary"]]
                 for i in e["implementations"]]
        parts += [tabulate(impls, headers=["implementation", f"runs on {device}", "backward", "what"],
                           tablefmt=table, disable_numparse=True), ""]
        parts += [_fit(f"exact MACs: {e['exact MACs']}; output checked against {e['reference']} in float64",
                       fmt, width), ""]
    return "\n".join(parts).rstrip() + "\n"
