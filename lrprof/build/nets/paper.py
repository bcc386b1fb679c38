"""The papers' printed tables held against our exact count: each network registers the
figures its paper printed, and the open architecture choices that decide whether the
table is reproduced (counted from the operators' models, no weights, no compute)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lrprof.build.nets import PaperFigures, get_net
from lrprof.build.nets.cost import exact_by_layer

PARAMS_TOLERANCE_PCT = 1.0
MACS_TOLERANCE_PCT = 3.0
PAPER_INPUT = (1, 3, 224, 224)


def paper_checks(params: int, macs: int, figures: Iterable[PaperFigures]) -> list[dict[str, Any]]:
    rows = []
    for fig in figures:
        # a paper that printed no parameter count (params None) is checked on MACs alone
        dp = None if fig.params is None else 100.0 * (params - fig.params) / fig.params
        dm = 100.0 * (macs - fig.macs) / fig.macs
        ok = (dp is None or abs(dp) <= PARAMS_TOLERANCE_PCT) and abs(dm) <= MACS_TOLERANCE_PCT
        rows.append({
            "source": fig.source,
            "printed params (M)": None if fig.params is None else fig.params / 1e6,
            "ours params (M)": params / 1e6,
            "params diff (%)": dp,
            "printed MACs (G)": fig.macs / 1e9,
            "ours MACs (G)": macs / 1e9,
            "MACs diff (%)": dm,
            "verdict": "pass" if ok else f"differs (expected: {fig.expected})" if fig.expected else "fail",
        })
    return rows


def choice_rows(name: str) -> list[dict[str, Any]]:
    """Each open choice the network registers, counted at the tables' input, against the
    first printed figure: which choice reproduces the table."""
    netdef = get_net(name)
    if not netdef.paper or not netdef.choices:
        return []
    rows = []
    for label, overrides in netdef.choices:
        costs = exact_by_layer(name, overrides, PAPER_INPUT)
        check = paper_checks(sum(c.params for c in costs), sum(c.macs for c in costs), netdef.paper[:1])[0]
        check["verdict"] = "reproduces the table" if check["verdict"] == "pass" else "does not"
        rows.append({"choice": label, **{k: v for k, v in check.items() if k != "source"}})
    return rows
