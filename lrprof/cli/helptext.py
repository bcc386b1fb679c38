"""What `--help` shows beyond the options: examples that run as written, and where each
command writes. Option placeholders are click's plain ones (TEXT, INTEGER, PATH), and
flags show none, rather than type tags such as <bool>."""

from __future__ import annotations

from typing import Any


def epilog(*examples: str, writes: str) -> str:
    """An epilog of examples, one per line (a paragraph click leaves unwrapped: it starts
    with \\b), and a sentence on what the command writes."""
    shown = "\n".join(f"  {e}" for e in examples)
    return f"Examples:\n\n\b\n{shown}\n\nWrites: {writes}"


REPORTS = ("reports/{command}-<date>-<time>.{{md,csv,json}} by default, with PNG plots beside the "
           "markdown (--no-plots: none); --out DIR writes DIR/{command}.{{md,csv,json}} instead.")

LAYER = epilog(
    "lrprof layer --k 7 --m 8",
    "lrprof layer --op lr,sasa,conv --channels 64 --size 28,56 --backward",
    "lrprof layer --k 7 --m 8 --impl all --baseline none --out current",
    writes=REPORTS.format(command="layer"),
)
COUNT = epilog(
    "lrprof count --op lr --k 7 --m 8",
    "lrprof count --module examples/my_layers.py:SmallCNN --input 8x3x64x64 --backward",
    "lrprof count --net resnet50 --convention fvcore",
    "lrprof count --net resnet50 --meta --input 1x3x1024x1024",
    writes="reports/count-<date>-<time>.{md,csv,json} by default; --out DIR writes "
           "DIR/count.{md,csv,json} instead (no plots).",
)
NET = epilog(
    "lrprof net lr50",
    "lrprof net lr50 --vs resnet50 --per-layer",
    "lrprof net --list",
    writes=REPORTS.format(command="net"),
)
COMPARE = epilog(
    "lrprof compare reports/baseline/layer.json current/layer.json --max-slowdown 10%",
    "lrprof compare old.csv new.json --normalize baseline --format markdown > summary.md",
    "lrprof compare old.json new.json --normalize baseline --on-inconclusive rerun --rerun-budget 120s",
    writes="the verdict on stdout only; --out DIR also writes DIR/compare.{md,csv,json}.",
)
SWEEP = epilog(
    "lrprof sweep --op lr --k 3,5,7,9 --m 1,2,4,8 --channels 64,128 --size 28,56 --stride 1,2",
    "lrprof sweep --op lr,nonlocal,sasa --size 14,28,56,112 --channels 64",
    "lrprof sweep --op lr --k 3:11:2 --m 1,8 --dry-run",
    "lrprof sweep --op lr --k 3,5,7,9 --m 1,2,4,8 --shard 2/8 --out runs/",
    writes=("OUT/rows.jsonl (one line per row, as it is measured) and OUT/sweep.{md,csv,json} with "
            "PNG plots beside; OUT is reports/sweep-<grid id> unless --out."),
)
MERGE = epilog(
    "lrprof merge runs/ --out reports/sweep",
    "lrprof merge runs/ --out reports/sweep --allow-mixed",
    writes="OUT/sweep.{md,csv,json} and its PNG plots, from every rows file found.",
)
CHECK = epilog(
    "lrprof check lrprof/build/ops/local_relation.py:LocalRelation2d --op lr --channels 64 --k 7 --m 8",
    "lrprof check examples/my_layers.py:LocalAttention --op sasa --channels 64 --k 7 --heads 8",
    writes=("reports/check-<date>-<time>.{md,csv,json} by default; --out DIR writes "
            "DIR/check.{md,csv,json} instead."),
)
OPS = epilog(
    "lrprof ops",
    "lrprof ops --device cpu --format json > ops.json",
    writes="the catalogue on stdout only.",
)


PLACEHOLDERS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH"}


def tidy(command: Any) -> None:
    """Placeholders instead of type tags, for a command and its subcommands."""
    for param in command.params:
        if param.param_type_name == "argument":
            param.metavar = param.metavar or param.name.upper()
            param.display_type_rich = lambda ctx=None: None  # its help says what it is
            continue
        if param.metavar is not None:
            continue
        elif param.is_flag:
            param.metavar = ""
        else:
            kind = param.bare_type().split("|")[0].strip()
            param.metavar = PLACEHOLDERS.get(kind, "VALUE")
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
