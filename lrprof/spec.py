"""What to measure: one layer configuration, independent of how it is measured."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from lrprof.errors import SpecError, require_int

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SpecError("dtype", f"one of {', '.join(DTYPES)}", name)
    return DTYPES[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> torch.device:
    """The device to run on; CUDA must really be there (no silent fallback to the CPU)."""
    if name is None or name == "auto":
        name = default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SpecError("device", "cpu, cuda or cuda:N", name) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("device", "cpu (CUDA is not available on this machine)", name)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SpecError("device", f"cpu or cuda:0..cuda:{count - 1}", name)
    elif device.type != "cpu":
        raise SpecError("device", "cpu, cuda or cuda:N", name)
    return device


def parse_size(text: str | int) -> tuple[int, int]:
    """'56' -> (56, 56); '28x40' -> (28, 40)."""
    if isinstance(text, int):
        parts = [text]
    else:
        try:
            parts = [int(p) for p in str(text).lower().split("x")]
        except ValueError:
            raise SpecError("size", "a positive integer N or HxW", text) from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise SpecError("size", "a positive integer N or HxW", text)
    return parts[0], parts[1]


@dataclass(frozen=True)
class LayerSpec:
    """One layer configuration: the operator, its hyper-parameters and the input it sees.

    `options` holds operator-specific settings (for the local relation layer: phi and
    geometry_hidden) so a new operator adds options without changing this type.
    """

    op: str = "lr"
    channels: int = 64
    height: int = 56
    width: int = 56
    k: int = 7
    m: int = 8
    stride: int = 1
    batch: int = 1
    dtype: str = "float32"
    device: str = "auto"  # cuda when present, else cpu
    impl: str = "unfold"
    options: tuple[tuple[str, Any], ...] = field(default=())

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    def with_options(self, **options: Any) -> LayerSpec:
        merged = dict(self.options)
        merged.update({k: v for k, v in options.items() if v is not None})
        return dataclasses.replace(self, options=tuple(sorted(merged.items())))

    def replace(self, **changes: Any) -> LayerSpec:
        return dataclasses.replace(self, **changes)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    def config(self) -> dict[str, Any]:
        """The fields that identify this configuration in a report (compare matches on them)."""
        out: dict[str, Any] = {
            "op": self.op,
            "impl": self.impl,
            "batch": self.batch,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "k": self.k,
            "m": self.m,
            "stride": self.stride,
            "dtype": self.dtype,
            "device": torch.device(default_device() if self.device == "auto" else self.device).type,
        }
        out.update(dict(self.options))
        return out

    def label(self) -> str:
        opts = "".join(f" {k}={v}" for k, v in self.options)
        return (
            f"{self.op}[{self.impl}] k={self.k} m={self.m} s={self.stride} C={self.channels} "
            f"{self.height}x{self.width} B={self.batch}{opts}"
        )

    def validate_common(self) -> None:
        """Checks every operator shares; each operator adds its own in its module."""
        for name in ("channels", "height", "width", "batch"):
            require_int(name, getattr(self, name), 1)
        resolve_dtype(self.dtype)
