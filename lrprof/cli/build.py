"""`lrprof build`: each implementation's one-time step done ahead (the fused C++ kernel's
compile), so that `--impl auto` can pick it without a command ever waiting on a build."""

from __future__ import annotations

from typing import Annotated

import typer

from lrprof.cli.app import EXIT_FAILED, app

HELP = ("Build ahead what an implementation needs once per machine (the fused C++ kernel), then say "
        "what --impl auto picks here.")


@app.command("build", help=HELP)
def build(
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N (default: cuda if present)")] = "auto",
    dtype: Annotated[str, typer.Option(help="the dtype --impl auto is asked about")] = "float32",
) -> None:
    from lrprof.build.ops.registry import list_ops
    from lrprof.profile.choice import build_ahead, choose_impl
    from lrprof.spec.layer import resolve_device, resolve_dtype

    resolve_dtype(dtype)
    resolved = resolve_device(device)
    built = build_ahead(resolved)
    for entry in built:
        if entry.error is not None:
            typer.echo(f"{entry.op}[{entry.impl}]: failed: {entry.error}")
        else:
            typer.echo(f"{entry.op}[{entry.impl}]: {entry.what}")
    if not built:
        typer.echo(f"nothing to build ahead on {resolved.type}")
    for op in list_ops():
        if op.speed_order.get(resolved.type):
            typer.echo(choose_impl(op, resolved, dtype).text())
    if any(entry.error is not None for entry in built):
        raise typer.Exit(EXIT_FAILED)
