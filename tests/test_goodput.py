"""Goodput: an attempt's parts add up to its wall time; across attempts, steps redone after a
restart count as lost and the time between attempts as downtime."""

import json
import signal
import time

import pytest

from helpers import run_cli, start_cli
from t5pod import goodput


def _row(start, first, step, wall, productive, startup, checkpoint=0.0):
    parts = dict.fromkeys(goodput.PARTS, 0.0) | {"productive": productive, "startup": startup, "checkpoint": checkpoint}
    return {
        "split": "goodput",
        "step": step,
        "attempt_start": start,
        "first_step": first,
        "wall_s": wall,
        **{f"{p}_s": v for p, v in parts.items()},
        "goodput": productive / wall,
    }


def test_steps_redone_after_a_restart_are_lost_and_the_gap_between_attempts_is_downtime():
    rows = [
        _row(1000.0, 0, 10, 30.0, 20.0, 10.0),  # an earlier row of the first attempt: superseded
        _row(1000.0, 0, 40, 60.0, 40.0, 10.0, 10.0),  # killed after step 40, its last checkpoint at 30
        {"split": "train", "step": 41},
        _row(1075.0, 30, 50, 25.0, 10.0, 15.0),  # resumed from step 30, 15 s after the last row
    ]
    summary = goodput.summarize(rows)
    first, second = summary["attempts"]
    # Steps 31-40 were trained twice: 10 of the first attempt's 40 steps, a quarter of its 40 s.
    assert (first["lost_steps"], first["lost_s"], first["downtime_s"]) == (10, 10.0, 15.0)
    assert (second["lost_steps"], second["lost_s"], second["downtime_s"]) == (0, 0.0, 0.0)
    assert summary["wall_s"] == 100.0  # 1000 -> 1100
    assert (summary["productive_s"], summary["lost_s"], summary["startup_s"]) == (40.0, 10.0, 25.0)
    assert summary["goodput"] == pytest.approx(0.4)
    parts = sum(summary[f"{p}_s"] for p in (*goodput.PARTS, "lost", "downtime"))
    assert parts == pytest.approx(summary["wall_s"])
    with pytest.raises(ValueError, match="no goodput rows"):
        goodput.summarize([{"split": "train", "step": 1}])


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_killed_and_restarted_reports_lost_steps_and_its_parts_add_up_to_the_wall_time(tmp_path):
    command = [
        "train",
        "--gin_file=demo.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
        "--gin.TRAIN_STEPS=300",
        "--gin.BATCH_SIZE=4",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        "--gin.LOG_PERIOD=1",
        "--gin.CHECKPOINT_PERIOD=20",
        "--gin.EVAL_PERIOD=0",
    ]
    began = time.time()
    first = start_cli(*command)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and (tmp_path / "run" / "checkpoints" / "20").is_dir()):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # some steps past checkpoint 20
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_done = time.time()
    time.sleep(1)  # the slice being requested again, say: downtime
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
    killed_at = max(r["step"] for r in rows if r["split"] == "goodput")
    second = run_cli(*command)
    ended = time.time()
    assert second.returncode == 0, second.stderr[-2000:]
    resumed_from = int(second.stdout.split("(step ")[1].split(")")[0])  # "Resumed from .../checkpoints/N (step N)."
    assert 20 <= resumed_from < killed_at < 300
    report = run_cli("goodput", str(tmp_path / "run"), "--json")
    assert report.returncode == 0, report.stderr[-2000:]
    summary = json.loads(report.stdout.strip().splitlines()[-1])
    attempt, restart = summary["attempts"]
    assert (attempt["first_step"], attempt["step"], attempt["lost_steps"]) == (0, killed_at, killed_at - resumed_from)
    assert attempt["lost_s"] > 0 and summary["lost_s"] == attempt["lost_s"]
    assert (restart["first_step"], restart["step"]) == (resumed_from, 300)
    assert restart["startup_s"] > 1 and summary["startup_s"] == pytest.approx(
        attempt["startup_s"] + restart["startup_s"]
    )
    assert summary["downtime_s"] > 1  # from the killed attempt's last row to the restart's process start
    parts = sum(summary[f"{p}_s"] for p in (*goodput.PARTS, "lost", "downtime"))
    assert parts == pytest.approx(summary["wall_s"], rel=0.02)
    # Each attempt starts when its process was created (read from /proc, not from the run's own
    # clock): within a second after the test started it. The summary's span runs from the first
    # start to the last row, inside the test's span (which also holds the last process's exit).
    assert began - 0.05 <= attempt["attempt_start"] <= began + 1  # /proc counts in 10 ms ticks
    assert killed_done <= restart["attempt_start"] <= killed_done + 2
    assert summary["wall_s"] == pytest.approx(restart["attempt_start"] + restart["wall_s"] - attempt["attempt_start"])
    assert summary["wall_s"] <= ended - began
    assert f"attempt 1: steps 0-{killed_at}; {killed_at - resumed_from} steps redone by the next" in report.stdout
