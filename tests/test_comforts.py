"""Progress lines, metrics.jsonl on buckets, quiet start-up and --verbose."""

import os
import re
import subprocess
import sys

import pytest

from t5pod import metric_writers, progress


def test_progress_line_counts_rate_and_eta(monkeypatch, capsys):
    clock = iter([100.0, 110.0, 111.0, 130.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    p = progress.Progress(total=120, every_s=5, what="examples", prefix="task: ")  # starts at 100 s
    p.update(30)  # 110 s: 30 in 10 s, 90 left at 3/s
    p.update(5)  # 111 s: under every_s since the last line: silent
    p.done("finished")  # 130 s: 35 in 30 s
    assert capsys.readouterr().out.splitlines() == [
        "task: examples 30/120  3.0 examples/s  ETA 0m30s",
        "task: examples 35/120  1.2 examples/s  ETA 1m12s",
        "finished",
    ]  # (120 - 35) / (35 / 30) = 72.9 s


def test_metrics_on_a_bucket_go_to_parts_each_written_once(monkeypatch):
    written = []
    real = metric_writers.write_text
    monkeypatch.setattr(metric_writers, "write_text", lambda path, text: (written.append(path), real(path, text)))
    run = "ram://t5pod-tests/run"
    lines = metric_writers._JsonLines(f"{run}/metrics.jsonl", flush_every_s=0)
    for step in (1, 2):
        lines.write(f'{{"step": {step}}}')
    lines.close()
    again = metric_writers._JsonLines(f"{run}/metrics.jsonl", flush_every_s=3600)  # a resumed run
    again.write('{"step": 3}')
    again.write('{"step": 4}')
    assert len(written) == 2  # held until the flush period or close
    again.close()
    assert written == [f"{run}/metrics/part-0000{i}.jsonl" for i in range(3)]  # no object written twice
    assert [row["step"] for row in metric_writers.read_metrics(run)] == [1, 2, 3, 4]


def test_local_metrics_are_appended(tmp_path):
    for step in (1, 2):  # two runs of one MODEL_DIR
        lines = metric_writers._JsonLines(str(tmp_path / "metrics.jsonl"))
        lines.write(f'{{"step": {step}}}')
        lines.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    assert [row["step"] for row in metric_writers.read_metrics(str(tmp_path))] == [1, 2]


# TensorFlow's C++ log lines: a severity letter and the date, e.g. "I0000 00:00:1795996997.09 ...".
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} |All log messages before absl::InitializeLog", re.MULTILINE)


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.e2e
def test_start_up_noise_is_silenced_unless_verbose(verbose):
    command = [
        sys.executable,
        "-m",
        "t5pod",
        "data",
        "--task=demo_span_corruption",
        "--num_examples=1",
        "--features=model",  # packed: seqio notes the features packing drops
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        *(["--verbose"] if verbose else []),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(command, capture_output=True, text=True, env=dict(env, XLA_FLAGS=""), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"encoder_input_tokens"' in done.stdout
    assert bool(TF_LOG_LINE.search(done.stderr)) == verbose, done.stderr[-2000:]
    assert "will be removed during packing" not in done.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_cache_tasks_prints_no_beam_start_up_notes(tmp_path):
    from helpers import run_cli

    done = run_cli(
        "cache-tasks", "--gin_file=demo.gin", "--tasks=demo_span_corruption", f"--output_cache_dir={tmp_path}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Cached {tmp_path / 'demo_span_corruption'}" in done.stdout
    assert "WARNING" not in done.stderr, done.stderr[-2000:]


def test_inference_eval_files_go_to_a_bucket_too():
    from t5pod import evaluation, infer_io

    out = "ram://t5pod-tests/eval_run"
    for step, accuracy in ((2, 50.0), (4, 75.0), (4, 70.0)):  # step 4 evaluated twice: a second file
        evaluation.write_inference_eval(
            out,
            "glue_sst2_v002",
            step,
            {"accuracy": accuracy},
            [{"inputs": "x", "targets": "positive", "prediction": "negative"}],
        )
    folder = f"{out}/inference_eval"
    assert sorted(os.path.basename(p) for p in metric_writers.tf.io.gfile.glob(f"{folder}/*")) == [
        "glue_sst2_v002-2.jsonl",
        "glue_sst2_v002-4.1.jsonl",
        "glue_sst2_v002-4.jsonl",
        "glue_sst2_v002-metrics.jsonl",
    ]
    assert evaluation.best_steps(out, ["glue_sst2_v002"]) == {"glue_sst2_v002": (4, "accuracy", 75.0)}
    infer_io.append_jsonl(f"{out}/eval_metrics.jsonl", [{"step": 2}])
    infer_io.append_jsonl(f"{out}/eval_metrics.jsonl", [{"step": 4}])
    assert metric_writers.tf.io.gfile.GFile(f"{out}/eval_metrics.jsonl").read() == '{"step": 2}\n{"step": 4}\n'


@pytest.mark.e2e
def test_a_runs_folder_in_the_working_directory_does_not_hide_the_shipped_gin_files(tmp_path):
    """gin also looks `runs/pretrain.gin` up as a resource of a package `runs`; a plain `runs/`
    folder where the command starts would make that lookup crash (a TypeError inside gin), which is
    why ginconf takes gin's package-resource reader out."""
    from helpers import run_cli

    (tmp_path / "runs").mkdir()
    done = run_cli(
        "plan",
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/tiny.gin",
        "--gin.BATCH_SIZE=2",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parameters" in done.stdout
