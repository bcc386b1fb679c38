"""SASA's attention stem (Ramachandran et al. 2019, sec. 3.2 and 4): self-attention inside
each b x b spatial block of the image, with values made spatially aware by a mixture of
value matrices. The network puts batch norm and a b x b max pool after it.

The paper gives the idea and not every size; this reconstruction, stated in the nets' notes:

1. x (B, C_in, H, W) is zero-padded at the bottom and right to whole blocks; padded
   pixels are masked out as keys and cropped from the output;
2. q, k = 1x1 convs C_in -> C, no bias;
3. spatially aware values: p(a, c, m) = softmax over m of (row_emb[a] + col_emb[c]) . nu[m],
   for the pixel's position (a, c) inside its block, M mixtures, embeddings of width C;
   v = (sum_m p(a, c, m) W_V[m]) x, with M value matrices C_in -> C;
4. per head (width d = C / heads): logits q . k + q . r over the b^2 pixels of the block,
   r = concat(row embedding of a - i, column embedding of c - j), each d/2 wide, offsets
   in -(b-1)..b-1, shared by the heads; softmax over the block; weighted sum of values.

`values` says how step 3 is computed: `mixed` mixes the M matrices once per block position
(b^2 * M * C * C_in MACs per forward) and applies one 1x1 per pixel; `per-mixture` applies
the M matrices at every pixel and mixes the M values there, as a direct implementation (and
the paper's FLOP count) does. `rel_logits` as in `lrprof.build.ops.sasa`: `factored` costs C*b per
pixel, `per-position` C*b^2. Same output either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.build.ops.sasa import REL_LOGITS, heads_problem
from lrprof.spec.errors import SpecError, require_int
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Context, Param, Schema

VALUES = ("mixed", "per-mixture")


def padded(size: int, block: int) -> int:
    return -(-size // block) * block


def check_hyperparameters(in_channels: int, channels: int, block: int, heads: int, mixtures: int,
                          rel_logits: str, values: str) -> None:
    require_int("channels", in_channels, 1)
    require_int("out_channels", channels, 1)
    require_int("block", block, 1)
    require_int("heads", heads, 1)
    problem = heads_problem(heads, channels, "out_channels")
    if problem:
        raise SpecError("heads", problem, heads)
    require_int("mixtures", mixtures, 1)
    if rel_logits not in REL_LOGITS:
        raise SpecError("rel_logits", f"one of {', '.join(REL_LOGITS)}", rel_logits)
    if values not in VALUES:
        raise SpecError("values", f"one of {', '.join(VALUES)}", values)


class AttentionStem2d(nn.Module):
    """Block self-attention with spatially aware values; see the module docstring."""

    def __init__(self, in_channels: int = 3, channels: int = 64, block: int = 4, heads: int = 8,
                 mixtures: int = 4, rel_logits: str = "factored", values: str = "mixed") -> None:
        super().__init__()
        check_hyperparameters(in_channels, channels, block, heads, mixtures, rel_logits, values)
        self.in_channels, self.channels, self.block = in_channels, channels, block
        self.heads, self.mixtures = heads, mixtures
        self.rel_logits, self.values = rel_logits, values
        self.head_width = channels // heads
        half, scale = self.head_width // 2, self.head_width**-0.5
        self.query = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.key = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.value_weight = nn.Parameter(torch.randn(mixtures, channels, in_channels) * in_channels**-0.5)
        self.pos_rows = nn.Parameter(torch.randn(block, channels) * channels**-0.5)
        self.pos_cols = nn.Parameter(torch.randn(block, channels) * channels**-0.5)
        self.mixture_emb = nn.Parameter(torch.randn(mixtures, channels) * channels**-0.5)
        # rel_rows[o + block - 1]: the embedding of in-block row offset o
        self.rel_rows = nn.Parameter(torch.randn(2 * block - 1, half) * scale)
        self.rel_cols = nn.Parameter(torch.randn(2 * block - 1, half) * scale)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.channels}, block={self.block}, heads={self.heads}, "
                f"mixtures={self.mixtures}, rel_logits={self.rel_logits}, values={self.values}")

    def mixture_weights(self) -> torch.Tensor:
        """p(a, c, m): (b, b, M), a softmax over the mixtures at each in-block position."""
        emb = self.pos_rows.unsqueeze(1) + self.pos_cols.unsqueeze(0)  # (b, b, C)
        return torch.softmax(torch.einsum("ace,me->acm", emb, self.mixture_emb), dim=2)

    def spatial_values(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, Hp, Wp) -> (B, C, Hp, Wp), each pixel's value by its block position."""
        bs, ci, hp, wp = x.shape
        blk, c, mix = self.block, self.channels, self.mixtures
        p = self.mixture_weights()
        if self.values == "mixed":
            weight = torch.einsum("acm,moi->acoi", p, self.value_weight).reshape(blk * blk, c, ci)
            cols = (x.view(bs, ci, hp // blk, blk, wp // blk, blk).permute(3, 5, 1, 0, 2, 4)
                    .reshape(blk * blk, ci, -1))
            v = torch.bmm(weight, cols)  # (b^2, C, B*nH*nW)
            return (v.view(blk, blk, c, bs, hp // blk, wp // blk).permute(3, 2, 4, 0, 5, 1)
                    .reshape(bs, c, hp, wp))
        per_mixture = F.conv2d(x, self.value_weight.reshape(mix * c, ci, 1, 1))
        per_mixture = per_mixture.view(bs, mix, c, hp // blk, blk, wp // blk, blk)
        share = p.permute(2, 0, 1).reshape(1, mix, 1, 1, blk, 1, blk)
        return (per_mixture * share).sum(dim=1).view(bs, c, hp, wp)

    def to_blocks(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, Hp, Wp) -> (B, N, nb, b^2, d): heads, blocks, pixels of a block, channels."""
        bs, c, hp, wp = t.shape
        blk, n, d = self.block, self.heads, self.head_width
        t = t.view(bs, n, d, hp // blk, blk, wp // blk, blk).permute(0, 1, 3, 5, 4, 6, 2)
        return t.reshape(bs, n, -1, blk * blk, d)

    def offsets_index(self, device: torch.device) -> torch.Tensor:
        """(b, b) index into the relative tables: [i, a] -> a - i + b - 1."""
        steps = torch.arange(self.block, device=device)
        return steps.unsqueeze(0) - steps.unsqueeze(1) + self.block - 1

    def relative_logits(self, q: torch.Tensor) -> torch.Tensor:
        """q (B, N, nb, b^2, d) -> q . r for each (query, key) pixel pair: (B, N, nb, b^2, b^2)."""
        bs, n, nb, _, d = q.shape
        blk, half = self.block, d // 2
        index = self.offsets_index(q.device)
        rows, cols = self.rel_rows[index], self.rel_cols[index]  # (b, b, d/2): [i, a], [j, c]
        if self.rel_logits == "factored":
            q = q.view(bs, n, nb, blk, blk, d)
            by_row = torch.einsum("bnkije,iae->bnkija", q[..., :half], rows)
            by_col = torch.einsum("bnkije,jce->bnkijc", q[..., half:], cols)
            logits = by_row.unsqueeze(6) + by_col.unsqueeze(5)  # (.., i, j, a, c)
            return logits.reshape(bs, n, nb, blk * blk, blk * blk)
        table = torch.cat([rows.view(blk, 1, blk, 1, half).expand(blk, blk, blk, blk, half),
                           cols.view(1, blk, 1, blk, half).expand(blk, blk, blk, blk, half)], dim=4)
        return torch.einsum("bnkqd,qpd->bnkqp", q, table.reshape(blk * blk, blk * blk, d))

    def padding_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """(1, 1, nb, 1, b^2) True at padded pixels, or None when the blocks tile the image."""
        hp, wp = padded(height, self.block), padded(width, self.block)
        if (hp, wp) == (height, width):
            return None
        ones = F.pad(torch.ones(1, 1, height, width, device=device), (0, wp - width, 0, hp - height))
        blocks = ones.view(1, 1, hp // self.block, self.block, wp // self.block, self.block)
        blocks = blocks.permute(0, 1, 2, 4, 3, 5).reshape(1, 1, -1, 1, self.block**2)
        return blocks < 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs, _, height, width = x.shape
        blk, n, d = self.block, self.heads, self.head_width
        hp, wp = padded(height, blk), padded(width, blk)
        if (hp, wp) != (height, width):
            x = F.pad(x, (0, wp - width, 0, hp - height))
        q = self.to_blocks(self.query(x))
        k = self.to_blocks(self.key(x))
        v = self.to_blocks(self.spatial_values(x))
        nb = q.shape[2]
        logits = torch.bmm(q.reshape(-1, blk * blk, d), k.reshape(-1, blk * blk, d).transpose(1, 2))
        logits = logits.view(bs, n, nb, blk * blk, blk * blk) + self.relative_logits(q)
        mask = self.padding_mask(height, width, x.device)
        if mask is not None:
            logits = logits.masked_fill(mask, -math.inf)
        weights = torch.softmax(logits, dim=4)
        y = torch.bmm(weights.reshape(-1, blk * blk, blk * blk), v.reshape(-1, blk * blk, d))
        y = (y.view(bs, n, hp // blk, wp // blk, blk, blk, d).permute(0, 1, 6, 2, 4, 3, 5)
             .reshape(bs, self.channels, hp, wp))
        return y[:, :, :height, :width]


def build(spec: LayerSpec) -> AttentionStem2d:
    p = dict(spec.params)
    return AttentionStem2d(spec.channels, p["out_channels"], p["block"], p["heads"], p["mixtures"],
                           p["rel_logits"], p["values"])


def from_module(module: AttentionStem2d, input_shape: tuple[int, ...]) -> LayerSpec:
    b, c, h, w = input_shape
    return LayerSpec(op="sasa-stem", impl="blocks", channels=c, height=h, width=w, batch=b,
                     out_channels=module.channels, block=module.block, heads=module.heads,
                     mixtures=module.mixtures, rel_logits=module.rel_logits, values=module.values)


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    return cost_of(spec.channels, spec.height, spec.width, p["out_channels"], p["block"], p["heads"],
                   p["mixtures"], spec.batch, p["rel_logits"], p["values"], spec.torch_dtype.itemsize)


def cost_of(in_channels: int, height: int, width: int, channels: int = 64, block: int = 4,
            heads: int = 8, mixtures: int = 4, batch: int = 1, rel_logits: str = "factored",
            values: str = "mixed", bytes_per_element: int = 4) -> CostModel:
    """Exact term-by-term MACs and parameters of the stem layer (no published formula)."""
    ci, c, blk, m, b = in_channels, channels, block, mixtures, batch
    hw = padded(height, blk) * padded(width, blk)  # every term runs on whole blocks
    b2 = blk * blk
    d = c // heads
    terms = [
        Term("query 1x1", b * c * ci * hw, "B*C*C_in*Hp*Wp"),
        Term("key 1x1", b * c * ci * hw, "B*C*C_in*Hp*Wp"),
        Term("value mixture weights p", b2 * m * c, "b^2*M*C, once per forward"),
    ]
    if values == "mixed":
        terms += [Term("mixed value matrices", b2 * m * c * ci, "b^2*M*C*C_in, once per forward"),
                  Term("value 1x1 (mixed matrix)", b * c * ci * hw, "B*C*C_in*Hp*Wp")]
    else:
        terms += [Term("value 1x1 per mixture", b * m * c * ci * hw, "B*M*C*C_in*Hp*Wp"),
                  Term("mixing the values", b * m * c * hw, "B*M*C*Hp*Wp")]
    per_position = rel_logits == "per-position"
    terms += [
        Term("logits q.k", b * c * b2 * hw, "B*C*b^2*Hp*Wp"),
        Term("relative logits q.r", b * c * (b2 if per_position else blk) * hw,
             "B*C*b^2*Hp*Wp (q.r at each block position)" if per_position else
             "B*C*b*Hp*Wp (row half against b row embeddings, column half against b column ones)"),
        Term("softmax", 0, "B*heads*b^2*Hp*Wp + b^2*M exponentials, not MACs (softmax_exps)"),
        Term("weighted sum of values", b * c * b2 * hw, "B*C*b^2*Hp*Wp"),
    ]
    e = bytes_per_element
    params = 2 * c * ci + m * c * ci + 2 * blk * c + m * c + (2 * blk - 1) * d
    return CostModel(
        terms=tuple(terms),
        params=params,
        softmax_exps=b * heads * b2 * hw + b2 * m,
        activation_bytes={"q, k, v": 3 * b * c * hw * e,
                          "logits/weights (heads*b^2*HW)": b * heads * b2 * hw * e,
                          "output": b * c * height * width * e},
        implementation_bytes={"logits/weights (heads*b^2*HW)": b * heads * b2 * hw * e},
        notes=(f"{heads} heads of width d = {d}, {m} value mixtures, {blk}x{blk} blocks",
               f"relative logits: {rel_logits}; values: {values}",
               "no published complexity for the stem"),
    )


def _heads_check(value: int, ctx: Context) -> str | None:
    return heads_problem(value, ctx["out_channels"], "out_channels")


SCHEMA = Schema((
    Param("out_channels", int, 64, "output channels C", minimum=1, headline=True, short="out"),
    Param("block", int, 4, "attention inside each block x block spatial block", minimum=1,
          maximum=lambda ctx: max(ctx["height"], ctx["width"]), headline=True,
          bound_text="in 1..max(H, W)"),
    Param("heads", int, 8, "attention heads (head width C/heads, even)", minimum=1,
          check=_heads_check, headline=True, bound_text="dividing out_channels into heads of even width"),
    Param("mixtures", int, 4, "value matrices mixed by position (spatially aware values)", minimum=1),
    Param("rel_logits", str, "factored", "how q.r is computed: factored (C*b per pixel) or "
          "per-position (C*b^2, as the paper counts); same output", choices=REL_LOGITS),
    Param("values", str, "mixed", "mixed: one position-mixed matrix per pixel; per-mixture: M 1x1s "
          "per pixel, then mixed (as the paper counts); same output", choices=VALUES),
))


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(OpDef(
        name="sasa-stem",
        summary="SASA's attention stem: self-attention inside b x b blocks with spatially aware "
                "(position-mixed) values",
        schema=SCHEMA,
        impls=(Impl("blocks", "blocks as a batch of b^2-pixel sequences; bmm for q.k and the sum",
                    build),),
        cost=cost,
        modules=(AttentionStem2d,),
        from_module=from_module,
        spatial=False,  # changes the channel count: no like-for-like 3x3 conv baseline
        stride_param=None,
        cost_text=("B*HpWp*C*(2*C_in (q, k) + C_in (values, mixed; M*C_in + M per-mixture) + b^2 "
                   "(q.k) + b (q.r, factored; b^2 per-position) + b^2 (weighted sum)), Hp, Wp padded "
                   "to whole blocks; once a forward: b^2*M*C (mixture weights) + b^2*M*C*C_in (mixed "
                   "matrices, mixed only); B*heads*b^2*HpWp + b^2*M softmax exps"),
    ))


_register()
