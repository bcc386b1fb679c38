"""The JSON Schema of what lrprof writes (`lrprof schema` prints it): a report of layer, net,
module (`layer --module`), check and sweep runs (`lrprof.report/2`), and a comparison
(`lrprof compare --format json`). Field by field, so a script can be written against it,
and strict where a figure belongs: a latency given as a string fails validation.

Version 2 named the groups for what they hold: `counted` (what lrprof counted at the
dispatcher, the module's parameters, and what stock counters counted on the same pass)
apart from `model` (the operator's exact cost model and the published formula). Version 1
kept both in one group named `exact`; `compare` and `merge` still read it.
"""

from __future__ import annotations

from typing import Any

from lrprof.record.records import SCHEMA

DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMPARE_SCHEMA = "lrprof.gate.compare/1"

NUMBER = {"type": "number"}
COUNT = {"type": "integer", "minimum": 0}
OPTIONAL_NUMBER = {"type": ["number", "null"]}
OPTIONAL_COUNT = {"type": ["integer", "null"], "minimum": 0}
TEXT = {"type": "string"}
OPTIONAL_TEXT = {"type": ["string", "null"]}
SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), extra: Any = True,
            description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": list(required),
                           "additionalProperties": extra}
    if description:
        out["description"] = description
    return out


def _described(schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {**schema, "description": text}


LATENCY = _object({
    "median_ms": _described(NUMBER, "median milliseconds per call over the timed runs"),
    "q1_ms": _described(NUMBER, "first quartile of the runs, ms per call"),
    "q3_ms": _described(NUMBER, "third quartile of the runs, ms per call"),
    "min_ms": _described(NUMBER, "fastest run, ms per call"),
    "max_ms": _described(NUMBER, "slowest run, ms per call"),
    "runs": _described(COUNT, "timed runs (each the mean of calls_per_run calls)"),
    "calls_per_run": _described(COUNT, "calls averaged into one run"),
    "method": _described(TEXT, "how it was timed (clock, synchronisation, schedule)"),
    "threads": _described(OPTIONAL_COUNT, "CPU threads torch used while timing"),
    "samples_ms": _described({"type": "array", "items": NUMBER},
                             "every run's ms per call, in order: the statistics above follow from these"),
    "process_runs": _described({"type": "array", "items": COUNT},
                               "with --repeat: how many of samples_ms each fresh process gave, in order"),
    "minor_faults_per_call": _described(OPTIONAL_NUMBER, "minor page faults per call while timing"),
    "major_faults_per_call": _described(OPTIONAL_NUMBER, "major page faults per call while timing"),
    "involuntary_switches_per_s": _described(OPTIONAL_NUMBER, "involuntary context switches per second"),
}, ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "runs"),
    description="the distribution of one phase's latency")

MEMORY = _object({
    "peak_bytes": _described(COUNT, "median peak bytes allocated during one call, above resident"),
    "min_bytes": _described(COUNT, "smallest peak of the memory runs"),
    "max_bytes": _described(COUNT, "largest peak of the memory runs"),
    "runs": _described(COUNT, "memory runs"),
    "resident_bytes": _described(OPTIONAL_COUNT, "bytes allocated before the call (weights, inputs)"),
    "method": _described(TEXT, "how the peak was read (allocator statistics or profiler events)"),
}, ("peak_bytes", "runs"), description="peak memory of one phase")

FIGURES = {"type": "object", "additionalProperties": SCALAR}

