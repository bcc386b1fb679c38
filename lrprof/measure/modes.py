"""What a counting dispatch mode needs around it: the ops a --meta count refuses (they
need real values), and two switches torch would otherwise flip the wrong way while the
mode is on (a dynamo import on the first dispatch; eager flex_attention's compile)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


# Module types whose work depends on tensor values in a way no op shows on meta tensors
# (a shape-only branch of their own): type -> why. Registered by the module's author.
VALUE_MODULES: dict[type, str] = {}


def register_value_module(cls: type, why: str) -> None:
    """A --meta count of a model holding `cls` is refused, saying `why`."""
    VALUE_MODULES[cls] = why


def refuse_value_modules(model: nn.Module) -> None:
    for name, sub in model.named_modules():
        why = VALUE_MODULES.get(type(sub))  # the type itself: a subclass may route otherwise
        if why is not None:
            raise NeedsValues(f"--meta: {type(sub).__name__} at {name or 'the model'} needs real tensor "
                              f"values ({why}); count without --meta")


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


class MetaAttention(TorchFunctionMode):
    """On meta tensors F.scaled_dot_product_attention would take its math path (bmm and
    softmax); on a CPU it runs the fused flash kernel. So that a --meta count equals the
    real one, the fused kernel (which has meta kernels, forward and backward) is called."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention and not kwargs.get("enable_gqa"):
            q, k, v = args[:3]
            if q.is_meta and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
                named = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args[3:], strict=False))
                named.update(kwargs)
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, float(named.get("dropout_p", 0.0)), bool(named.get("is_causal", False)),
                    attn_mask=named.get("attn_mask"), scale=named.get("scale"))[0]
        return func(*args, **kwargs)


def meta_attention(meta: bool) -> contextlib.AbstractContextManager:
    return MetaAttention() if meta else contextlib.nullcontext()


__all__ = ["VALUE_MODULES", "VALUE_OPS", "MetaAttention", "NeedsValues", "dynamo_not_imported", "flex_eager",
           "meta_attention", "refuse_value_modules", "register_value_module"]
