"""`lrprof ops`: every operator, its parameters, implementations and cost model."""

from __future__ import annotations

from typing import Annotated

import typer

import lrprof.cli.helptext as helptext
from lrprof.cli.app import app
from lrprof.spec.errors import SpecError

FORMATS = ("text", "markdown", "json")


@app.command(epilog=helptext.OPS)
def ops(
    device: Annotated[
        str, typer.Option(help="where availability is checked (default: cuda if present)")
    ] = "auto",
    dtype: Annotated[str, typer.Option(help="the dtype availability is checked for")] = "float32",
    format_: Annotated[str, typer.Option("--format", help="text, markdown or json")] = "text",
) -> None:
    """List the operators: parameters (defaults, ranges), implementations (available here, or
    why not) and exact cost models."""
    from lrprof.report.ops import catalogue, render
    from lrprof.spec.layer import resolve_device, resolve_dtype

    if format_ not in FORMATS:
        raise SpecError("format", f"one of {', '.join(FORMATS)}", format_)
    resolve_dtype(dtype)
    resolved = resolve_device(device)
    typer.echo(render(catalogue(resolved, dtype), format_, resolved), nl=False)
