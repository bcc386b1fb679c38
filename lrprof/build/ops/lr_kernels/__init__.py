"""Implementations of the local relation layer's relation step.

Every implementation of `LocalRelation2d` shares the layer's parameters and its 1x1
convolutions (key, query, final) and geometry prior; they differ only in the step between:
the appearance logits Phi(q, k) + prior over each k x k window, the softmax over the
positions inside the image, and the aggregation of each group's m channels. Each
implementation here is a `Relation`:

    y = relation(layer, x, query, key, prior)   # x (B,C,H,W), query (B,G,H',W'),
                                                # key (B,G,H,W), prior (G,k*k) -> (B,C,H',W')

with the bytes it moves by design (`traffic`), where it can run (`unavailable`), how its
backward works, and an optional one-time `prepare` (a compile, a build) timed apart from
the latency. Modules: `unfold` (the readable reference), `shift`, `compiled`, `fused_cpu`
(C++/OpenMP), `triton_gpu` (Triton, CUDA or its interpreter).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lrprof.build.ops.local_relation import LocalRelation2d


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

    def __call__(self, layer: LocalRelation2d, x: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                 prior: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def traffic(self, n: Sizes) -> dict[str, int]:
        """Bytes the relation step reads and writes by design, by tensor."""
        raise NotImplementedError

    def buffers(self, n: Sizes) -> dict[str, int]:
        """Its largest intermediate buffers, in bytes."""
        return {}

    def prepare(self, layer: LocalRelation2d, inputs: tuple[Any, ...], backward: bool) -> dict[str, Any]:
        """One-time work before the first timed call (compile, build), returned as
        {"setup_s": seconds, "setup": what it was}; {} when there is none."""
        return {}


_RELATIONS: dict[str, Relation] = {}
IMPLEMENTATIONS = ("unfold", "shift", "compiled", "fused_cpu", "triton_gpu")  # modules, in order


def register_relation(relation: Relation) -> Relation:
    if relation.name in _RELATIONS:
        raise ValueError(f"relation implementation {relation.name} is registered already")
    _RELATIONS[relation.name] = relation
    return relation


def get_relation(name: str) -> Relation:
    _load()
    try:
        return _RELATIONS[name]
    except KeyError:
        from lrprof.spec.errors import SpecError

        raise SpecError("impl", f"one of {', '.join(_RELATIONS)}", name) from None


def relations() -> list[Relation]:
    """Every implementation, the readable reference (unfold) first."""
    _load()
    return list(_RELATIONS.values())


def _load() -> None:
    if _RELATIONS:
        return
    # Import order is the order of `lrprof layer --impl all`; none builds or imports
    # anything heavy (a compiler, Triton) until it is first used.
    for name in IMPLEMENTATIONS:
        importlib.import_module(f"{__name__}.{name}")


__all__ = ["Relation", "Sizes", "get_relation", "register_relation", "relations"]
