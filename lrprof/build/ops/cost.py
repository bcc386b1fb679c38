"""Analytical cost of an operator: exact terms, parameters and the published model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Term:
    """One named part of the exact count, with the formula it came from."""

    name: str
    macs: int
    formula: str


@dataclass(frozen=True)
class CostModel:
    """What an operator costs on paper, for one configuration.

    `macs` are multiply-accumulates (1 MAC = 2 FLOPs). Softmax exponentials are not MACs
    and are kept apart in `softmax_exps`. `paper_macs` is the published O-model evaluated
    at this configuration (None when the operator has none) and `paper_band` the range of
    counted / published the operator's authors' model is expected to stay in (None: the
    published formula is exact). `activation_bytes` names the
    tensors a reference kernel of the operator holds (the official one where there is one),
    and `implementation_bytes` the largest buffers of the implementation costed.
    `minimal_bytes` is what any implementation must read and write (each input once, the
    output once) and `design_bytes` what the implementation costed moves by its design;
    both are empty where an operator does not declare them.
    """

    terms: tuple[Term, ...]
    params: int
    softmax_exps: int = 0
    paper_macs: float | None = None
    paper_formula: str = ""
    paper_band: tuple[float, float] | None = None
    activation_bytes: dict[str, int] = field(default_factory=dict)
    implementation_bytes: dict[str, int] = field(default_factory=dict)
    minimal_bytes: dict[str, int] = field(default_factory=dict)
    design_bytes: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def macs(self) -> int:
        return sum(t.macs for t in self.terms)

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(name)
