"""Is an implementation's output the operator's? Each implementation is run on a fresh
random input and compared with the operator's reference implementation run in float64
with the same weights, on the same input (widened, so rounding the input is not counted
as error).

The figure is a relative error over the whole output, max |y - y64| / max |y64|: an
elementwise relative error would blow up where the output crosses zero, and allclose
with an absolute tolerance passes anything small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# What each dtype's rounding allows in a layer's output (a few ulps of its accumulations).
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
METHOD = "max |y - y_ref| / max |y_ref| against the reference implementation in float64"


@dataclass(frozen=True)
class OutputCheck:
    max_rel_err: float
    tolerance: float
    reference: str
    note: str = ""  # what the operator's own check adjusted (DRConv's near-tie routing)

    @property
    def ok(self) -> bool:
        return self.max_rel_err <= self.tolerance  # NaN fails


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    if y.shape != reference.shape:
        raise ValueError(f"output shape {tuple(y.shape)} differs from the reference's "
                         f"{tuple(reference.shape)}")
    scale = reference.abs().max().item()
    diff = (y.to(torch.float64) - reference).abs().max().item()
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / scale


def _outputs(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    raise TypeError(f"cannot compare an output of type {type(value).__name__}")


def compare_with_reference(module: nn.Module, reference: nn.Module, inputs: tuple[torch.Tensor, ...],
                           dtype: str, reference_name: str) -> OutputCheck:
    """`reference` is loaded with `module`'s weights in float64 and both run on `inputs`
    (already in the module's dtype)."""
    state = {k: v.detach().to(torch.float64) if v.is_floating_point() else v
             for k, v in module.state_dict().items()}
    reference.load_state_dict(state)
    device = next((t.device for t in inputs), torch.device("cpu"))
    reference = reference.to(device=device, dtype=torch.float64).eval()
    with torch.no_grad():
        got = _outputs(module(*inputs))
        expected = _outputs(reference(*(x.to(torch.float64) if x.is_floating_point() else x
                                         for x in inputs)))
    if len(got) != len(expected):
        raise ValueError(f"{len(got)} outputs where the reference gives {len(expected)}")
    error = max(relative_error(a, b) for a, b in zip(got, expected, strict=True))
    return OutputCheck(error, TOLERANCE.get(dtype, 1e-4), reference_name)
