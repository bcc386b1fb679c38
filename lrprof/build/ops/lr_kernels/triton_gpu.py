"""`triton`: fused Triton kernels for CUDA (float32, float16, bfloat16, float64; the
arithmetic in float32, float64 for float64).

Forward: one program per (image, group, tile of BLOCK output positions). A first sweep
over the k^2 window positions takes the max logit; a second recomputes each logit, its
exponential, and adds exp * x for the group's m channels into an (m, BLOCK) accumulator
held in registers. Nothing of size k^2 goes to global memory; besides the output, the
log-sum-exp of each (group, position) is stored for the backward.

Backward, two kernels. Per output tile: the weights recomputed from the saved
log-sum-exp, grad of the weights (sum over the group's channels of dy * x), the softmax
backward with D = sum_c dy * y, grad_query stored, grad_key and grad_prior added
atomically. Per input tile: grad_x gathered from the output positions whose window holds
the pixel (weights recomputed again), so no atomics on the C-sized gradient.

The kernels are `torch.library` custom ops (`lrprof_triton::relation`,
`lrprof_triton::relation_backward`) with fake implementations, autograd and counting
rules. They run on CUDA tensors, and on CPU tensors under Triton's interpreter when
TRITON_INTERPRET=1 is set before triton is imported: that is how the tests check them
without a GPU (slow; lrprof offers the implementation on the CPU only in that mode).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch
from torch import Tensor

from lrprof.build.ops.lr_kernels.base import Relation, Sizes, register_relation
from lrprof.measure.rules import Work, register_rule

FORWARD, BACKWARD = "lrprof_triton::relation", "lrprof_triton::relation_backward"
PHI_CODES = {"sqdiff": 0, "absdiff": 1, "mul": 2}
LANES = 4096  # channels x positions per program, a register budget


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable(device: torch.device, dtype: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if interpreting():
        return None
    return "runs on CUDA (on the CPU only under Triton's interpreter: TRITON_INTERPRET=1, slow)"


@functools.cache
def _kernels() -> dict[str, Any]:
    """The jitted kernels, imported on first use."""
    import triton

    from lrprof.build.ops.lr_kernels import triton_kernels as module

    return {"forward": module.forward_kernel, "backward_output": module.backward_output_kernel,
            "backward_input": module.backward_input_kernel, "cdiv": triton.cdiv}


def _kernels_for(x: torch.Tensor) -> dict[str, Any]:
    """Triton's interpreter is chosen when triton is imported (TRITON_INTERPRET=1 then):
    CPU tensors need it, and no later switch can turn it on."""
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError("the triton implementation runs on CUDA tensors, or on CPU tensors under Triton's "
                           "interpreter: set TRITON_INTERPRET=1 before triton is first imported")
    return _kernels()


def _power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _launch_sizes(m: int, positions: int) -> tuple[int, int]:
    """(M_PAD, BLOCK): the group's channels rounded up to a power of two, and as many
    positions per program as the register budget allows (16..128)."""
    m_pad = _power_of_2(m)
    return m_pad, max(16, min(128, LANES // m_pad, _power_of_2(positions)))


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_forward(x, query, key, prior, k, m, stride, phi):
    kernels = _kernels_for(x)
    x, query, key, prior = (t.contiguous() for t in (x, query, key, prior))
    b, c, h, w = x.shape
    g, ho, wo = query.shape[1:]
    y = x.new_empty((b, c, ho, wo))
    lse = torch.empty((b, g, ho, wo), device=x.device, dtype=_lse_dtype(x.dtype))
    m_pad, block = _launch_sizes(m, ho * wo)
    grid = (b * g, kernels["cdiv"](ho * wo, block))
    kernels["forward"][grid](x, query, key, prior, y, lse, c, h, w, g, ho, wo, m, K=k, S=stride,
                             PHI=PHI_CODES[phi], M_PAD=m_pad, BLOCK=block, F64=x.dtype == torch.float64)
    return y, lse


def triton_backward(grad, x, query, key, prior, y, lse, k, m, stride, phi):
    kernels = _kernels_for(x)
    grad, x, query, key, prior, y, lse = (t.contiguous() for t in (grad, x, query, key, prior, y, lse))
    b, c, h, w = x.shape
    g, ho, wo = query.shape[1:]
    f64 = x.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    dx = torch.empty_like(x)
    dquery = torch.empty_like(query)
    dkey = torch.zeros(key.shape, device=x.device, dtype=acc)  # atomics: accumulate wide
    dprior = torch.zeros(prior.shape, device=x.device, dtype=acc)
    m_pad, block = _launch_sizes(m, ho * wo)
    kernels["backward_output"][(b * g, kernels["cdiv"](ho * wo, block))](
        x, query, key, prior, y, lse, grad, dquery, dkey, dprior, c, h, w, g, ho, wo, m, K=k, S=stride,
        PHI=PHI_CODES[phi], M_PAD=m_pad, BLOCK=block, F64=f64)
    m_pad, block = _launch_sizes(m, h * w)
    kernels["backward_input"][(b * g, kernels["cdiv"](h * w, block))](
        query, key, prior, lse, grad, dx, c, h, w, g, ho, wo, m, K=k, S=stride, PHI=PHI_CODES[phi],
        M_PAD=m_pad, BLOCK=block, F64=f64)
    return dx, dquery, dkey.to(key.dtype), dprior.to(prior.dtype)


@functools.cache
def _ops() -> Any:
    """The custom ops, defined on first use."""

    @torch.library.custom_op(FORWARD, mutates_args=())
    def relation(x: Tensor, query: Tensor, key: Tensor, prior: Tensor, k: int, m: int, stride: int,
                 phi: str) -> tuple[Tensor, Tensor]:
        return triton_forward(x, query, key, prior, k, m, stride, phi)

    @relation.register_fake
    def _(x, query, key, prior, k, m, stride, phi):
        shape = (x.shape[0], query.shape[1], query.shape[2], query.shape[3])
        return (x.new_empty((x.shape[0], x.shape[1], query.shape[2], query.shape[3])),
                x.new_empty(shape, dtype=_lse_dtype(x.dtype)))

    @torch.library.custom_op(BACKWARD, mutates_args=())
    def relation_backward(grad: Tensor, x: Tensor, query: Tensor, key: Tensor, prior: Tensor, y: Tensor,
                          lse: Tensor, k: int, m: int, stride: int,
                          phi: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return triton_backward(grad, x, query, key, prior, y, lse, k, m, stride, phi)

    @relation_backward.register_fake
    def _(grad, x, query, key, prior, y, lse, k, m, stride, phi):
        return torch.empty_like(x), torch.empty_like(query), torch.empty_like(key), torch.empty_like(prior)

    def setup_context(ctx, inputs, output):
        x, query, key, prior, k, m, stride, phi = inputs
        y, lse = output
        ctx.save_for_backward(x, query, key, prior, y, lse)
        ctx.settings = (k, m, stride, phi)

    def backward(ctx, grad_y, grad_lse):
        x, query, key, prior, y, lse = ctx.saved_tensors
        dx, dquery, dkey, dprior = relation_backward(grad_y, x, query, key, prior, y, lse, *ctx.settings)
        return dx, dquery, dkey, dprior, None, None, None, None

    relation.register_autograd(backward, setup_context=setup_context)
    return relation


def _window_products(x: torch.Tensor, query: torch.Tensor, k: int) -> tuple[int, int, int]:
    """(B*G*k^2*H'W', B*C*k^2*H'W', B*C*H'W')."""
    batch, channels = x.shape[0], x.shape[1]
    groups, out_hw = query.shape[1], query.shape[2] * query.shape[3]
    return batch * groups * k * k * out_hw, batch * channels * k * k * out_hw, batch * channels * out_hw


def forward_work(args: tuple, kwargs: dict, out: Any) -> Work:
    """Logits twice (max sweep, then exp sweep), aggregation once; one exp per window
    position and one log per output position (stored log-sum-exp)."""
    logits, products, _ = _window_products(args[0], args[1], args[4])
    positions = args[1].numel()
    return Work(macs=2 * logits + products, exps=logits + positions)


def backward_work(args: tuple, kwargs: dict, out: Any) -> Work:
    """Output-tile kernel: logits and weights recomputed (exps), D = sum_c dy*y, grad of the
    weights (C k^2 H'W'), softmax backward (2 per logit), grad_query and grad_key (1 each);
    input-tile kernel: logits and weights recomputed again, grad_x (C k^2 H'W')."""
    logits, products, outputs = _window_products(args[1], args[2], args[7])
    return Work(macs=logits * (1 + 2 + 2 + 1) + 2 * products + outputs, exps=2 * logits)


register_rule(FORWARD, forward_work, "two sweeps of logits, aggregation, exps and the log-sum-exp")
register_rule(BACKWARD, backward_work, "weights recomputed twice; grads of weights, x, query, key, prior")


class TritonRelation(Relation):
    pointwise = "matmul"
    name = "triton"
    summary = "Triton kernel per output tile (CUDA; CPU under TRITON_INTERPRET=1), no k^2 buffer"
    backward = ("two Triton kernels recomputing the weights from the saved log-sum-exp: per output "
                "tile (grads of query, key, prior) and per input tile (grad_x, gathered)")
    devices = ("cpu", "cuda")

    def unavailable(self, device: torch.device, dtype: str) -> str | None:
        return unavailable(device, dtype)

    def __call__(self, layer, x, query, key, prior):
        y, _ = _ops()(x, query, key, prior, layer.kernel_size, layer.m, layer.stride, layer.phi)
        return y

    def traffic(self, n: Sizes) -> dict[str, int]:
        b, e = n.batch, n.e
        return {
            "x read once (window reuse from cache)": b * n.channels * n.hw * e,
            "key read twice (max sweep, exp sweep), query once": b * n.groups * (2 * n.hw + n.out_hw) * e,
            "aggregated written once": b * n.channels * n.out_hw * e,
            "log-sum-exp written (float32)": b * n.groups * n.out_hw * max(4, e),
        }

    def buffers(self, n: Sizes) -> dict[str, int]:
        return {"log-sum-exp (G*H'W', float32)": n.batch * n.groups * n.out_hw * max(4, n.e)}


register_relation(TritonRelation())
