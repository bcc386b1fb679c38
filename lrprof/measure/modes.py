"""What a counting dispatch mode needs around it: the ops a --meta count refuses (they
need real values), and two switches torch would otherwise flip the wrong way while the
mode is on (a dynamo import on the first dispatch; eager flex_attention's compile)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from torch import nn

# Ops whose result depends on tensor values (a Python read, a data-dependent shape): meta
# tensors have none, so a --meta count refuses them by name.
VALUE_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::nonzero_static",
    "aten::masked_select", "aten::unique_dim", "aten::_unique", "aten::_unique2",
    "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::bincount", "aten::equal",
    "aten::is_nonzero", "aten::histc", "aten::repeat_interleave", "aten::tolist",
})


class NeedsValues(RuntimeError):
    """A --meta count met an op that needs real values; the message names it (and the
    module it ran in)."""


@contextlib.contextmanager
def dynamo_not_imported(model: nn.Module, mode: type) -> Iterator[None]:
    """torch wraps a dispatch mode's __torch_dispatch__ so dynamo never traces it, and that
    wrapper imports torch._dynamo on its first call: seconds of imports that counting an
    eager model does not need. While dynamo is not loaded and the model is not compiled,
    the wrapper is told the function is its own disabled form; afterwards it is put back."""
    raw = getattr(mode.__torch_dispatch__, "__wrapped__", None)
    key = "__dynamo_disable"
    if (raw is None or "torch._dynamo" in sys.modules or hasattr(model, "_orig_mod")
            or getattr(raw, key, None) is not None):
        yield
        return
    setattr(raw, key, raw)
    try:
        yield
    finally:
        if getattr(raw, key, None) is raw:
            delattr(raw, key)


@contextlib.contextmanager
def flex_eager() -> Iterator[None]:
    """Eager flex_attention wraps itself in torch.compile, which refuses to run under a
    dispatch mode; its debug switch calls the higher-order op directly, which this counter
    prices whole (lrprof.measure.flex)."""
    module = sys.modules.get("torch.nn.attention.flex_attention")
    key = "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"
    if module is None or not hasattr(module, key):
        yield
        return
    before = getattr(module, key)
    setattr(module, key, True)
    try:
        yield
    finally:
        setattr(module, key, before)


__all__ = ["VALUE_OPS", "NeedsValues", "dynamo_not_imported", "flex_eager"]
