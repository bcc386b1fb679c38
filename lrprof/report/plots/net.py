"""Pictures of a network report: where the work is against where the time goes, stage by
stage (and for the slowest layers with --per-layer), and two networks' stage times side by
side with --vs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lrprof.record.records import Record
from lrprof.report.numbers import figure
from lrprof.report.plots.common import Plot, new_figure, palette, save_png

TOP_LAYERS = 15


def _by_net(records: Sequence[Record], kind: str) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        if r.kind == kind:
            out.setdefault(str(r.config.get("net")), []).append(r)
    return out


def _share_bars(axis, labels: list[str], macs: list[float], time: list[float], horizontal: bool) -> None:
    mac_color, time_color = palette(2)
    positions = list(range(len(labels)))
    offset = 0.2
    if horizontal:
        positions = positions[::-1]
        axis.barh([p + offset for p in positions], macs, height=0.38, color=mac_color, label="MACs share")
        axis.barh([p - offset for p in positions], time, height=0.38, color=time_color, label="time share")
        axis.set_yticks(positions, labels, fontsize=8)
        axis.set_xlabel("share of the network (%)")
        axis.grid(True, axis="x", alpha=0.3)
    else:
        axis.bar([p - offset for p in positions], macs, width=0.38, color=mac_color, label="MACs share")
        axis.bar([p + offset for p in positions], time, width=0.38, color=time_color, label="time share")
        axis.set_xticks(positions, labels)
        axis.set_ylabel("share of the network (%)")
        axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8)


def plot_stage_shares(records: Sequence[Record], path: Path, facts: str) -> Plot | None:
    """Per network, each stage's share of the counted MACs beside its share of the time."""
    nets = _by_net(records, "stage")
    if not nets:
        return None
    fig = new_figure(5.2 * len(nets) + 0.6, 3.8)
    axes = fig.subplots(1, len(nets), squeeze=False)[0]
    for axis, (net, stages) in zip(axes, nets.items(), strict=True):
        _share_bars(axis, [str(s.config.get("stage")) for s in stages],
                    [s.derived.get("MACs_share_pct") or 0 for s in stages],
                    [s.derived.get("latency_share_pct") or 0 for s in stages], horizontal=False)
        axis.set_title(net, fontsize=10)
    fig.suptitle(f"Where the work is and where the time goes, per stage\n{facts}", fontsize=10)
    save_png(fig, path)
    return Plot(path, "MACs share and time share per stage",
                "Each stage's share of the counted forward MACs beside its share of the summed "
                "hooked stage times: a stage whose time bar stands above its MACs bar takes more "
                "time than its work.")


def plot_top_layers(records: Sequence[Record], path: Path, facts: str,
                    limit: int = TOP_LAYERS) -> Plot | None:
    """Per network, the slowest layers: MACs share beside time share."""
    nets = _by_net(records, "net-layer")
    if not nets:
        return None
    fig = new_figure(6.2 * len(nets) + 0.8, 1.2 + 0.32 * limit)
    axes = fig.subplots(1, len(nets), squeeze=False)[0]
    for axis, (net, layers) in zip(axes, nets.items(), strict=True):
        top = sorted(layers, key=lambda r: -(r.derived.get("latency_share_pct") or 0))[:limit]
        _share_bars(axis, [f"{r.config.get('layer')} ({r.derived.get('layer_type')})" for r in top],
                    [r.derived.get("MACs_share_pct") or 0 for r in top],
                    [r.derived.get("latency_share_pct") or 0 for r in top], horizontal=True)
        axis.set_title(f"{net}: {len(top)} slowest layers", fontsize=10)
    fig.suptitle(f"The slowest layers: MACs share and time share\n{facts}", fontsize=10)
    save_png(fig, path)
    return Plot(path, f"The {limit} slowest layers",
                "For each network, the layers that take the largest share of the summed hooked "
                "layer times, with their share of the counted forward MACs beside it.")


def plot_versus_stages(records: Sequence[Record], path: Path, facts: str) -> Plot | None:
    """Two networks' hooked stage times side by side, and their whole-net medians."""
    nets = _by_net(records, "stage")
    if len(nets) < 2:
        return None
    (a, a_stages), (b, b_stages) = list(nets.items())[:2]
    stages = [str(s.config.get("stage")) for s in a_stages]
    b_ms = {str(s.config.get("stage")): s.latency["fwd"].median_ms for s in b_stages}
    fig = new_figure(7.5, 3.8)
    axis = fig.subplots()
    color_a, color_b = palette(2)
    positions = list(range(len(stages)))
    axis.bar([p - 0.2 for p in positions], [s.latency["fwd"].median_ms for s in a_stages], width=0.38,
             color=color_a, label=a)
    axis.bar([p + 0.2 for p in positions], [b_ms.get(s, 0) for s in stages], width=0.38,
             color=color_b, label=b)
    axis.set_xticks(positions, stages)
    axis.set_yscale("log")
    axis.set_ylabel("hooked stage latency (ms, median, log scale)")
    axis.grid(True, axis="y", alpha=0.3)
    totals = {r.config.get("net"): r.latency["fwd"].median_ms for r in records
              if r.kind == "net" and "fwd" in r.latency}
    if a in totals and b in totals:
        axis.set_title(f"whole net (unhooked): {a} {figure(totals[a])} ms, {b} {figure(totals[b])} ms, "
                       f"ratio {figure(totals[a] / totals[b])}", fontsize=9)
    axis.legend(fontsize=8)
    fig.suptitle(f"{a} against {b}, stage by stage, same interleaved run\n{facts}", fontsize=10)
    save_png(fig, path)
    return Plot(path, f"{a} against {b}, stage by stage",
                "Median hooked time of each stage for both networks (log scale), measured in one "
                "run with the two networks taking turns; the title gives the unhooked whole-net "
                "medians and their ratio.")


def net_plots(records: Sequence[Record], base: Path, facts: str) -> list[Plot]:
    made = [
        plot_stage_shares(records, base.with_name(f"{base.name}-stages.png"), facts),
        plot_versus_stages(records, base.with_name(f"{base.name}-versus.png"), facts),
        plot_top_layers(records, base.with_name(f"{base.name}-layers.png"), facts),
    ]
    return [p for p in made if p is not None]
