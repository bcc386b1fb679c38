"""Network registry: `create_net(name, **overrides)` from builders registered by name.

Every network is split into the same top-level stages (stem, res2..res5, head) so that
per-stage figures line up across networks. Builders live one family per module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lrprof.spec.errors import SpecError
from lrprof.spec.registry import Registry

STAGES = ("stem", "res2", "res3", "res4", "res5", "head")
# Builder options that choose how layers compute, not what: a network that differs from
# the paper's only in these is still the paper's network.
RUNTIME_OPTIONS = frozenset({"impl"})


@dataclass(frozen=True)
class PaperFigures:
    """What a paper printed for a network: parameters (None: not printed) and MACs (papers
    call them FLOPs). `expected` says why ours differs by design, when it does (another
    counting convention, a choice the paper leaves open): the check then reads
    "differs (expected: ...)" instead of "fail", and the command does not fail."""

    source: str
    params: float | None
    macs: float
    expected: str = ""


@dataclass(frozen=True)
class NetDef:
    name: str
    summary: str
    builder: Callable[..., nn.Module]
    options: dict[str, Any] = field(default_factory=dict)  # overridable, with defaults
    paper: tuple[PaperFigures, ...] = ()
    reconstructed: PaperFigures | None = None  # a hand count from the reference, when no print
    # Open choices of the paper, each (label, builder overrides); the first is ours.
    choices: tuple[tuple[str, dict[str, Any]], ...] = ()
    notes: tuple[str, ...] = ()  # how this family is built, for the report
    # the operator whose implementations the `impl` option names (`--impl auto` picks one)
    impl_op: str | None = None


_NETS: Registry[NetDef] = Registry("net", "network")


def register_net(net: NetDef) -> NetDef:
    return _NETS.register(net)


def get_net(name: str) -> NetDef:
    return _NETS.get(name)


def list_nets() -> list[NetDef]:
    return _NETS.all()


def resolve_options(name: str, **overrides: Any) -> dict[str, Any]:
    """The builder's options: its defaults, with the overrides that are not None."""
    net = get_net(name)
    options = dict(net.options)
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in options:
            allowed = ", ".join(sorted(options)) or "none"
            raise SpecError(key, f"not an option of {name} (options: {allowed})", value)
        options[key] = value
    return options


def create_net(name: str, **overrides: Any) -> nn.Module:
    return get_net(name).builder(**resolve_options(name, **overrides))


def display_name(name: str, **overrides: Any) -> str:
    """'lr50', or 'lr50(k=5,m=4)' when options differ from the defaults."""
    net = get_net(name)
    options = resolve_options(name, **overrides)
    changed = [f"{k}={v}" for k, v in options.items() if v != net.options[k]]
    return f"{name}({','.join(changed)})" if changed else name


def _discover() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("cost", "paper") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
