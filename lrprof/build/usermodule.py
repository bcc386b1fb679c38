"""A user's own layer: where its class comes from, how it is built, what it is fed.

    target = load_target("path/to/layers.py:MyLayer")     # or "mypkg.attention:AttentionConv"
    kwargs = parse_init('{"channels": 64, "k": 7}')
    check_arguments(target, kwargs)                          # names the constructor takes
    module = build_module(target, kwargs, device, torch.float32)

Two kinds of failure, kept apart because they mean different things: bad input (a target
that names no file or class, --init that is not a JSON object or names arguments the
constructor does not take, a malformed --input) raises `SpecError` naming the option (exit
2); the user's code failing (its module raises on import, its constructor or forward
raises) raises `ModuleFailure` (exit 1: the implementation failed, not the command line).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrprof.spec.errors import SpecError, describe
from lrprof.spec.layer import default_device, resolve_dtype

TARGET_FORM = "path/to/file.py:ClassName or package.module:ClassName"


class ModuleFailure(RuntimeError):
    """The user's code failed: importing its file, building the class or running it."""


@dataclass(frozen=True)
class Target:
    """A loaded class (or any callable that returns an nn.Module) and where it came from."""

    text: str  # as the user gave it: the row's identity
    obj: Callable[..., Any]
    attribute: str  # 'MyLayer' or 'Outer.Inner'
    source: str  # the file it was loaded from, or the module's name
    sha256: str | None  # of the source file, when there is one

    @property
    def name(self) -> str:
        return self.attribute.rsplit(".", 1)[-1]

    def call_text(self, kwargs: dict[str, Any]) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        return f"{self.name}({args})"


def _split_target(text: str) -> tuple[str, str]:
    if not isinstance(text, str) or ":" not in text:
        raise SpecError("module", f"{TARGET_FORM} (a colon before the class name)", text)
    where, _, attribute = text.rpartition(":")
    names = attribute.split(".")
    if not where or not all(n.isidentifier() for n in names):
        raise SpecError("module", TARGET_FORM, text)
    return where, attribute


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _package_name(path: Path) -> tuple[str, Path] | None:
    """A file inside a package (directories holding __init__.py): its dotted name and the
    directory to import that package from."""
    parts = [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    if len(parts) == 1 or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts), directory


@contextlib.contextmanager
def _on_path(directory: Path) -> Iterator[None]:
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _import_failure(what: str, exc: BaseException) -> ModuleFailure:
    return ModuleFailure(f"importing {what} failed: {describe(exc)}")


def _load_file(path: Path) -> Any:
    """Import a file: by its package name when it sits in a package (so its relative
    imports work and a module already imported is not run twice), else on its own."""
    packaged = _package_name(path)
    if packaged is not None:
        name, root = packaged
        try:
            with _on_path(root):
                module = importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            raise _import_failure(str(path), exc) from None
        if Path(getattr(module, "__file__", "") or "").resolve() == path:
            return module
        # another module of that name was imported first: load the file on its own
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"_lrprof_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError("module", "a Python source file (.py)", str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        with _on_path(path.parent):  # its sibling modules import as they would from a script
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise _import_failure(str(path), exc) from None
    return module


