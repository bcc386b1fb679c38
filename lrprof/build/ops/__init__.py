"""Operator registry: each operator is one module in this package that registers an `OpDef`:
its parameters (a `Schema`), its implementations (`Impl`), its exact cost model and the
published one. Modules here are found and imported automatically; an operator defined
anywhere else (a test, a user's package) registers itself the same way with `register_op`.

    op = get_op("lr")
    spec = resolve_spec(LayerSpec(op="lr", k=7))   # every default filled in, validated
    module = op.impl(spec.impl).build(spec)
"""

from lrprof.build.ops.cost import CostModel, Term
from lrprof.build.ops.registry import (
    Impl,
    OpDef,
    get_op,
    list_ops,
    op_for_module,
    register_op,
    resolve_spec,
    spec_for_module,
    spec_label,
    standard_normal,
    unregister_op,
)
from lrprof.spec.params import Param, Schema

__all__ = ["CostModel", "Impl", "OpDef", "Param", "Schema", "Term", "get_op", "list_ops",
           "op_for_module", "register_op", "resolve_spec", "spec_for_module", "spec_label",
           "standard_normal", "unregister_op"]
