"""Where a train step's time goes: a jax.profiler trace of the compiled step, its ops grouped by
the part of the model they belong to, next to each part's share of the model FLOPs.

Every op the trace records is named after an HLO instruction; the compiled HLO gives that
instruction's source scope (`op_name`): the model's modules, plus the named scopes `dot_product`
(attention scores, softmax and values), `logits`, `cross_entropy` and `optimizer`. Ops of the
backward pass carry their forward op's scope, so each part counts its forward and backward.
"""

import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from t5pod import flops

PARTS = (
    "attention projections",
    "attention scores and values",
    "feed-forward",
    "output layer",
    "loss (cross entropy)",
    "optimizer",
    "other (norms, embeddings, residuals, scan and layout copies)",
)
# An op's part: the first rule whose pattern occurs in its op_name. A scope shows as `/scope/`, or
# as `jvp(scope)` and `transpose(jvp(scope))` where a transformation begins inside it.
RULES = (
    ("optimizer", "optimizer"),
    ("cross_entropy", "loss (cross entropy)"),
    ("logits", "output layer"),
    ("dot_product", "attention scores and values"),
    ("relpos_bias", "attention scores and values"),
    ("norm", PARTS[-1]),
    ("attention", "attention projections"),
    ("mlp", "feed-forward"),
)
# Instructions that only run other instructions (each recorded on its own); counting them too
# would count their time twice.
CONTAINERS = {"while", "conditional", "call"}
# `  %name = type opcode(operands), ...`; a tuple type has spaces and parentheses of its own.
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) ([a-z][\w\-]*)\(")


def part_of(op_name: str) -> str:
    for pattern, part in RULES:
        if pattern in op_name:
            return part
    return PARTS[-1]


def instruction_parts(hlo_text: str) -> dict[str, str | None]:
    """HLO instruction name -> its part (None for containers)."""
    parts = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name, opcode = match.group(1), match.group(2)
            op_name = re.search(r'op_name="([^"]*)"', line)
            parts[name] = None if opcode in CONTAINERS else part_of(op_name.group(1) if op_name else "")
    return parts


def trace_op_durations(trace_dir: str) -> dict[str, float]:
    """Total microseconds per event name in the trace jax.profiler wrote under trace_dir."""
    (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    totals: dict[str, float] = {}
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]] = totals.get(event["name"], 0.0) + float(event.get("dur", 0.0))
    return totals


def profile(compiled, run_step, model_config, batch: int, lengths: tuple[int, int], steps: int = 2) -> dict:
    """Traces `steps` calls of run_step() (which runs `compiled` once and blocks) and splits the
    ops' time by part. Returns step seconds, and per part its share of the ops' time and of the
    model FLOPs (parts without FLOPs in the formula: loss, optimizer, other)."""
    parts = instruction_parts(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                run_step()
        step_s = (time.perf_counter() - start) / steps
        durations = trace_op_durations(trace_dir)
    seconds = dict.fromkeys(PARTS, 0.0)
    for name, micros in durations.items():
        if parts.get(name):
            seconds[parts[name]] += micros / 1e6 / steps
    total_s = sum(seconds.values())
    flop_parts = flops.train_flops_by_part(model_config, *lengths)
    total_flops = sum(flop_parts.values())
    return {
        "batch": batch,
        "lengths": list(lengths),
        "step_s": step_s,
        "op_seconds_per_step": total_s,
        "parts": {
            part: {
                "time_share": seconds[part] / total_s if total_s else 0.0,
                "flop_share": flop_parts.get(part, 0.0) / total_flops,
            }
            for part in PARTS
        },
    }


def format_profile(name: str, result: dict) -> str:
    lines = [
        f"where the step's time goes: {name}, batch {result['batch']}, {tuple(result['lengths'])}, "
        f"{result['step_s']:.2f} s per traced step",
        f"  {'part':56} {'time':>6} {'FLOPs':>6}",
    ]
    for part, shares in result["parts"].items():
        lines.append(f"  {part:56} {shares['time_share']:6.1%} {shares['flop_share']:6.1%}")
    return "\n".join(lines)
