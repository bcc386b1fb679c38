"""Non-local block (Wang, Girshick, Gupta, He, CVPR 2018) and its cost model: operator `nonlocal`.

For input x (B, C, H, W), N = H*W positions, inner width C' (C/2 by default):

    y_i = 1/C(x) * sum_j f(x_i, x_j) g(x_j),   z = BN(W_z y) + x

- g, theta, phi: 1x1 convs C -> C' (with bias);
- f, the pairwise function, and C(x), its normalisation:
    gaussian           f = exp(x_i . x_j) on x itself (no theta, phi), C(x) = sum_j f: a softmax;
    embedded_gaussian  f = exp(theta_i . phi_j), C(x) = sum_j f: a softmax;
    dot_product        f = theta_i . phi_j, C(x) = N';
    concatenation      f = ReLU(w_f^T [theta_i, phi_j]), C(x) = N'. w_f (2C') splits into
                       w_theta and w_phi, so f = ReLU(w_theta . theta_i + w_phi . phi_j): two
                       projections C' -> 1, then an add per pair; the 2C'-wide pairs are never
                       built;
- subsample: a 2x2 max pool (stride 2, floor) after phi and g (after x on the key side for
  the Gaussian), so the j sum runs over N' = floor(H/2)*floor(W/2) positions instead of N;
- W_z: 1x1 conv C' -> C without bias (batch norm follows), then batch norm and the residual.

The paper initialises the batch norm's scale to zero so that a new block starts as the
identity; this module keeps the usual scale 1, so the output check tests the whole path
(a zero scale would let any y pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrprof.build.ops.cost import CostModel, Term
from lrprof.spec.errors import SpecError, require_int
from lrprof.spec.layer import LayerSpec
from lrprof.spec.params import Context, Param, Schema

PAIRWISE = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
SOFTMAX_PAIRWISE = ("gaussian", "embedded_gaussian")
PAPER_FORMULA = "B * (4*C*C'*N + 2*N*N'*C'), N = H*W, N' = N or N/4 subsampled"


def default_inner(channels: int) -> int:
    """C' = C/2, the paper's bottleneck width (at least 1)."""
    return max(1, channels // 2)


def key_positions(height: int, width: int, subsample: bool) -> int:
    """N': the positions the j sum runs over (a 2x2 max pool of stride 2 floors odd sizes)."""
    return (height // 2) * (width // 2) if subsample else height * width


class NonLocal2d(nn.Module):
    """Non-local block with its residual; see the module docstring for the data flow."""

    def __init__(self, channels: int, pairwise: str = "embedded_gaussian", subsample: bool = False,
                 inner_channels: int | None = None) -> None:
        super().__init__()
        require_int("channels", channels, 1)
        if pairwise not in PAIRWISE:
            raise SpecError("pairwise", f"one of {', '.join(PAIRWISE)}", pairwise)
        inner = default_inner(channels) if inner_channels is None else inner_channels
        require_int("inner-channels", inner, 1)
        self.channels, self.pairwise, self.subsample = channels, pairwise, subsample
        self.inner_channels = inner
        self.g = nn.Conv2d(channels, inner, 1)
        if pairwise != "gaussian":
            self.theta = nn.Conv2d(channels, inner, 1)
            self.phi = nn.Conv2d(channels, inner, 1)
        if pairwise == "concatenation":
            # w_f over [theta_i, phi_j]: the first C' entries meet theta, the last C' phi
            self.concat_weight = nn.Parameter(torch.empty(2 * inner))
            nn.init.uniform_(self.concat_weight, -1 / math.sqrt(2 * inner), 1 / math.sqrt(2 * inner))
        self.pool = nn.MaxPool2d(2) if subsample else None
        self.w_z = nn.Conv2d(inner, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def extra_repr(self) -> str:
        return (f"{self.channels}, pairwise={self.pairwise}, subsample={self.subsample}, "
                f"inner_channels={self.inner_channels}")

    def _keys_side(self, t: torch.Tensor) -> torch.Tensor:
        return self.pool(t) if self.pool is not None else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        values = self._keys_side(self.g(x)).flatten(2).transpose(1, 2)  # (B, N', C')
        if self.pairwise == "gaussian":
            queries = x.flatten(2).transpose(1, 2)  # (B, N, C)
            keys = self._keys_side(x).flatten(2)  # (B, C, N')
        else:
            theta = self.theta(x)  # (B, C', H, W)
            phi = self._keys_side(self.phi(x))  # (B, C', H', W')
            queries, keys = theta.flatten(2).transpose(1, 2), phi.flatten(2)
        n_keys = keys.shape[-1]
        if self.pairwise in SOFTMAX_PAIRWISE:
            y = torch.bmm(torch.softmax(torch.bmm(queries, keys), dim=-1), values)
        elif self.pairwise == "dot_product":
            y = torch.bmm(torch.bmm(queries, keys), values) / n_keys
        else:
            inner = self.inner_channels
            w_theta = self.concat_weight[:inner].view(1, inner, 1, 1)
            w_phi = self.concat_weight[inner:].view(1, inner, 1, 1)
            a_i = F.conv2d(theta, w_theta).view(b, -1, 1)  # (B, N, 1): w_theta . theta_i
            b_j = F.conv2d(phi, w_phi).view(b, 1, -1)  # (B, 1, N'): w_phi . phi_j
            y = torch.bmm(torch.relu(a_i + b_j), values) / n_keys
        y = y.transpose(1, 2).reshape(b, self.inner_channels, h, w)
        return self.bn(self.w_z(y)) + x


def build(spec: LayerSpec) -> NonLocal2d:
    p = dict(spec.params)
    return NonLocal2d(spec.channels, p["pairwise"], p["subsample"], p["inner_channels"])


def from_module(module: NonLocal2d, input_shape: tuple[int, ...]) -> LayerSpec:
    b, c, h, w = input_shape
    return LayerSpec(op="nonlocal", impl="bmm", channels=c, height=h, width=w, batch=b,
                     pairwise=module.pairwise, subsample=module.subsample,
                     inner_channels=module.inner_channels)


def cost(spec: LayerSpec) -> CostModel:
    p = dict(spec.params)
    return cost_of(spec.channels, spec.height, spec.width, p["pairwise"], p["subsample"],
                   p["inner_channels"], spec.batch, spec.torch_dtype.itemsize)


def paper_band(pairwise: str, channels: int, inner: int) -> tuple[float, float]:
    """Where counted / published lies. The formula is exact for the embedded Gaussian; the
    dot product adds the 1/N' scaling (N*C', at most 1/(4C+2) of it); concatenation
    replaces the N*N'*C' products by two projections (down to 1/2 as N' grows); the
    Gaussian has no theta, phi (1/2 of the 1x1s) but C-wide products ((C+C')/(2C') of
    the quadratic part)."""
    if pairwise == "embedded_gaussian":
        return (1.0, 1.0)
    if pairwise == "dot_product":
        return (1.0, 1.2)
    if pairwise == "concatenation":
        return (0.5, 1.1)
    return (0.5, max(1.0, (channels + inner) / (2 * inner)))


def cost_of(channels: int, height: int, width: int, pairwise: str = "embedded_gaussian",
            subsample: bool = False, inner_channels: int | None = None, batch: int = 1,
            bytes_per_element: int = 4) -> CostModel:
    """Exact term-by-term MACs, parameters and the paper's formula for one block."""
    c, b = channels, batch
    ci = default_inner(c) if inner_channels is None else inner_channels
    n = height * width
    nk = key_positions(height, width, subsample)
    one_by_one = b * c * ci * n
    terms = [Term("g 1x1", one_by_one, "B*C*C'*N (pooled after, when subsampled)")]
    if pairwise != "gaussian":
        terms += [Term("theta 1x1", one_by_one, "B*C*C'*N"),
                  Term("phi 1x1", one_by_one, "B*C*C'*N (pooled after, when subsampled)")]
    if pairwise == "gaussian":
        terms.append(Term("pairwise x_i . x_j", b * n * nk * c, "B*N*N'*C"))
    elif pairwise == "concatenation":
        terms += [Term("concat projections", b * (n + nk) * ci,
                       "B*(N+N')*C' (w_theta . theta_i, w_phi . phi_j)"),
                  Term("pairwise ReLU(a_i + b_j)", 0, "B*N*N' adds and ReLUs, 0 MACs")]
    else:
        terms.append(Term("pairwise theta_i . phi_j", b * n * nk * ci, "B*N*N'*C'"))
    if pairwise in SOFTMAX_PAIRWISE:
        terms.append(Term("softmax", 0, "B*N*N' exponentials, not MACs (softmax_exps)"))
    terms.append(Term("aggregation", b * n * nk * ci, "B*N*N'*C' (sum_j f_ij g_j)"))
    if pairwise not in SOFTMAX_PAIRWISE:
        terms.append(Term("1/N' normalisation", b * n * ci, "B*N*C' (y scaled, not f)"))
    terms += [Term("W_z 1x1", b * ci * c * n, "B*C'*C*N"),
              Term("batch norm, residual add", 0, "0 by convention (normalisation; accumulate half)")]
    conv_params = c * ci + ci
    params = conv_params * (1 if pairwise == "gaussian" else 3) + ci * c + 2 * c
    if pairwise == "concatenation":
        params += 2 * ci
    e = bytes_per_element
    key_width = c if pairwise == "gaussian" else ci
    return CostModel(
        terms=tuple(terms),
        params=params,
        softmax_exps=b * n * nk if pairwise in SOFTMAX_PAIRWISE else 0,
        paper_macs=float(b * (4 * c * ci * n + 2 * n * nk * ci)),
        paper_formula=PAPER_FORMULA,
        paper_band=paper_band(pairwise, c, ci),
        activation_bytes={
            "queries (N*C' or N*C)": b * n * key_width * e,
            "keys and values (N'*C' each)": b * nk * (key_width + ci) * e,
            "pairwise f (N*N')": b * n * nk * e,
            "y (N*C')": b * n * ci * e,
            "output": b * c * n * e,
        },
        implementation_bytes={
            "pairwise f (N*N')": b * n * nk * e,
            "phi and g before pooling (N*C' each)" if subsample else "phi and g (N*C' each)":
                b * n * ci * (1 if pairwise == "gaussian" else 2) * e,
        },
        notes=(f"C' = {ci}, N = {n}, N' = {nk}" + (" (2x2 max pool)" if subsample else ""),
               "the published formula assumes theta, phi, g, W_z and C'-wide products "
               "(the embedded Gaussian); it is exact there"),
    )


def _subsample_fits(value: bool, ctx: Context) -> str | None:
    if value and min(ctx["height"], ctx["width"]) < 2:
        return "needs height and width >= 2 (a 2x2 max pool)"
    return None


SCHEMA = Schema((
    Param("pairwise", str, "embedded_gaussian", "non-local pairwise function f", choices=PAIRWISE,
          headline=True),
    Param("subsample", bool, False, "2x2 max pool after phi and g (N' = N/4)", check=_subsample_fits),
    Param("inner_channels", int, None, "inner width C' of theta, phi, g", minimum=1,
          derive=lambda ctx: default_inner(ctx["channels"]), derived_text="channels/2"),
))

COST_TEXT = ("B*C*C'*N per 1x1 (g; theta and phi but for the Gaussian) + B*N*N'*C' pairwise "
             "(C-wide for the Gaussian; B*(N+N')*C' projections for concatenation) + B*N*N'*C' "
             "aggregation + B*N*C' 1/N' (dot product, concatenation) + B*C'*C*N (W_z); B*N*N' "
             "softmax exps (Gaussians)")


def _register() -> None:
    from lrprof.build.ops.registry import Impl, OpDef, register_op

    register_op(OpDef(
        name="nonlocal",
        summary="non-local block (Wang et al.): 1x1 theta/phi/g, N x N' pairwise f, W_z + BN, residual",
        schema=SCHEMA,
        impls=(Impl("bmm", "batched matrix products over all N x N' pairs (the N x N' matrix held)",
                    build),),
        cost=cost,
        modules=(NonLocal2d,),
        from_module=from_module,
        stride_param=None,
        cost_text=COST_TEXT,
    ))


_register()
