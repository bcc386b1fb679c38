"""What to measure: one layer configuration, independent of how it is measured."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from lrprof.spec.errors import SpecError, require_int

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


AUTO_IMPL = "auto"  # --impl auto: the fastest implementation ready on the device (profile/choice.py)


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


@dataclass(frozen=True, init=False)
class LayerSpec:
    """One layer configuration: the operator, its implementation, the input it sees, and the
    operator's own parameters (`params`, e.g. k and m for the local relation layer).

        LayerSpec(op="lr", k=7, m=8, channels=64, height=56, width=56, device="cpu")

    Keyword arguments that are not fields are operator parameters; None means "the
    default". `lrprof.build.ops.resolve_spec` fills in every default and validates, so a spec
    built through the API and the same one from the command line have the same identity.
    """

    op: str
    channels: int
    height: int
    width: int
    batch: int
    dtype: str
    device: str  # "auto": cuda when present, else cpu
    impl: str | None  # None: the operator's default implementation
    params: tuple[tuple[str, Any], ...]

    def __init__(self, op: str = "lr", channels: int = 64, height: int = 56, width: int = 56,
                 batch: int = 1, dtype: str = "float32", device: str = "auto",
                 impl: str | None = None, params: Any = (), **op_params: Any) -> None:
        merged = dict(params)
        merged.update(op_params)
        for name, value in (("op", op), ("channels", channels), ("height", height),
                            ("width", width), ("batch", batch), ("dtype", dtype),
                            ("device", device), ("impl", impl)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "params", tuple(sorted((k, v) for k, v in merged.items()
                                                        if v is not None)))

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def with_params(self, **params: Any) -> LayerSpec:
        merged = dict(self.params)
        merged.update(params)
        return dataclasses.replace(self, params=tuple(merged.items()))

    def replace(self, **changes: Any) -> LayerSpec:
        return dataclasses.replace(self, **changes)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    def shape(self) -> dict[str, int]:
        """What a parameter's bounds may depend on besides the other parameters."""
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "batch": self.batch}

    def config(self) -> dict[str, Any]:
        """Every field that identifies this configuration (a resolved spec gives all of
        them, defaults included): compare matches rows on exactly these."""
        out: dict[str, Any] = {
            "op": self.op,
            "impl": self.impl,
            "batch": self.batch,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "device": torch.device(default_device() if self.device == "auto" else self.device).type,
        }
        out.update(self.params)
        return out

    def validate_common(self) -> None:
        """Checks every operator shares; each operator's schema adds its own."""
        for name in ("channels", "height", "width", "batch"):
            require_int("size" if name in ("height", "width") else name, getattr(self, name), 1)
        resolve_dtype(self.dtype)
