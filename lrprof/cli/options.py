"""The options the measuring commands share, each defined once (name, type, default, help),
and the per-operator options generated from the operators' schemas (`lrprof ops` lists them).

Commands pick from the catalogue with `shared(...)`, overriding a default or a help text
where theirs differs (a sweep times lighter; its sizes take ranges). Operator options are
added on `refresh()`, which imports every operator: `lrprof --help` does not pay for that.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

LISTS = "comma-separated, ranges start:stop[:step]"

# name -> (type, default, help): the one definition of each shared option
CATALOGUE: dict[str, tuple[Any, Any, str]] = {
    "op": (str, "lr", "operator(s), comma-separated (lrprof ops lists them)"),
    "impl": (str | None, None, "implementation(s), comma-separated, all, or auto (the fastest ready "
                               "on the device); default: the operator's first"),
    "channels": (str, "64", "channels C (comma-separated for several)"),
    "size": (str, "56", "input size N or HxW (comma-separated for several)"),
    "batch": (str, "1", "batch size B"),
    "device": (str, "auto", "cpu, cuda, cuda:N (default: cuda if present)"),
    "dtype": (str, "float32", "float32, float16, bfloat16 or float64"),
    "baseline": (str, "conv3x3", "conv3x3 (a dense 3x3 conv of each row's shape, same run) or none"),
    "threads": (int | None, None, "CPU threads (default: torch's)"),
    "min_runs": (int, 10, "fewest timed runs per row and phase (>= 2)"),
    "min_time": (float, 0.5, "CPU: seconds of timed calls per row and phase, at least"),
    "repeat": (int, 1, "time all rows in N fresh processes (interleaved in each) and pool their runs; "
               "the report gives the spread between processes beside the spread within one"),
    "out": (Path | None, None, "write the reports into DIR"),
    "trace": (Path | None, None, "write DIR/<command>-trace.json.gz: the profiled runs as a Chrome/Perfetto "
                                 "trace, a range per row and phase (on CUDA also NVTX ranges for nsys)"),
    # a user's own nn.Module instead of an operator (lrprof/cli/byo.py)
    "module": (str | None, None, "profile your own nn.Module: path/to/file.py:Class or "
                                 "package.module:Class (instead of --op)"),
    "init": (str | None, None, "--module: constructor arguments as a JSON object"),
    "input": (list[str] | None, None, "--module: input shape(s) such as 1x64x56x56 (comma-separated "
                                      "or repeated, one per input tensor)"),
    "compile": (str | None, None, "--module: torch.compile it first with this backend (inductor, "
                                  "aot_eager, eager ...)"),
}


def shared(*names: str, **helps: Any) -> list[tuple]:
    """(name, type, default, help) rows for a command's table, from the catalogue; a keyword
    gives a name its own help text, or `(default, help)` its own default too."""
    rows = []
    for name in names:
        kind, default, text = CATALOGUE[name]
        own = helps.get(name)
        if isinstance(own, tuple):
            default, text = own
        elif own is not None:
            text = own
        rows.append((name, kind, default, text))
    return rows


def operator_params() -> dict[str, Any]:
    """Every operator parameter by name, with the operators that take it (a name two
    operators share must mean the same type)."""
    from lrprof.build.ops.registry import list_ops

    found: dict[str, Any] = {}
    for op in list_ops():
        for param in op.schema.params:
            entry = found.setdefault(param.name, {"param": param, "ops": [], "helps": {}})
            if entry["param"].type is not param.type:
                raise TypeError(f"parameter {param.name}: {op.name} declares {param.type.__name__}, "
                                f"{entry['ops'][0]} {entry['param'].type.__name__}")
            entry["ops"].append(op.name)
            entry["helps"].setdefault(param.help, []).append(op.name)
    return found


def operator_help(entry: dict[str, Any]) -> str:
    """One option's help for the operators that take it: their help with their names; where
    they mean different things, each text after the operators it belongs to, kept apart."""
    helps: dict[str, list[str]] = entry["helps"]
    if len(helps) == 1:
        return f"{next(iter(helps))} [{', '.join(entry['ops'])}]"
    return " | ".join(f"[{', '.join(ops)}] {text}" for text, ops in helps.items())


def command_signature(common: list[tuple], flags: list[tuple],
                      arguments: tuple[inspect.Parameter, ...] = (),
                      operators: bool = True, lists: bool = True) -> inspect.Signature:
    """The options of a command that takes every operator's parameters (`layer`, `sweep`):
    `common` entries are (name, type, default, help[, flag]), `flags` (name, flag, default, help);
    `arguments` are positional parameters that come first (`check`'s class); `lists`: the
    operator options take comma lists (not `check`: one configuration)."""
    reserved = {name for name, *_ in common} | {name for name, *_ in flags}
    params = list(arguments) + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=Annotated[kind, typer.Option(*decls, help=text)])
        for name, kind, default, text, *decls in common
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                          annotation=Annotated[bool, typer.Option(flag, help=text)])
        for name, flag, default, text in flags
    ]
    for name, entry in sorted(operator_params().items() if operators else ()):
        if name in reserved:
            raise TypeError(f"operator parameter {name} clashes with a common option")
        param = entry["param"]
        text = operator_help(entry)
        if param.type is bool:
            option = typer.Option(f"{param.flag}/--no-{param.flag[2:]}", help=text, show_default=False)
            annotation = Annotated[bool | None, option]
        else:
            text += " (comma-separated for several)" if lists else " (one value)"
            annotation = Annotated[str | None, typer.Option(help=text, show_default=False)]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=annotation))
    return inspect.Signature(params)


_SCHEMA_COMMANDS: list[tuple[Any, list[tuple], list[tuple], tuple[inspect.Parameter, ...], bool]] = []


def _apply(fn: Any, common: list[tuple], flags: list[tuple],
           arguments: tuple[inspect.Parameter, ...] = (), operators: bool = True, lists: bool = True) -> None:
    fn.__signature__ = command_signature(common, flags, arguments, operators, lists)
    fn.__annotations__ = {name: p.annotation for name, p in fn.__signature__.parameters.items()}


def schema_options(fn: Any, common: list[tuple], flags: list[tuple],
                   arguments: tuple[inspect.Parameter, ...] = (), lists: bool = True) -> Any:
    """Give a command its common options now, and one option per operator parameter once
    `refresh` runs (the operators are imported then: `lrprof --help` need not import them);
    `lists`: whether those take comma lists."""
    _SCHEMA_COMMANDS.append((fn, common, flags, arguments, lists))
    _apply(fn, common, flags, arguments, operators=False, lists=lists)
    return fn


def refresh() -> None:
    """Options from the operators registered now (one registered after import, by a test or
    a user's package, gets its options on the next invocation)."""
    for fn, common, flags, arguments, lists in _SCHEMA_COMMANDS:
        _apply(fn, common, flags, arguments, lists=lists)
