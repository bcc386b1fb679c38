"""Counting work at torch's dispatcher: every op a module runs, forward and backward,
meets the rule table of `lrprof.measure.rules` or is listed as uncounted.

A `TorchDispatchMode` sees the aten ops of eager modules, of `torch.compile`d modules
(dynamo runs the original code while a dispatch mode is active, so its ops are counted,
not inductor's fused kernels), of `autograd.Function`s (their forward and backward
bodies) and `torch.library` custom ops under their own name. torch's `ModuleTracker`
attributes each op to the modules it ran inside, and tells forward from backward.

Which table prices each op is the *convention* (lrprof.measure.conventions): lrprof's own
(default), fvcore's or FlopCounterMode's; the other two are applied to the same calls, so
the result holds every convention's figure per op family. On meta tensors (`--meta`) the
count runs without weights or compute; an op that needs real values (a Python read of a
tensor, a data-dependent shape) is refused by name (`NeedsValues`).

A kernel that never goes through the dispatcher (a C++ or Triton kernel called
directly) would be invisible. It still has to put its result somewhere: when memory that
a dispatched allocation created (`aten::empty`...) is read, or returned, before any
dispatched op wrote it, the counter lists that as *opaque*, and the count is incomplete.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.module_tracker import ModuleTracker

from lrprof.measure import conventions, flex
from lrprof.measure.modes import (
    VALUE_OPS,
    NeedsValues,
    dynamo_not_imported,
    flex_eager,
    meta_attention,
    refuse_value_modules,
)
from lrprof.measure.rulebase import Rule, zero
from lrprof.measure.rules import RULES, ZERO_BACKWARD_NODES, Work

METHOD = "TorchDispatchMode over lrprof's rule table; modules by torch's ModuleTracker"
FWD, BWD = "fwd", "bwd"
ALLOCATIONS = frozenset({"aten::empty", "aten::empty_like", "aten::empty_strided",
                         "aten::new_empty", "aten::new_empty_strided"})
@dataclass(frozen=True)
class OpCount:
    """One op in one phase: how often it ran, what it counted and by which rule."""

    op: str
    phase: str
    family: str
    calls: int
    macs: int
    exps: int
    rule: str


@dataclass(frozen=True)
class CountResult:
    """Counted work of one forward pass (and of one backward pass, when asked for)."""

    macs: int  # forward
    softmax_exps: int  # forward exponentials (softmax, exp)
    by_op: tuple[OpCount, ...]
    uncounted: dict[str, int]  # op (phase-tagged for backward) -> calls: ops no rule covers
    module_macs: dict[str, int] = field(default_factory=dict)  # forward, inclusive; "" = all
    bwd_macs: int | None = None
    bwd_exps: int | None = None
    opaque: tuple[str, ...] = ()  # memory read or returned that no dispatched op wrote
    method: str = METHOD
    convention: str = conventions.LRPROF
    # every convention's MACs per phase and family: {convention: {phase: {family: MACs}}}
    conventions: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    missed_by_flopcounter: tuple[str, ...] = ()  # attention ops FlopCounterMode does not see

    @property
    def complete(self) -> bool:
        return not self.uncounted and not self.opaque

    def family_macs(self, phase: str = FWD) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for row in self.by_op:
            if row.phase == phase:
                out[row.family] += row.macs
        return dict(out)

    def op_macs(self, phase: str = FWD) -> dict[str, int]:
        return {row.op: row.macs for row in self.by_op if row.phase == phase}


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return None
    return ptr or None  # 0: an empty tensor holds no memory


class _Tally:
    """What the mode saw: per (op, phase) calls and work, per module work, uncounted ops,
    and the storages allocated but not yet written by a dispatched op."""

    def __init__(self, tracker: ModuleTracker | None, names: dict[str, str],
                 convention: str = conventions.LRPROF) -> None:
        self.tracker = tracker
        self.names = names
        self.convention = conventions.check(convention)
        self.families: dict[tuple[str, str, str], int] = defaultdict(int)  # (convention, phase, family)
        self.rules_used: dict[str, Rule] = {}
        self.missed: set[str] = set()
        self.meta = False
        self.calls: Counter = Counter()
        self.work: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.module: dict[tuple[str, str], int] = defaultdict(int)
        self.uncounted: Counter = Counter()
        self.unwritten: dict[int, str] = {}
        self.opaque: list[str] = []
        self.paused = False
        self.record_forward = True

    def phase(self) -> str:
        return BWD if torch._C._current_graph_task_id() != -1 else FWD

    def modules(self) -> set[str]:
        if self.tracker is None:
            return {""}
        return {self.names.get(p, p) for p in self.tracker.parents}

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = func._schema.name
        self._track_storage(name, func, args, kwargs, out)
        phase = self.phase()
        if phase == FWD and not self.record_forward:
            return
        node = _zero_backward_node() if phase == BWD else None
        self._price(name, phase, lambda convention: self.rule(convention, name, node), args, kwargs, out)

    def record_hop(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """A higher-order op (flex_attention): priced as a whole by lrprof.measure.flex; any
        other is listed as uncounted."""
        name = func.name()
        phase = self.phase()
        if phase == FWD and not self.record_forward:
            return
        self._price(name, phase, lambda convention: flex.rule(name, convention, _measure), args, kwargs, out)

    def _price(self, name: str, phase: str, rule_for: Any, args: tuple, kwargs: dict, out: Any) -> None:
        rule = rule_for(self.convention)
        self.calls[(name, phase)] += 1
        if rule is None:
            self.uncounted[name if phase == FWD else f"{name} (backward)"] += 1
            return
        self.rules_used[name] = rule
        work = rule.work(args, kwargs, out)
        totals = self.work[(name, phase)]
        totals[0] += work.macs
        totals[1] += work.exps
        if work.macs:
            for module in self.modules():
                self.module[(module, phase)] += work.macs
        self.families[(self.convention, phase, rule.family)] += work.macs
        for other in conventions.NAMES:
            if other != self.convention:
                peer = rule_for(other)
                if peer is not None:
                    self.families[(other, phase, peer.family)] += peer.work(args, kwargs, out).macs
        if name in conventions.MISSED_BY_FLOPCOUNTER:
            self.missed.add(name)

    def rule(self, convention: str, name: str, node: str | None) -> Rule | None:
        """The rule that prices `name` under `convention`: lrprof's own table (None: no
        rule, uncounted), or a peer's, where an op without a handle counts 0. Inside the
        backward of a pooling or normalisation node every op counts 0, like its forward."""
        own = RULES.get(name)
        family = own.family if own is not None else "other"
        if node is not None:
            return Rule(family if own is not None else "pooling or normalisation", zero,
                        f"0: part of {node}, counted as its forward is (0)")
        if convention == conventions.LRPROF:
            return own
        peer = conventions.table(convention).get(name)
        return peer if peer is not None else Rule(family, zero, conventions.zero_reason(convention))

    def _track_storage(self, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Follow memory from dispatched allocations: a write by a dispatched op clears it,
        a read of it before any such write is an opaque kernel's doing. Views (detach, view,
        expand...) read nothing; they share the storage's state."""
        written: set[int] = set()
        read: list[torch.Tensor] = []
        arguments = func._schema.arguments
        positional = [a for a in arguments if not a.kwarg_only]
        pairs = list(zip(positional, args, strict=False))
        pairs += [(a, kwargs[a.name]) for a in arguments if a.name in kwargs]
        for argument, value in pairs:
            tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
            alias = argument.alias_info
            if alias is not None and alias.is_write:
                written.update(k for k in map(_storage_key, tensors) if k)
            else:
                read += tensors
        out_keys = {_storage_key(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        aliasing = getattr(func, "is_view", False) or name in ALLOCATIONS
        for t in read:
            key = _storage_key(t)
            if key in self.unwritten and key not in written and key not in out_keys and not aliasing:
                self.opaque.append(f"{name} read memory from {self.unwritten.pop(key)} that no "
                                   "dispatched op wrote (a kernel outside the dispatcher?)")
        for key in written:
            self.unwritten.pop(key, None)
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for key in out_keys:
            if key is None or key in inputs:
                continue  # a view of an input keeps the input's state
            if name in ALLOCATIONS:
                self.unwritten[key] = name
            else:
                self.unwritten.pop(key, None)  # fresh memory written by this op

    def check_outputs(self, out: Any) -> None:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                key = _storage_key(t)
                if key in self.unwritten:
                    self.opaque.append(f"the module's output came from {self.unwritten.pop(key)} "
                                       "and no dispatched op wrote it (a kernel outside the dispatcher?)")


class _CountingMode(TorchDispatchMode):
    supports_higher_order_operators = True  # flex_attention comes here whole

    def __init__(self, tally: _Tally) -> None:
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            if self.tally.meta:
                raise NeedsValues(f"--meta: {func.name()} needs real tensor values (its block mask "
                                  "says which blocks are computed); count without --meta")
            out = func(*args, **kwargs)  # this mode is off here: its parts are not counted twice
            if not self.tally.paused:
                self.tally.record_hop(func, args, kwargs, out)
            return out
        if self.tally.meta:
            return self._meta_call(func, args, kwargs)
        out = func(*args, **kwargs)
        if not self.tally.paused:
            self.tally.record(func, args, kwargs, out)
        return out


    def _meta_call(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = func._schema.name
        where = ", ".join(sorted(m for m in self.tally.modules() if m)) or "the model"
        if name in VALUE_OPS:
            raise NeedsValues(f"--meta: {name} in {where} needs real tensor values (a value read "
                              "by Python or a data-dependent shape); count without --meta")
        try:
            out = func(*args, **kwargs)
        except (NotImplementedError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NeedsValues(f"--meta: {name} in {where} cannot run on meta tensors ({first}); "
                              "count without --meta") from None
        if not self.tally.paused:
            self.tally.record(func, args, kwargs, out)
        return out


def _measure(fn: Any) -> int:
    """MACs of one call of `fn` under lrprof's rules (a flex_attention score_mod on scalars)."""
    tally = _Tally(None, {})
    with _CountingMode(tally), torch.no_grad():
        fn()
    return sum(macs for macs, _ in tally.work.values())


def _zero_backward_node() -> str | None:
    """The autograd node running now when it is a pooling or normalisation backward."""
    node = torch._C._current_autograd_node()
    if node is None:
        return None
    name = node.name()
    return name if name.startswith(ZERO_BACKWARD_NODES) else None


def _tracker_names(model: nn.Module) -> dict[str, str]:
    """ModuleTracker names a module '<RootType>.a.b' (the root by its type); reports use the
    state-dict name 'a.b', and '' for the whole model."""
    root = type(model).__name__
    names = {"Global": "", root: ""}
    for fqn, _ in model.named_modules():
        if fqn:
            names[f"{root}.{fqn}"] = fqn
    return names


def _result(tally: _Tally, per_module: bool, backward: bool) -> CountResult:
    rows = []
    totals = {FWD: [0, 0], BWD: [0, 0]}
    for (name, phase), calls in sorted(tally.calls.items()):
        rule = tally.rules_used.get(name)
        if rule is None:
            continue
        macs, exps = tally.work[(name, phase)]
        rows.append(OpCount(name, phase, rule.family, calls, macs, exps, rule.why))
        totals[phase][0] += macs
        totals[phase][1] += exps
    module_macs = {m: n for (m, phase), n in tally.module.items() if phase == FWD} if per_module else {}
    if per_module:
        module_macs.setdefault("", totals[FWD][0])
    return CountResult(
        macs=totals[FWD][0], softmax_exps=totals[FWD][1], by_op=tuple(rows),
        uncounted=dict(tally.uncounted), module_macs=module_macs,
        bwd_macs=totals[BWD][0] if backward else None,
        bwd_exps=totals[BWD][1] if backward else None,
        opaque=tuple(dict.fromkeys(tally.opaque)),
        convention=tally.convention,
        conventions=_by_convention(tally, backward),
        missed_by_flopcounter=tuple(sorted(tally.missed)),
    )


def _by_convention(tally: _Tally, backward: bool) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {c: {FWD: {}, **({BWD: {}} if backward else {})}
                                                  for c in conventions.NAMES}
    for (convention, phase, family), macs in sorted(tally.families.items()):
        if phase in out[convention]:
            out[convention][phase][family] = out[convention][phase].get(family, 0) + macs
    return out


def count(model: nn.Module, *inputs: Any, per_module: bool = False, backward: bool = False,
          input_grad: bool = True, train_for_backward: bool = False,
          convention: str = conventions.LRPROF) -> CountResult:
    """Count one forward pass (model in its current mode, no autograd) and, with `backward`,
    the backward pass of a second forward: gradients of every parameter that requires one
    and, with `input_grad`, of the floating-point inputs. `train_for_backward` puts the
    model in train mode for that pass (batch norm on batch statistics). `convention` picks
    the rule table; inputs on the meta device count without compute (NeedsValues for an op
    that needs values)."""
    names = _tracker_names(model)
    tracker = ModuleTracker() if per_module else None
    tally = _Tally(tracker, names, convention)
    tally.meta = any(t.is_meta for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor))
    if tally.meta:
        refuse_value_modules(model)
    with dynamo_not_imported(model, _CountingMode), flex_eager(), meta_attention(tally.meta):
        with _tracked(tracker), _CountingMode(tally), torch.no_grad():
            out = model(*inputs)
            tally.check_outputs(out)
        if backward:
            _count_backward(model, inputs, tally, tracker, input_grad, train_for_backward)
    return _result(tally, per_module, backward)


class _tracked:
    """ModuleTracker when per-module figures are asked for, else nothing."""

    def __init__(self, tracker: ModuleTracker | None) -> None:
        self.tracker = tracker

    def __enter__(self) -> None:
        if self.tracker is not None:
            self.tracker.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.tracker is not None:
            self.tracker.__exit__(*exc)


def _count_backward(model: nn.Module, inputs: tuple, tally: _Tally, tracker: ModuleTracker | None,
                    input_grad: bool, train_for_backward: bool) -> None:
    grad_inputs = [
        x.detach().requires_grad_(input_grad and x.is_floating_point())
        if isinstance(x, torch.Tensor) else x
        for x in inputs
    ]
    wrt = [x for x in grad_inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    wrt += [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.train(train_for_backward)
    tally.record_forward = False  # the forward was counted above, without autograd
    try:
        with _tracked(tracker), _CountingMode(tally):
            out = model(*grad_inputs)
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
            tally.paused = True  # the output gradient is ours, not the model's work
            grads = [torch.randn_like(t) for t in outs]
            tally.paused = False
            if outs and wrt:
                torch.autograd.grad(outs, wrt, grads, allow_unused=True)
    finally:
        tally.record_forward = True
        tally.paused = False
        model.train(was_training)


def uncounted_text(uncounted: dict[str, int]) -> str:
    if not uncounted:
        return "none"
    return ", ".join(f"{op} x{n}" for op, n in sorted(uncounted.items()))


def missing_text(result: CountResult) -> str:
    """Why a count is incomplete, in one line: uncounted ops and opaque kernels."""
    parts = []
    if result.uncounted:
        parts.append("uncounted ops: " + uncounted_text(result.uncounted))
    if result.opaque:
        parts.append("opaque: " + "; ".join(result.opaque))
    return "; ".join(parts) or "none"


__all__ = ["BWD", "FWD", "CountResult", "NeedsValues", "OpCount", "Work", "count", "missing_text",
           "uncounted_text"]
