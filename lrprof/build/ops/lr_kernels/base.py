"""The relation step's interface (`Relation`, `Sizes`) and its registry; see the package's docstring."""


from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrprof.spec.registry import Registry


@dataclass(frozen=True)
class Sizes:
    """The sizes a relation's traffic depends on; `e` is bytes per element."""

    batch: int
    channels: int
    height: int
    width: int
    out_height: int
    out_width: int
    groups: int
    k: int
    e: int

    @property
    def hw(self) -> int:
        return self.height * self.width

    @property
    def out_hw(self) -> int:
        return self.out_height * self.out_width


class Relation:
    """One implementation of the relation step (see the module docstring)."""

    name = ""
    summary = ""
    backward = "autograd through the forward's ops"
    devices: tuple[str, ...] = ("cpu", "cuda")
    # How the layer computes its three 1x1s around this relation: "conv" (nn.Conv2d, the
    # readable reference) or "matmul" (one batched matrix product over the flattened map:
    # the same weights and MACs, without a small-convolution library call's overhead).
    pointwise = "conv"

    def unavailable(self, device: torch.device, dtype: str) -> str | None:
        """Why it cannot run on this device and dtype, or None."""
        return None

    def __call__(self, layer: nn.Module, x: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                 prior: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def traffic(self, n: Sizes) -> dict[str, int]:
        """Bytes the relation step reads and writes by design, by tensor."""
        raise NotImplementedError

    def buffers(self, n: Sizes) -> dict[str, int]:
        """Its largest intermediate buffers, in bytes."""
        return {}

    def prepare(self, layer: nn.Module, inputs: tuple[Any, ...], backward: bool) -> dict[str, Any]:
        """One-time work before the first timed call (compile, build), returned as
        {"setup_s": seconds, "setup": what it was}; {} when there is none."""
        return {}

    def not_ready(self, device: torch.device, dtype: str) -> str | None:
        """Why a command would first spend a long one-time step on it here (a build not yet
        cached, a compile in every process), or None: `--impl auto` passes over what is not
        ready rather than start that step inside a command."""
        return None

    # `lrprof build`: the one-time step done ahead, returning {"setup_s", "setup"}; None: none
    build_ahead: Any = None

    def valgrind_problem(self) -> str | None:
        """Why it cannot run under valgrind (`--instructions`) here, or None."""
        return None


_RELATIONS: Registry[Relation] = Registry("impl", "relation implementation")
IMPLEMENTATIONS = ("unfold", "shift", "compiled", "fused_cpu", "triton_gpu")  # modules, in order


def register_relation(relation: Relation) -> Relation:
    return _RELATIONS.register(relation)


def get_relation(name: str) -> Relation:
    _load()
    return _RELATIONS.get(name)


def relations() -> list[Relation]:
    """Every implementation in the order of IMPLEMENTATIONS (the readable reference, unfold,
    first: the default), whichever module was imported first; others after, as registered."""
    _load()
    built_in = {name.split("_")[0]: i for i, name in enumerate(IMPLEMENTATIONS)}
    ordered = _RELATIONS.in_order()
    return sorted(ordered, key=lambda r: (built_in.get(r.name, len(built_in)), ordered.index(r)))


_LOADED = [False]


def _load() -> None:
    """Import every implementation module once (one imported directly before, e.g. by a
    test, must not stop the others from registering). None builds or imports anything
    heavy (a compiler, Triton) until it is first used."""
    if _LOADED[0]:
        return
    _LOADED[0] = True
    package = __name__.rpartition(".")[0]
    for name in IMPLEMENTATIONS:
        importlib.import_module(f"{package}.{name}")
