"""Local relation layer (LR-Net, Hu et al., ICCV 2019) and its cost model.

Data flow for input x (B, C, H, W), G = ceil(C / m) aggregation groups:

1. key   = 1x1 conv C -> G on x at input resolution;
2. query = 1x1 conv C -> G at output resolution (stride s on the 1x1);
3. appearance logits Phi(q_p', k_p) for every p in the k x k window centred on p' * s;
4. plus the geometry prior: 1x1 conv 2 -> h, ReLU, 1x1 conv h -> G over the real
   relative offsets (p - p'), normalised to [-1, 1];
5. neighbours outside the image are masked out of the softmax over the k^2 window;
6. y(c, p') = sum_p w(group(c), p', p) x(c, p): channel c belongs to group c // m,
   so the m channels of a group share one weight map;
7. a final 1x1 conv C -> C.

Rule when m does not divide C: G = ceil(C / m) groups of m channels each, the last
group holding the remaining C - (G - 1) * m channels (LR-Net-50's width 100 with
m = 8 gives 12 groups of 8 and one of 4). This rule reproduces the LR-Net tables.

Steps 3-6 (logits, softmax, aggregation) are the relation step, and the layer's
implementations differ only there (`lrprof.build.ops.lr_kernels`): `unfold` (the readable
reference, which unfolds x into its k^2 windows, C * k^2 * H'W' elements), `shift`,
`compiled`, `fused` (C++/OpenMP) and `triton`. All share the parameters above, so any
one's weights load into any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.build.ops.lr_kernels.base import Relation, Sizes, get_relation, relations
from lrprof.spec.errors import SpecError, require_int
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Param, Schema, kernel_param

PHIS = ("sqdiff", "absdiff", "mul")
PAPER_FORMULA = "((1+s^2)/m + 1) * C * (C + k^2) * H*W / s^2"


def num_groups(channels: int, m: int) -> int:
    """G = ceil(C / m): the last group is smaller when m does not divide C."""
    return -(-channels // m)


def output_size(size: int, stride: int) -> int:
    """'same' padding (k // 2) with stride s gives ceil(size / s)."""
    return (size - 1) // stride + 1


def relative_offsets(k: int) -> torch.Tensor:
    """(1, 2, k, k) float64: the (row, column) offset of each window position from its
    centre, scaled to [-1, 1] (all zeros for k = 1). Index [.., i, j] matches unfold's order.
    Float64 so that each dtype gets its own correctly rounded copy (1/3 is not exact)."""
    r = k // 2
    steps = torch.arange(k, dtype=torch.float64) - r
    if r > 0:
        steps = steps / r
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([rows, cols]).unsqueeze(0)


def check_hyperparameters(channels: int, k: int, m: int, stride: int, phi: str,
                          geometry_hidden: int | None) -> None:
    """The layer's own constraints (sizes of the input are checked by the spec)."""
    require_int("channels", channels, 1)
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise SpecError("k", "must be an odd integer >= 1", k)
    if not isinstance(m, int) or not 1 <= m <= channels:
        raise SpecError("m", f"must be an integer in 1..channels (1..{channels})", m)
    if not isinstance(stride, int) or not 1 <= stride <= k:
        raise SpecError("stride", f"must be an integer in 1..k (1..{k})", stride)
    if phi not in PHIS:
        raise SpecError("phi", f"one of {', '.join(PHIS)}", phi)
    if geometry_hidden is not None:
        require_int("geometry-hidden", geometry_hidden, 1)


class LocalRelation2d(nn.Module):
    """Local relation layer; see the module docstring for the data flow."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        m: int = 8,
        stride: int = 1,
        phi: str = "sqdiff",
        geometry_hidden: int | None = None,
        impl: str = "unfold",
    ) -> None:
        super().__init__()
        check_hyperparameters(channels, kernel_size, m, stride, phi, geometry_hidden)
        get_relation(impl)  # an unknown name fails here, not at the first call
        self.impl = impl
        self.channels = channels
        self.kernel_size = kernel_size
        self.m = m
        self.stride = stride
        self.phi = phi
        self.groups = num_groups(channels, m)
        self.geometry_hidden = geometry_hidden or self.groups
        g, h = self.groups, self.geometry_hidden
        self.key = nn.Conv2d(channels, g, 1, bias=False)
        self.query = nn.Conv2d(channels, g, 1, stride=stride, bias=False)
        self.geometry = nn.Sequential(nn.Conv2d(2, h, 1), nn.ReLU(), nn.Conv2d(h, g, 1))
        self.out = nn.Conv2d(channels, channels, 1, bias=False)
        # Constants kept out of the state dict and out of module.to(): a float32 copy
        # widened to float64 later would carry float32 rounding into a float64 run.
        self._offsets64 = relative_offsets(kernel_size)
        self._offsets: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._outside: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, k={self.kernel_size}, m={self.m}, stride={self.stride}, "
            f"phi={self.phi}, groups={self.groups}, geometry_hidden={self.geometry_hidden}, "
            f"impl={self.impl}"
        )

    def outside_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, 1, k^2, H'W') True where a window position falls outside the image."""
        key = (height, width, device)
        mask = self._outside.get(key)
        if mask is None:
            k, s = self.kernel_size, self.stride
            ones = torch.ones(1, 1, height, width, device=device)
            inside = F.unfold(ones, k, padding=k // 2, stride=s)
            mask = (inside < 0.5).view(1, 1, k * k, -1)
            self._outside[key] = mask
        return mask

    def offsets(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The relative offsets in `dtype`, rounded once from float64."""
        key = (dtype, device)
        if key not in self._offsets:
            self._offsets[key] = self._offsets64.to(device=device, dtype=dtype)
        return self._offsets[key]

    def compose(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Appearance composability Phi(q, k), larger = more related."""
        if self.phi == "sqdiff":
            return -(query - keys).pow(2)
        if self.phi == "absdiff":
            return -(query - keys).abs()
        return query * keys

    @property
    def relation(self) -> Relation:
        """The implementation of the relation step (looked up by name: a copy of the layer
        shares it, and switching `impl` switches it)."""
        return get_relation(self.impl)

    def prior(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(G, k^2) geometry prior of each window position, from the real offsets."""
        return self.geometry(self.offsets(dtype, device)).view(self.groups, self.kernel_size**2)

    def pointwise(self, x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """A 1x1 convolution without bias as the implementation asks: nn.Conv2d's path, or
        one batched matrix product (B, O, C) x (B, C, H'W') over the flattened map."""
        if self.relation.pointwise != "matmul":
            return F.conv2d(x, weight, stride=stride)
        if stride != 1:
            x = x[:, :, ::stride, ::stride]
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        out = torch.bmm(weight.view(1, weight.shape[0], c).expand(b, -1, -1), flat)
        return out.view(b, weight.shape[0], h, w)

    def key_and_query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """key (B, G, H, W) and query (B, G, H', W'). At stride 1 both are one product
        with the two weights stacked: x is read once, the MACs are the same."""
        if self.stride != 1:
            return (self.pointwise(x, self.key.weight),
                    self.pointwise(x, self.query.weight, self.stride))
        both = self.pointwise(x, torch.cat([self.key.weight, self.query.weight]))
        return both[:, :self.groups], both[:, self.groups:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prior = self.prior(x.dtype, x.device)
        key, query = self.key_and_query(x)
        y = self.relation(self, x, query, key, prior)
        del key, query  # freed before the final 1x1 runs: not part of the layer's peak memory
        return self.pointwise(y, self.out.weight)

    def prepare(self, inputs: tuple, backward: bool = False) -> dict:
        """The implementation's one-time work (a compile, a build) before timing."""
        return self.relation.prepare(self, inputs, backward)


def build(spec: LayerSpec) -> LocalRelation2d:
    p = dict(spec.params)
    return LocalRelation2d(spec.channels, p["k"], p["m"], p["stride"], phi=p["phi"],
                           geometry_hidden=p["geometry_hidden"], impl=spec.impl or "unfold")


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    return cost_of(
        spec.channels, spec.height, spec.width, p["k"], p["m"], p["stride"], spec.batch,
        geometry_hidden=p["geometry_hidden"],
        bytes_per_element=spec.torch_dtype.itemsize,
        impl=spec.impl or "unfold",
    )


def from_module(module: LocalRelation2d, input_shape: tuple[int, ...]) -> LayerSpec:
    b, c, h, w = input_shape
    return LayerSpec(op="lr", impl=module.impl, channels=c, height=h, width=w, batch=b,
                     k=module.kernel_size, m=module.m, stride=module.stride, phi=module.phi,
                     geometry_hidden=module.geometry_hidden)


def cost_of(
    channels: int,
    height: int,
    width: int,
    k: int,
    m: int,
    stride: int = 1,
    batch: int = 1,
    geometry_hidden: int | None = None,
    bytes_per_element: int = 4,
    impl: str = "unfold",
) -> CostModel:
    """Exact term-by-term MACs, parameters and the paper's O-model for one layer, and the
    bytes it must move against what implementation `impl` moves by design."""
    c, s, b = channels, stride, batch
    g = num_groups(c, m)
    h = geometry_hidden or g
    hw = height * width
    out_hw = output_size(height, s) * output_size(width, s)
    k2 = k * k
    terms = (
        Term("key 1x1", b * c * g * hw, "B*C*G*H*W"),
        Term("query 1x1", b * c * g * out_hw, "B*C*G*H'W'"),
        Term("composability", b * g * k2 * out_hw, "B*G*k^2*H'W'"),
        Term("softmax", 0, "B*G*k^2*H'W' exponentials, not MACs (softmax_exps)"),
        Term("aggregation", b * c * k2 * out_hw, "B*C*k^2*H'W'"),
        Term("final 1x1", b * c * c * out_hw, "B*C^2*H'W'"),
        Term("geometry prior", k2 * h * (2 + g), "k^2*h*(2+G), once per forward"),
    )
    params = 2 * c * g + c * c + (2 * h + h) + (h * g + g)
    paper = ((1 + s * s) / m + 1) * c * (c + k2) * hw / (s * s) * b
    e = bytes_per_element
    # What the official three-pass kernel holds (reference sec. 1): never the C*k^2 windows.
    activation_bytes = {
        "key": b * g * hw * e,
        "query": b * g * out_hw * e,
        "logits/weights (G*k^2*H'W')": b * g * k2 * out_hw * e,
        "aggregated": b * c * out_hw * e,
        "output": b * c * out_hw * e,
    }
    sizes = Sizes(b, c, height, width, output_size(height, s), output_size(width, s), g, k, e)
    relation = get_relation(impl)
    return CostModel(
        terms=terms,
        params=params,
        softmax_exps=b * g * k2 * out_hw,
        paper_macs=paper,
        paper_formula=PAPER_FORMULA,
        paper_band=(0.5, 1.1),
        activation_bytes=activation_bytes,
        implementation_bytes=relation.buffers(sizes),
        minimal_bytes={
            "x (read once)": b * c * hw * e,
            "query (read once)": b * g * out_hw * e,
            "key (read once)": b * g * hw * e,
            "y (written once)": b * c * out_hw * e,
        },
        design_bytes={**convolution_traffic(sizes, params * e), **relation.traffic(sizes)},
        notes=(
            f"G = ceil(C/m) = {g}" + ("" if c % m == 0 else f" (last group holds {c - (g - 1) * m})"),
            f"geometry prior hidden width h = {h}",
        ),
    )


def convolution_traffic(n: Sizes, weight_bytes: int) -> dict[str, int]:
    """What the three 1x1 convolutions read and write, each tensor once (every
    implementation shares them): x twice (key, query), the aggregated map once, and the
    weights."""
    e = n.e
    return {
        "1x1 convs: x read by key and query": n.batch * n.channels * (n.hw + n.out_hw) * e,
        "1x1 convs: key and query written": n.batch * n.groups * (n.hw + n.out_hw) * e,
        "final 1x1: aggregated read, y written": 2 * n.batch * n.channels * n.out_hw * e,
        "weights": weight_bytes,
    }


SCHEMA = Schema((
    kernel_param(7, "window (neighbourhood) size k x k"),
    Param("m", int, 8, "channels sharing one aggregation weight map (G = ceil(C/m) groups)",
          minimum=1, maximum=lambda ctx: ctx["channels"], headline=True, bound_text="in 1..channels"),
    Param("stride", int, 1, "stride s (output ceil(H/s) x ceil(W/s))", minimum=1,
          maximum=lambda ctx: ctx["k"], headline=True, short="s", bound_text="in 1..k"),
    Param("phi", str, "sqdiff", "appearance composability Phi(q, k)", choices=PHIS),
    Param("geometry_hidden", int, None, "hidden width h of the geometry prior", minimum=1,
          derive=lambda ctx: num_groups(ctx["channels"], ctx["m"]), derived_text="G"),
))


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(
        OpDef(
            name="lr",
            summary="local relation layer (LR-Net): key/query 1x1, k x k relation softmax, 1x1",
            schema=SCHEMA,
            impls=tuple(Impl(r.name, r.summary, build, devices=r.devices, available=r.unavailable,
                             backward=r.backward, not_ready=r.not_ready, build_ahead=r.build_ahead,
                             valgrind_problem=r.valgrind_problem)
                        for r in relations()),
            reference="unfold",
            # benchmarks/lr_impls.py, C=64 56x56 k=7 m=8 on the 2-core CPU: fused 1.4-1.7 ms,
            # compiled ~10, shift ~11, unfold ~60; on CUDA by design (no device measured yet):
            # Triton's one kernel, then the buffer-free eager shift, then unfold's k^2 buffer
            speed_order={"cpu": ("fused", "compiled", "shift", "unfold"),
                         "cuda": ("triton", "compiled", "shift", "unfold")},
            cost=cost,
            modules=(LocalRelation2d,),
            from_module=from_module,
            cost_text=("B*C*G*HW (key) + B*C*G*H'W' (query) + B*G*k^2*H'W' (composability) + "
                       "B*C*k^2*H'W' (aggregation) + B*C^2*H'W' (final 1x1) + k^2*h*(2+G) "
                       "(geometry prior); B*G*k^2*H'W' softmax exps"),
        )
    )


_register()
