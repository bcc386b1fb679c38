"""`lrprof schema`: the JSON Schema every report and comparison lrprof writes validates against."""

from __future__ import annotations

import json

import typer

from lrprof.cli.app import app


@app.command()
def schema() -> None:
    """Print the JSON Schema of lrprof's JSON reports (version 2) and comparisons, field by
    field: validate a report with any JSON Schema validator, or write a script against it.

    Example: lrprof schema > lrprof-report.schema.json
    """
    from lrprof.record.schema import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
