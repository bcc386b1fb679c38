"""lrprof: what a spatially adaptive aggregation layer really costs, and whether it behaves
like its complexity formula says.

The public API, one import away (nothing here is loaded until first used, so importing
lrprof costs no torch start-up):

    import lrprof

    records = lrprof.profile_layers([lrprof.LayerSpec(op="lr", k=7, m=8, device="cpu")])
    print(records[0].counted["fwd_MACs"])

Profiles return data; renderers live in `lrprof.report` (render_markdown, layer_report, ...).
The package reads bottom to top as the pipeline: spec -> measure -> build, record ->
profile, gate -> sweep -> report -> cli.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lrprof.spec.version import __version__

if TYPE_CHECKING:
    from lrprof.build.ops.registry import register_op
    from lrprof.build.usermodule import ModuleSpec
    from lrprof.gate.compare import Thresholds, compare
    from lrprof.measure.rules import Work, register_rule
    from lrprof.profile.audit import run_audit
    from lrprof.profile.count import count, count_instance
    from lrprof.profile.layer import profile_layer, profile_layers
    from lrprof.profile.module import profile_instance, profile_module
    from lrprof.profile.net import NetSpec, profile_net, profile_nets
    from lrprof.record.load import load_report
    from lrprof.spec.layer import LayerSpec
    from lrprof.spec.options import MeasureOptions, TimingOptions

# public name -> the module that defines it
_API: dict[str, str] = {
    "LayerSpec": "lrprof.spec.layer",
    "MeasureOptions": "lrprof.spec.options",
    "TimingOptions": "lrprof.spec.options",
    "NetSpec": "lrprof.profile.net",
    "ModuleSpec": "lrprof.build.usermodule",
    "profile_layer": "lrprof.profile.layer",
    "profile_layers": "lrprof.profile.layer",
    "profile_net": "lrprof.profile.net",
    "profile_nets": "lrprof.profile.net",
    "profile_module": "lrprof.profile.module",
    "profile_instance": "lrprof.profile.module",
    "run_audit": "lrprof.profile.audit",
    "count": "lrprof.profile.count",
    "count_instance": "lrprof.profile.count",
    "compare": "lrprof.gate.compare",
    "Thresholds": "lrprof.gate.compare",
    "load_report": "lrprof.record.load",
    "register_op": "lrprof.build.ops.registry",
    "register_rule": "lrprof.measure.rules",
    "Work": "lrprof.measure.rules",
}

__all__ = [
    "LayerSpec", "MeasureOptions", "ModuleSpec", "NetSpec", "Thresholds", "TimingOptions", "Work",
    "__version__", "compare", "count", "count_instance", "load_report", "profile_instance", "profile_layer",
    "profile_layers", "profile_module", "profile_net", "profile_nets", "register_op",
    "register_rule", "run_audit",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'lrprof' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