def _load_dotted(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # `lrprof` run from a project finds the project's packages
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise SpecError("module", f"an importable module ({exc})", name) from None
        raise _import_failure(name, exc) from None
    except (Exception, SystemExit) as exc:  # a parent package raised on import
        raise _import_failure(name, exc) from None
    if found is None:
        raise SpecError("module", f"an importable module (no module named {name!r})", name)
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:
        raise _import_failure(name, exc) from None


def load_target(text: str) -> Target:
    """The class (or factory) `text` names: 'path/to/file.py:Class' or 'pkg.mod:Class'."""
    where, attribute = _split_target(text)
    sha = None
    if _is_path(where):
        path = Path(where).expanduser().resolve()
        if path.is_dir():
            raise SpecError("module", f"{TARGET_FORM}: {where} is a directory, not a Python file (name "
                            "the .py file that defines the class)", text)
        if not path.is_file():
            raise SpecError("module", f"{TARGET_FORM}: no such file", where)
        module = _load_file(path)
        source = str(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        if not all(p.isidentifier() for p in where.split(".")):
            raise SpecError("module", TARGET_FORM, text)
        module = _load_dotted(where)
        source = where
        file = getattr(module, "__file__", None)
        if file and Path(file).is_file():
            sha = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            defined = sorted(n for n, v in vars(module).items()
                             if isinstance(v, type) and issubclass(v, nn.Module)
                             and getattr(v, "__module__", None) == module.__name__)
            listed = ", ".join(defined) or "none"
            raise SpecError("module", f"a class {where} defines (its nn.Module classes: {listed})",
                            attribute)
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError("module", "a class or a function that returns an nn.Module", attribute)
    return Target(text, obj, attribute, source, sha)


def parse_init(text: str | dict | None, option: str = "init") -> dict[str, Any]:
    """--init: a JSON object of constructor arguments ('{"channels": 64, "k": 7}')."""
    if text is None:
        return {}
    if isinstance(text, dict):
        return dict(text)
    allowed = "a JSON object of constructor arguments, e.g. '{\"channels\": 64}'"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(option, f"{allowed}; not JSON: {exc.msg} at column {exc.colno}", text) from None
    except RecursionError:
        raise SpecError(option, f"{allowed}; nested too deeply", text) from None
    if not isinstance(value, dict):
        raise SpecError(option, f"{allowed}, not a JSON {type(value).__name__}", text)
    return value


def parse_shape(text: str, option: str = "input") -> tuple[int, ...]:
    allowed = "tensor shape(s) such as 1x64x56x56, comma-separated or the option repeated"
    try:
        dims = tuple(int(p) for p in text.strip().lower().split("x"))
    except ValueError:
        raise SpecError(option, allowed, text) from None
    if not dims or min(dims) < 1:
        raise SpecError(option, allowed, text)
    return dims


def parse_inputs(values: str | Sequence[str] | None, option: str = "input") -> tuple[tuple[int, ...], ...]:
    """--input 1x64x56x56 (repeatable, or comma-separated): one shape per input tensor."""
    if values is None or (not isinstance(values, str) and not values):
        raise SpecError(option, "one shape per input tensor, such as 1x64x56x56 (required)", None)
    items = [values] if isinstance(values, str) else list(values)
    shapes = []
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                raise SpecError(option, "shapes such as 1x64x56x56, none empty", item)
            shapes.append(parse_shape(part, option))
    return tuple(shapes)


def shapes_text(shapes: Sequence[Sequence[int]]) -> str:
    return ",".join("x".join(map(str, s)) for s in shapes)


def _signature(obj: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):  # builtins and some C types have none
        return None


def constructor_arguments(target: Target) -> tuple[list[inspect.Parameter], bool]:
    """The constructor's named arguments, and whether it takes any keyword (**kwargs)."""
    sig = _signature(target.obj)
    if sig is None:
        return [], True
    named = [p for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return named, open_ended


def signature_text(target: Target) -> str:
    sig = _signature(target.obj)
    return f"{target.name}{sig}" if sig is not None else target.name


def check_arguments(target: Target, kwargs: dict[str, Any], option: str = "init") -> None:
    """Every name is one the constructor takes, and every argument it needs is given."""
    named, open_ended = constructor_arguments(target)
    if not named and open_ended:
        return
    names = {p.name for p in named if p.kind is not p.POSITIONAL_ONLY}
    unknown = [k for k in kwargs if k not in names]
    if unknown and not open_ended:
        raise SpecError(option, f"{unknown[0]} is not an argument of {signature_text(target)}",
                        unknown[0])
    missing = [p.name for p in named if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise SpecError(option, f"{signature_text(target)} needs {', '.join(missing)}: give "
                        f"{'it' if len(missing) == 1 else 'them'} in --{option}",
                        ", ".join(missing))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Tensors a constructor makes without naming a dtype come out in `dtype`."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_module(target: Target, kwargs: dict[str, Any], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0,
                 construct_dtype: torch.dtype | None = None) -> nn.Module:
    """The module built (seeded), moved to `device` and `dtype`, in eval mode.
    `construct_dtype` is the default dtype while the constructor runs."""
    torch.manual_seed(seed)
    try:
        with default_dtype(construct_dtype):
            module = target.obj(**kwargs)
    except (Exception, SystemExit) as exc:
        raise ModuleFailure(f"building {target.call_text(kwargs)} failed: {describe(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModuleFailure(f"{target.call_text(kwargs)} returned a {type(module).__name__}, "
                            "not an nn.Module")
    try:
        return module.to(device=device, dtype=dtype).eval()
    except Exception as exc:
        raise ModuleFailure(f"moving {target.name} to {device}, {dtype}: {describe(exc)}") from None


def random_inputs(shapes: Sequence[Sequence[int]], dtype: torch.dtype, device: torch.device | str,
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Standard normal, drawn on the CPU in float32 (float64 for float64) then cast and
    moved, so every dtype and device sees the same values."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    return tuple(torch.randn(tuple(s), generator=generator, dtype=draw).to(device=device, dtype=dtype)
                 for s in shapes)


def run_once(module: nn.Module, inputs: Sequence[Any], what: str) -> Any:
    """One forward pass without autograd; the user's failure raises ModuleFailure."""
    try:
        with torch.no_grad():
            return module(*inputs)
    except (Exception, SystemExit) as exc:
        raise ModuleFailure(f"running {what} failed: {describe(exc)}") from None


@dataclass(frozen=True)
class ModuleSpec:
    """What `layer --module` profiles: a class, its constructor arguments, its inputs'
    shapes, dtype and device, and optionally a torch.compile backend."""

    target: str
    init: str = "{}"  # canonical JSON (sorted keys): part of the row's identity
    inputs: tuple[tuple[int, ...], ...] = ()
    dtype: str = "float32"
    device: str = "auto"
    compile: str | None = None

    @classmethod
    def create(cls, target: str, init: str | dict | None, inputs: Any, dtype: str = "float32",
               device: str = "auto", compile: str | None = None) -> ModuleSpec:
        """Parsed and validated (SpecError naming the option)."""
        resolve_dtype(dtype)
        kwargs = parse_init(init)
        if isinstance(inputs, (list, tuple)) and inputs and all(
                isinstance(s, (list, tuple)) for s in inputs):  # shapes from the API
            shapes = parse_inputs(shapes_text(inputs))
        else:
            shapes = parse_inputs(inputs)
        if compile is not None:
            compile = check_backend(compile)
        return cls(target, json.dumps(kwargs, sort_keys=True), shapes, dtype, device, compile)

    @property
    def kwargs(self) -> dict[str, Any]:
        return json.loads(self.init)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    def config(self) -> dict[str, Any]:
        """The row's identity: compare matches rows on exactly these."""
        device = default_device() if self.device == "auto" else self.device
        return {"module": self.target, "init": self.init, "input": shapes_text(self.inputs),
                "dtype": self.dtype, "device": torch.device(device).type,
                "compile": self.compile or "none"}

    def label(self) -> str:
        name = self.target.rpartition(":")[2]
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        extra = "" if self.dtype == "float32" else f" {self.dtype}"
        compiled = f" compiled[{self.compile}]" if self.compile else ""
        return f"{name}({args}) {shapes_text(self.inputs)}{extra}{compiled}"


def check_backend(name: str) -> str:
    if name not in torch._dynamo.list_backends(exclude_tags=()):
        usual = sorted(set(torch._dynamo.list_backends()) | {"eager", "aot_eager"})
        raise SpecError("compile", f"a torch.compile backend, such as {', '.join(usual)}", name)
    return name


__all__ = ["ModuleFailure", "ModuleSpec", "Target", "build_module", "check_arguments",
           "constructor_arguments", "load_target", "parse_init", "parse_inputs", "random_inputs",
           "run_once", "shapes_text", "signature_text"]
