"""Facts about the machine and software a measurement came from.

Each field that cannot be read is recorded as None with the reason in `unreadable`,
rather than guessed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Environment:
    device: str  # "cpu" or "cuda:N"
    device_name: str
    torch_version: str
    lrprof_version: str
    python_version: str
    platform: str
    git_commit: str | None
    cpu_model: str | None
    cpu_logical_cores: int | None
    torch_threads: int
    cuda: dict[str, Any] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    ceilings: list[dict[str, Any]] = field(default_factory=list)  # lrprof.measure.roofline, when measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Environment:
        known = {k: data.get(k) for k in cls.__dataclass_fields__}
        known["cuda"] = known.get("cuda") or {}
        known["unreadable"] = known.get("unreadable") or {}
        known["ceilings"] = known.get("ceilings") or []
        return cls(**known)

    @classmethod
    def unrecorded(cls, device: str = "cpu") -> Environment:
        """For a report rendered from records alone (the API without an environment): every
        fact says it was not recorded, rather than one made up now."""
        none = "not recorded"
        return cls(device=device, device_name=none, torch_version=none, lrprof_version=none,
                   python_version=none, platform=none, git_commit=None, cpu_model=None,
                   cpu_logical_cores=None, torch_threads=0)

    def summary(self) -> str:
        many = "" if self.torch_threads == 1 else "s"
        threads = f", {self.torch_threads} thread{many}" if self.device == "cpu" else ""
        return f"{self.device_name} ({self.device}{threads}), torch {self.torch_version}"


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit() -> str | None:
    """The commit of the lrprof checkout it runs from; None for an installed copy (whose
    enclosing repository, if any, would be someone else's)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("-dirty" if dirty else "")


def _nvml_facts(device: torch.device, unreadable: dict[str, str]) -> dict[str, Any]:
    """Name, driver, memory, SM clock and power limit through NVML."""
    facts: dict[str, Any] = {}
    try:
        import pynvml
    except ImportError as exc:
        unreadable["nvml"] = f"pynvml not importable: {exc}"
        return facts
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError has many subclasses; all mean "no NVML here"
        unreadable["nvml"] = f"nvmlInit failed: {exc}"
        return facts
    try:
        props = torch.cuda.get_device_properties(device)
        bus = getattr(props, "pci_bus_id", None)
        try:
            if bus is None:
                raise LookupError("no PCI bus id from torch")
            domain = getattr(props, "pci_domain_id", 0)
            pci_dev = getattr(props, "pci_device_id", 0)
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{pci_dev:02x}.0")
        except Exception:
            # Without a PCI id the CUDA index may not be NVML's index (CUDA_VISIBLE_DEVICES).
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            unreadable["nvml_handle"] = "matched by index, not PCI bus id"

        def read(name: str, getter: Any, scale: float = 1.0) -> None:
            try:
                value = getter()
                if isinstance(value, bytes):
                    value = value.decode()
                facts[name] = value * scale if isinstance(value, (int, float)) else value
            except Exception as exc:
                unreadable[name] = str(exc) or type(exc).__name__

        read("nvml_name", lambda: pynvml.nvmlDeviceGetName(handle))
        read("driver_version", pynvml.nvmlSystemGetDriverVersion)
        read("memory_total_bytes", lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        # Read before measuring, so an idle clock: the boost clock during a run is higher.
        read("sm_clock_mhz_before_run",
             lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        read("sm_clock_max_mhz",
             lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
        read("power_limit_w", lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle), 1e-3)
        read("temperature_c_before_run",
             lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return facts


def _cuda_facts(device: torch.device, unreadable: dict[str, str]) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    facts: dict[str, Any] = {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "total_memory_bytes": props.total_memory,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    facts.update(_nvml_facts(device, unreadable))
    return facts


def collect(device: torch.device) -> Environment:
    from lrprof.spec.version import __version__

    unreadable: dict[str, str] = {}
    cuda: dict[str, Any] = {}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        cuda = _cuda_facts(device, unreadable)
        name = cuda["name"]
    else:
        name = cpu_model() or "unknown CPU"
    return Environment(
        device=str(device),
        device_name=name,
        torch_version=torch.__version__,
        lrprof_version=__version__,
        python_version=platform.python_version(),
        platform=platform.platform(),
        git_commit=git_commit(),
        cpu_model=cpu_model(),
        cpu_logical_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        cuda=cuda,
        unreadable=unreadable,
    )