RECORD = _object({
    "kind": _described(TEXT, "layer, net, stage, net-layer, module, module-part, check, ..."),
    "name": _described(TEXT, "the row's label, for people"),
    "config": _described({"type": "object", "additionalProperties": SCALAR, "minProperties": 1},
                         "the identity: every field that defines the configuration (op, impl, shape, "
                         "dtype, device, operator parameters); compare matches rows on exactly these"),
    "counted": _described(
        {"type": "object", "properties": {
            "params": _described(COUNT, "parameters of the module"),
            "fwd_MACs": _described(COUNT, "multiply-accumulates of one forward pass, counted at torch's "
                                          "dispatcher by lrprof's rules (1 MAC = 2 FLOPs)"),
            "bwd_MACs": _described(COUNT, "multiply-accumulates of the backward pass (--backward)"),
            "fwd_exps": _described(COUNT, "exponentials of one forward pass (softmax and the like)"),
            "bwd_exps": _described(COUNT, "exponentials of the backward pass"),
            "fwd_instructions": _described(COUNT, "CPU instructions per forward call (callgrind)"),
            "fwd_bwd_instructions": _described(COUNT, "CPU instructions per forward+backward call"),
            "fvcore_stock_MACs": _described(NUMBER, "what stock fvcore counts on the same forward pass"),
            "torch_flopcounter_FLOPs": _described(NUMBER, "what torch's FlopCounterMode counts (FLOPs)"),
            "torch_flopcounter_MACs": _described(NUMBER, "FlopCounterMode's FLOPs halved"),
        }, "additionalProperties": SCALAR},
        "what was counted on the module as it ran"),
    "model": _described(
        {"type": "object", "properties": {
            "exact_MACs": _described(COUNT, "the operator's exact term-by-term cost model, in MACs"),
            "exact_exps": _described(COUNT, "the exact model's exponentials"),
            "paper_O_MACs": _described(NUMBER, "the published O(...) formula evaluated at this shape"),
        }, "additionalProperties": SCALAR},
        "what the cost models say the configuration costs"),
    "exact": _described(FIGURES, "version 1 only: counted and model figures in one group"),
    "checks": _described(FIGURES, "ratios and verdicts derived from the figures (work_ratio, verdict, "
                                  "output_max_rel_err, ...)"),
    "latency": _described({"type": "object", "additionalProperties": LATENCY},
                          "phase (fwd, fwd_bwd) -> the latency distribution"),
    "memory": _described({"type": "object", "additionalProperties": MEMORY},
                         "phase (fwd, fwd_bwd) -> peak memory"),
    "derived": _described(FIGURES, "throughput, ratios to the baseline row, shares, roofline placement"),
    "detail": _described({"type": "object"}, "JSON only: term tables, per-op counts, implementation facts"),
    "error": _described(OPTIONAL_TEXT, "why this row failed, if it did (the rest of the report stands)"),
}, ("kind", "name", "config"), description="one measured configuration")

ENVIRONMENT = _object({
    "device": _described(TEXT, "cpu or cuda:N"),
    "device_name": TEXT, "torch_version": TEXT, "lrprof_version": TEXT, "python_version": TEXT,
    "platform": TEXT, "git_commit": OPTIONAL_TEXT, "cpu_model": OPTIONAL_TEXT,
    "cpu_logical_cores": OPTIONAL_COUNT, "torch_threads": COUNT,
    "cuda": {"type": "object"}, "unreadable": {"type": "object"},
    "ceilings": _described({"type": "array", "items": {"type": "object"}},
                           "the device's measured copy and matmul ceilings (roofline)"),
}, ("device", "device_name", "torch_version", "lrprof_version"),
    description="the machine and software the rows were measured on")

SECTION = _object({
    "title": TEXT, "note": TEXT, "rows": {"type": "array", "items": {"type": "object"}},
    "show": {"enum": ["both", "terminal", "markdown"]},
    "essential": {"type": "array", "items": TEXT}, "legend": {"type": "object"},
}, ("title", "rows"), description="a table for people; machines read the records")

REPORT = _object({
    "schema": {"enum": ["lrprof.report/1", SCHEMA]},
    "command": _described(TEXT, "layer, net, sweep, check, ..."),
    "argv": {"type": "array", "items": TEXT},
    "created": _described(TEXT, "ISO 8601, UTC"),
    "environment": ENVIRONMENT,
    "partial": _described({"type": ["object", "null"]},
                          "set when the run was interrupted: rows kept, rows planned, never measured"),
    "notes": {"type": "array", "items": TEXT},
    "figures": {"type": "array", "items": {"type": "object"}},
    "records": {"type": "array", "items": RECORD},
    "sections": {"type": "array", "items": SECTION},
}, ("schema", "command", "environment", "records"), description="a report of a measuring command")

METRIC = _object({
    "metric": TEXT, "old": OPTIONAL_NUMBER, "new": OPTIONAL_NUMBER, "change_pct": OPTIONAL_NUMBER,
    "status": TEXT, "why": TEXT, "test": {"type": ["object", "null"]},
}, ("metric", "status"))

COMPARISON = _object({
    "schema": {"const": COMPARE_SCHEMA},
    "old": TEXT, "new": TEXT,
    "regression": {"type": "boolean"},
    "thresholds": {"type": "object"},
    "warnings": {"type": "array", "items": TEXT},
    "only_in_old": {"type": "array", "items": TEXT},
    "only_in_new": {"type": "array", "items": TEXT},
    "unmatched": {"type": "array", "items": {"type": "object"}},
    "rows": {"type": "array", "items": _object({
        "kind": TEXT, "name": TEXT, "config": {"type": "object"}, "status": TEXT,
        "metrics": {"type": "array", "items": METRIC},
        "unreliable": {"type": "array", "items": TEXT},
    }, ("kind", "name", "status", "metrics"))},
}, ("schema", "old", "new", "rows"), description="`lrprof compare --format json`")


def json_schema() -> dict[str, Any]:
    """The whole schema: a report, or a comparison, told apart by their `schema` field."""
    return {
        "$schema": DIALECT,
        "$id": "https://lrprof.invalid/schema/report-2.json",
        "title": "lrprof report",
        "description": __doc__.strip().split("\n\n")[0].replace("\n", " "),
        "oneOf": [REPORT, COMPARISON],
    }
