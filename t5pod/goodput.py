"""Goodput: where a training run's wall time goes, attempt by attempt (each start of `train` on a
MODEL_DIR is an attempt; a preempted or killed run is resumed by another).

An attempt measures, from its process's start: start-up (up to the first step: imports, checks,
compilation, restore), data waits (the next batch), checkpoint saves (the time the loop is
blocked), evaluation, inference evaluation, and shutdown; productive time is the rest of the
loop (the steps, and the log lines that wait for them). The parts add up to the attempt's wall
time. It writes them as metrics.jsonl rows (split "goodput") and TensorBoard scalars at each log
line and at the end. `t5pod goodput MODEL_DIR` joins the attempts: steps an attempt trained past
its last checkpoint are redone by the next, so their time moves from productive to lost, and
the gaps between attempts (a dead process, a slice being requested again) are downtime. The
names follow Google's ml-goodput-measurement (productive time; badput of program start-up, data
loading, checkpointing, wasted progress from disruption), which reports to Cloud Logging only.
"""

import contextlib
import os
import time

# Measured parts of an attempt, in the order printed.
PARTS = ("productive", "startup", "data_wait", "checkpoint", "evaluation", "inference_evaluation", "shutdown")
_IMPORTED = time.time()


def process_start_time() -> float:
    """When this process started, to 10 ms (Linux: its start in clock ticks since boot, against the
    clock since boot; elsewhere: when this module was imported)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since_start
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED


class Account:
    """One attempt's seconds per part; `measure(part)` times a block, `loop_started` and
    `loop_ended` bound the loop (whose unmeasured time is productive)."""

    def __init__(self, first_step: int, start: float | None = None):
        self.start = process_start_time() if start is None else start
        self.first_step = first_step
        self.seconds = dict.fromkeys(PARTS, 0.0)  # the parts measured directly
        self._loop_start = self._loop_end = None
        self._final_save = 0.0  # the wait for the last save, after the loop

    @contextlib.contextmanager
    def measure(self, part: str):
        begin = time.time()
        try:
            yield
        finally:
            elapsed = time.time() - begin
            if part == "checkpoint" and self._loop_end is not None:
                self._final_save += elapsed
            else:
                self.seconds[part] += elapsed

    def loop_started(self):
        self._loop_start = time.time()
        self.seconds["startup"] = self._loop_start - self.start

    def loop_ended(self):
        self._loop_end = time.time()

    def row(self, step: int, now: float | None = None) -> dict:
        """The attempt so far: {step, attempt_start, first_step, wall_s, <part>_s..., goodput}."""
        now = time.time() if now is None else now
        seconds = dict(self.seconds)
        if self._loop_start is not None:
            in_loop = sum(seconds[p] for p in ("data_wait", "checkpoint", "evaluation", "inference_evaluation"))
            seconds["productive"] = (self._loop_end or now) - self._loop_start - in_loop
            if self._loop_end is not None:
                seconds["checkpoint"] += self._final_save
                seconds["shutdown"] = now - self._loop_end - self._final_save
        else:
            seconds["startup"] = now - self.start
        wall = now - self.start
        return {
            "attempt_start": round(self.start, 3),
            "first_step": self.first_step,
            "wall_s": wall,
            **{f"{part}_s": seconds[part] for part in PARTS},
            "goodput": seconds["productive"] / wall if wall > 0 else 0.0,
        }


def summarize(rows: list[dict]) -> dict:
    """The run across its attempts, from metrics.jsonl's goodput rows: per attempt its last row,
    the steps it trained that the next attempt redid (lost) and their share of its productive
    time, and the downtime before the next attempt started. Totals add up to `wall_s`, from the
    first attempt's start to the last attempt's last row."""
    attempts, first_written = {}, {}
    for row in rows:
        if row.get("split") == "goodput":
            attempts[row["attempt_start"]] = row  # the last row of each attempt
            first_written.setdefault(row["attempt_start"], row.get("time", row["attempt_start"]))
    # In the order they ran: by their first row (a process started by exec keeps its parent's start).
    ordered = sorted(attempts.values(), key=lambda r: first_written[r["attempt_start"]])
    if not ordered:
        raise ValueError("no goodput rows in metrics.jsonl: this run was trained before t5pod measured goodput.")
    totals = dict.fromkeys([*PARTS, "lost", "downtime"], 0.0)
    summary_attempts = []
    for index, row in enumerate(ordered):
        following = ordered[index + 1] if index + 1 < len(ordered) else None
        steps = row["step"] - row["first_step"]
        lost_steps = max(0, row["step"] - following["first_step"]) if following else 0
        lost = row["productive_s"] * lost_steps / steps if steps > 0 else 0.0
        end = row["attempt_start"] + row["wall_s"]
        downtime = max(0.0, following["attempt_start"] - end) if following else 0.0
        for part in PARTS:
            totals[part] += row[f"{part}_s"]
        totals["productive"] -= lost
        totals["lost"] += lost
        totals["downtime"] += downtime
        summary_attempts.append({**row, "lost_steps": lost_steps, "lost_s": lost, "downtime_s": downtime})
    wall = max(r["attempt_start"] + r["wall_s"] for r in ordered) - min(r["attempt_start"] for r in ordered)
    return {
        "attempts": summary_attempts,
        "wall_s": wall,
        **{f"{part}_s": value for part, value in totals.items()},
        "goodput": totals["productive"] / wall if wall > 0 else 0.0,
    }


def format_line(row: dict) -> str:
    """One line: goodput and every part that took time."""
    names = [name for name in (*PARTS, "lost", "downtime") if f"{name}_s" in row]
    shown = ", ".join(f"{name.replace('_', ' ')} {row[f'{name}_s']:.1f} s" for name in names)
    return f"goodput {row['goodput']:.1%} of {row['wall_s']:.1f} s: {shown}"
