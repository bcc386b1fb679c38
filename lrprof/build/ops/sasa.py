"""Stand-alone self-attention (SASA, Ramachandran et al., NeurIPS 2019) and its cost model.

Data flow for input x (B, C, H, W), N heads of width d = C / N (d even):

1. q, k, v = three 1x1 convs C -> C, no bias (the paper's W_Q, W_K, W_V);
2. for each pixel ij and each neighbour ab in the k x k window centred on it, per head:
   logit = q_ij . k_ab + q_ij . r_(a-i, b-j), a dot product over the head's d channels;
   r_(a-i, b-j) = concat(row embedding of a-i, column embedding of b-j), each d/2 wide,
   one pair of k x d/2 tables shared by the heads;
3. softmax over the window, neighbours outside the image masked out (never zero pixels
   taken as keys); y_ij = sum_ab softmax_ab * v_ab, head by head;
4. stride 2: a 2x2 average pool with stride 2 after the layer, as the paper does (output
   ceil(H/2) x ceil(W/2); at an odd edge the last pool window averages the pixels there).

The logits are not scaled: the paper's formula has no 1/sqrt(d), and a scale would fold
into W_Q at no cost. `rel_logits` says how q . r is computed, never what it is:
`factored` takes q's row half against the k row embeddings and its column half against
the k column embeddings (C*k MACs per pixel, then adds), `per-position` dots q with r at
each of the k^2 window positions (C*k^2), as a direct implementation does, and as the
paper's FLOP counts do (lrprof.build.nets.sasa shows it). Both give the same output.

The most-used unfold reimplementation multiplies q and k channel by channel (no dot
product: heads = C), adds the relative embeddings to the values and ignores its `groups`:
this layer does none of that.

Two implementations, same parameters and the same MACs: `shift` (the default) visits the k^2
window offsets one at a time on shifted views of the zero-padded k and v, and holds only the
heads * k^2 * HW logits and weights beside C * HW maps; `unfold` unfolds k and v into their
k^2 windows (C * k^2 * HW elements each), the readable float64 reference. On this 2-core CPU
shift runs C = 128, 56x56, k = 7 in about a sixth of unfold's time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.spec.errors import SpecError, require_int
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Context, Param, Schema, kernel_param

REL_LOGITS = ("factored", "per-position")
METHODS = ("shift", "unfold")  # the implementations (the first is the default): same parameters, same MACs
STRIDES = (1, 2)
PAPER_FORMULA = "(3*C^2 + 2*C*k^2) * H*W (at the attention's resolution, before a stride-2 pool)"


def valid_heads(channels: int) -> list[int]:
    """Head counts that divide C into heads of even width (the row and column halves)."""
    return [n for n in range(1, channels + 1) if channels % n == 0 and (channels // n) % 2 == 0]


def heads_problem(heads: int, channels: int, what: str = "channels") -> str | None:
    """Why `heads` cannot split `channels`, or None."""
    if channels % heads == 0 and (channels // heads) % 2 == 0:
        return None
    ok = valid_heads(channels)
    allowed = ", ".join(map(str, ok)) if ok else f"none: {what} must be even"
    return f"must divide {what} ({channels}) into heads of even width C/heads: one of {allowed}"


def check_hyperparameters(channels: int, k: int, heads: int, stride: int, rel_logits: str) -> None:
    require_int("channels", channels, 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise SpecError("k", "must be an odd integer >= 1", k)
    require_int("heads", heads, 1)
    problem = heads_problem(heads, channels)
    if problem:
        raise SpecError("heads", problem, heads)
    if stride not in STRIDES:
        raise SpecError("stride", "one of 1, 2", stride)
    if rel_logits not in REL_LOGITS:
        raise SpecError("rel_logits", f"one of {', '.join(REL_LOGITS)}", rel_logits)


def output_size(size: int, stride: int) -> int:
    """The 2x2 stride-2 pool with ceil_mode: ceil(size / 2)."""
    return (size - 1) // stride + 1


class SelfAttention2d(nn.Module):
    """Multi-head local self-attention; see the module docstring for the data flow."""

    def __init__(self, channels: int, kernel_size: int = 7, heads: int = 8, stride: int = 1,
                 rel_logits: str = "factored", method: str = "shift") -> None:
        super().__init__()
        check_hyperparameters(channels, kernel_size, heads, stride, rel_logits)
        if method not in METHODS:
            raise SpecError("impl", f"one of {', '.join(METHODS)}", method)
        self.method = method
        self.channels = channels
        self.kernel_size = kernel_size
        self.heads = heads
        self.stride = stride
        self.rel_logits = rel_logits
        self.head_width = channels // heads
        half = self.head_width // 2
        self.query = nn.Conv2d(channels, channels, 1, bias=False)
        self.key = nn.Conv2d(channels, channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        # rel_rows[i]: the embedding of row offset i - k // 2 (unfold's window order)
        self.rel_rows = nn.Parameter(torch.randn(kernel_size, half) * self.head_width**-0.5)
        self.rel_cols = nn.Parameter(torch.randn(kernel_size, half) * self.head_width**-0.5)
        self._outside: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (f"{self.channels}, k={self.kernel_size}, heads={self.heads}, stride={self.stride}, "
                f"rel_logits={self.rel_logits}, method={self.method}")

    def outside_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, 1, k^2, HW) True where a window position falls outside the image."""
        key = (height, width, device)
        mask = self._outside.get(key)
        if mask is None:
            k = self.kernel_size
            inside = F.unfold(torch.ones(1, 1, height, width, device=device), k, padding=k // 2)
            mask = self._outside[key] = (inside < 0.5).view(1, 1, k * k, -1)
        return mask

    def relative_logits(self, q: torch.Tensor) -> torch.Tensor:
        """q (B, N, d, L) -> q . r for every window position, (B, N, k^2, L)."""
        k, half = self.kernel_size, self.head_width // 2
        b, n, _, length = q.shape
        if self.rel_logits == "factored":
            # q.r = q_rows . rows[a-i] + q_cols . cols[b-j]: k dots per half, then adds
            rows = torch.einsum("bnel,ie->bnil", q[:, :, :half], self.rel_rows)
            cols = torch.einsum("bnel,je->bnjl", q[:, :, half:], self.rel_cols)
            return (rows.unsqueeze(3) + cols.unsqueeze(2)).view(b, n, k * k, length)
        table = torch.cat([self.rel_rows.unsqueeze(1).expand(k, k, half),
                           self.rel_cols.unsqueeze(0).expand(k, k, half)], dim=2)
        return torch.einsum("bndl,pd->bnpl", q, table.reshape(k * k, 2 * half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attend = self.attend_unfolded if self.method == "unfold" else self.attend_shifted
        y = attend(x)
        if self.stride == 2:
            y = F.avg_pool2d(y, 2, 2, ceil_mode=True)
        return y

    def attend_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """Every window unfolded at once: C*k^2*HW buffers for keys, values and products."""
        b, c, height, width = x.shape
        k, n, d = self.kernel_size, self.heads, self.head_width
        pad = k // 2
        q = self.query(x).view(b, n, d, -1)  # (B, N, d, L)
        keys = F.unfold(self.key(x), k, padding=pad).view(b, n, d, k * k, -1)
        values = F.unfold(self.value(x), k, padding=pad).view(b, n, d, k * k, -1)
        logits = (q.unsqueeze(3) * keys).sum(dim=2)  # per-head dot product, (B, N, k^2, L)
        logits = logits + self.relative_logits(q)
        logits = logits.masked_fill(self.outside_mask(height, width, x.device), -math.inf)
        weights = torch.softmax(logits, dim=2)
        return (values * weights.unsqueeze(2)).sum(dim=3).view(b, c, height, width)

    def attend_shifted(self, x: torch.Tensor) -> torch.Tensor:
        """One window offset at a time, on shifted views of the zero-padded keys and values:
        no k^2 copy of them, only the heads*k^2*HW logits and weights."""
        b, c, height, width = x.shape
        k, n, d = self.kernel_size, self.heads, self.head_width
        pad = k // 2
        q = self.query(x).view(b, n, d, height, width)
        keys = F.pad(self.key(x), (pad, pad, pad, pad)).unflatten(1, (n, d))
        values = F.pad(self.value(x), (pad, pad, pad, pad)).unflatten(1, (n, d))
        offsets = [(i, j) for i in range(k) for j in range(k)]  # unfold's window order
        logits = torch.stack([(q * keys[..., i:i + height, j:j + width]).sum(dim=2)
                              for i, j in offsets], dim=2)  # (B, N, k^2, H, W)
        logits = logits + self.relative_logits(q.flatten(3)).view_as(logits)
        outside = self.outside_mask(height, width, x.device).view(1, 1, k * k, height, width)
        weights = torch.softmax(logits.masked_fill(outside, -math.inf), dim=2)
        y = weights[:, :, :1] * values[..., :height, :width]
        for o, (i, j) in enumerate(offsets[1:], start=1):
            y.addcmul_(weights[:, :, o:o + 1], values[..., i:i + height, j:j + width])
        return y.reshape(b, c, height, width)


def build(spec: LayerSpec) -> SelfAttention2d:
    p = dict(spec.params)
    return SelfAttention2d(spec.channels, p["k"], p["heads"], p["stride"], p["rel_logits"],
                           method=spec.impl or METHODS[0])


def from_module(module: SelfAttention2d, input_shape: tuple[int, ...]) -> LayerSpec:
    b, c, h, w = input_shape
    return LayerSpec(op="sasa", impl=module.method, channels=c, height=h, width=w, batch=b,
                     k=module.kernel_size, heads=module.heads, stride=module.stride,
                     rel_logits=module.rel_logits)


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    return cost_of(spec.channels, spec.height, spec.width, p["k"], p["heads"], p["stride"],
                   spec.batch, p["rel_logits"], spec.torch_dtype.itemsize, spec.impl or METHODS[0])


def cost_of(channels: int, height: int, width: int, k: int = 7, heads: int = 8, stride: int = 1,
            batch: int = 1, rel_logits: str = "factored", bytes_per_element: int = 4,
            method: str = "shift") -> CostModel:
    """Exact term-by-term MACs, parameters and the paper's complexity for one layer. The
    attention runs at the input's resolution; a stride-2 pool after it costs no MACs."""
    c, b, k2 = channels, batch, k * k
    hw = height * width
    out_hw = output_size(height, stride) * output_size(width, stride)
    d = c // heads
    per_position = rel_logits == "per-position"
    terms = [
        Term("query 1x1", b * c * c * hw, "B*C^2*H*W"),
        Term("key 1x1", b * c * c * hw, "B*C^2*H*W"),
        Term("value 1x1", b * c * c * hw, "B*C^2*H*W"),
        Term("logits q.k", b * c * k2 * hw, "B*C*k^2*H*W (heads*d = C per window position)"),
        Term("relative logits q.r", b * c * (k2 if per_position else k) * hw,
             "B*C*k^2*H*W (q.r at each window position)" if per_position else
             "B*C*k*H*W (row half against k row embeddings, column half against k column ones)"),
        Term("softmax", 0, "B*heads*k^2*H*W exponentials, not MACs (softmax_exps)"),
        Term("weighted sum of values", b * c * k2 * hw, "B*C*k^2*H*W"),
    ]
    if stride == 2:
        terms.append(Term("2x2 average pool", 0, "pooling: 0 MACs by the papers' convention"))
    e = bytes_per_element
    paper = (3 * c * c + 2 * c * k2) * hw * b
    return CostModel(
        terms=tuple(terms),
        params=3 * c * c + k * d,
        softmax_exps=b * heads * k2 * hw,
        paper_macs=paper,
        paper_formula=PAPER_FORMULA,
        # counted / published = 1 + (C*k or C*k^2) / (3*C^2 + 2*C*k^2): at most 1.2 or 1.5
        paper_band=(1.0, 1.5 if per_position else 1.2),
        activation_bytes={
            "q, k, v": 3 * b * c * hw * e,
            "logits/weights (heads*k^2*HW)": b * heads * k2 * hw * e,
            "output": b * c * out_hw * e,
        },
        implementation_bytes={
            "unfolded keys (C*k^2*HW)": b * c * k2 * hw * e,
            "unfolded values (C*k^2*HW)": b * c * k2 * hw * e,
            "products (C*k^2*HW)": b * c * k2 * hw * e,
        } if method == "unfold" else {
            "padded keys, values (C*(H+k-1)*(W+k-1))": 2 * b * c * (height + k - 1) * (width + k - 1) * e,
            "logits, weights (heads*k^2*HW)": 2 * b * heads * k2 * hw * e,
        },
        notes=(f"{heads} heads of width d = {d}; relative embeddings 2 tables of k x d/2 "
               "shared by the heads; logits not scaled (no 1/sqrt(d), as the paper)",
               f"relative logits: {rel_logits}"),
    )


def _heads_check(value: int, ctx: Context) -> str | None:
    return heads_problem(value, ctx["channels"])


SCHEMA = Schema((
    kernel_param(7, "window (neighbourhood) size k x k"),
    Param("heads", int, 8, "attention heads (head width C/heads, even)", minimum=1,
          check=_heads_check, headline=True, bound_text="dividing channels into heads of even width"),
    Param("stride", int, 1, "stride s: 2 adds a 2x2 average pool, stride 2, after the layer "
          "(output ceil(H/s) x ceil(W/s))", choices=STRIDES, headline=True, short="s"),
    Param("rel_logits", str, "factored", "how q.r is computed: factored (C*k per pixel) or "
          "per-position (C*k^2, as the paper counts); same output", choices=REL_LOGITS),
))


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(OpDef(
        name="sasa",
        summary="stand-alone self-attention (SASA): q, k, v 1x1, per-head q.(k + r) over k x k, "
                "softmax, sum of values",
        schema=SCHEMA,
        impls=(Impl("shift", "one window offset at a time on shifted views of padded k and v: no "
                    "k^2 buffer but the heads*k^2*HW logits", build),
               Impl("unfold", "F.unfold of the k^2 windows of k and v (C*k^2*HW buffers): the "
                    "readable reference", build)),
        reference="unfold",
        cost=cost,
        modules=(SelfAttention2d,),
        from_module=from_module,
        cost_text=("3*B*C^2*HW (q, k, v 1x1) + B*C*k^2*HW (q.k) + B*C*k*HW (q.r, factored; "
                   "B*C*k^2*HW per-position) + B*C*k^2*HW (weighted sum of values), at the input's "
                   "resolution; B*heads*k^2*HW softmax exps; stride 2: a 2x2 average pool, 0 MACs"),
    ))


_register()
