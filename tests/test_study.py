"""scripts/study.py end to end at a toy scale: pre-training, fine-tuning, the table, resume."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from conftest import BENCHMARK_ROWS, REPO
from t5pod.data import demo_corpus


def _study(tmp_path, *flags):
    """`make study` with the committed benchmark rows, a toy scale and one seed."""
    toy = ["--rows=baseline", "--seeds=0", "--scale_down=1000", f"--out={tmp_path / 'study'}",
           "--vocab_pieces=400", *flags]
    command = ["make", "-s", "--no-print-directory", "study", f"GLUE_DIR={BENCHMARK_ROWS / 'glue'}",
               f"SUPERGLUE_DIR={tmp_path / 'superglue'}", f"STUDY_TEXT={tmp_path / 'books' / '*.txt'}",
               "STUDY_ARGS=" + " ".join(toy)]
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=""), timeout=900,
                          cwd=REPO)


def _mean_without_nan(metrics_line: dict) -> float:
    values = [v for k, v in metrics_line.items() if k not in ("step", "examples")]
    return sum(0.0 if v != v else v for v in values) / len(values)  # NaN (no correlation) counts 0


@pytest.mark.slow
def test_study_runs_rows_tabulates_and_skips_finished_runs(tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(open(demo_corpus.corpus_path(), encoding="utf-8").read()[:300_000])
    shutil.copytree(BENCHMARK_ROWS / "superglue", tmp_path / "superglue")
    # The committed rows have no SuperGLUE RTE training file; its validation rows stand in.
    shutil.copy(tmp_path / "superglue" / "RTE" / "val.jsonl", tmp_path / "superglue" / "RTE" / "train.jsonl")
    done = _study(tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    folder = tmp_path / "study" / "cpu"
    results = json.loads((folder / "results.json").read_text())
    assert list(results["rows"]) == ["baseline"]
    # pre-training 4500 / 1000 -> 4 steps; fine-tuning 2000 / 1000 -> 2 steps, evaluated at steps 1 and 2.
    expected_tasks = {"glue_cola_v002", "glue_sst2_v002", "glue_mrpc_v002", "glue_stsb_v002", "glue_rte_v002",
                      "super_glue_cb_v102", "super_glue_rte_v102", "super_glue_wsc_v102_simple_eval"}
    for name, row in results["rows"].items():
        (run,) = row["seeds"]
        assert set(run["tasks"]) == expected_tasks and all(t["step"] in (1, 2) for t in run["tasks"].values())
        glue = [run["tasks"][t]["score"] for t in expected_tasks if t.startswith("glue")]
        assert run["glue_average"] == pytest.approx(sum(glue) / 5)
        assert row["glue_average"]["mean"] == pytest.approx(run["glue_average"]) and row["glue_average"]["spread"] == 0
        # A task's score is the mean of its metrics, as in the paper's averages.
        mrpc = run["tasks"]["glue_mrpc_v002"]
        assert mrpc["score"] == pytest.approx((mrpc["metrics"]["f1"] + mrpc["metrics"]["accuracy"]) / 2)
        # Each task reports its best evaluation, as in the paper: read both evaluations back here.
        evaluations = folder / "runs" / f"finetune_{name}_glue_super_glue_small_proportional_seed0" / "inference_eval"
        for task, best in run["tasks"].items():
            lines = [json.loads(line) for line in (evaluations / f"{task}-metrics.jsonl").read_text().splitlines()]
            assert [line["step"] for line in lines] == [1, 2]
            scores = {line["step"]: _mean_without_nan(line) for line in lines}
            assert best["score"] == pytest.approx(max(scores.values()))
            assert scores[best["step"]] == pytest.approx(best["score"])
    assert results["rows"]["baseline"]["paper_glue_average"] == 83.28
    assert (folder / "runs" / "pretrain_iid_denoising" / "checkpoints" / "4").is_dir()
    table = (folder / "results.md").read_text().splitlines()
    assert table[0].startswith("| row | GLUE avg | paper GLUE | SuperGLUE avg | paper SuperGLUE | cola |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| baseline"]

    again = _study(tmp_path)  # everything finished: nothing runs, the same results
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 2
    assert "absl::InitializeLog" not in again.stderr  # TensorFlow's start-up lines stay silent
    assert json.loads((folder / "results.json").read_text()) == results

    # The paper's commands, for a slice: no pre-training for that row, one shared by the others.
    printed = _study(tmp_path, "--preset=paper", "--print_commands", "--rows=baseline,no_pretraining,span_corruption")
    assert printed.returncode == 0, printed.stderr[-3000:]
    commands = printed.stdout.strip().splitlines()
    assert len(commands) == 2 + 3 * 2  # two pre-trainings; three rows x (GLUE, SuperGLUE) fine-tuning
    assert commands[0].startswith("python -m t5pod train --gin_file=runs/pretrain.gin --gin_file=models/t5_1_0/base.gin")
    assert "--gin.TRAIN_STEPS=262" in commands[0] and "c4_v220_iid_denoising" in commands[0]
    assert "--gin.INITIAL_CHECKPOINT_PATH=None" in commands[3] and "--gin.INITIAL_CHECKPOINT_PATH=None" in commands[4]
    assert "c4_v220_span_corruption" in commands[5]


def test_a_run_that_stops_early_stops_the_study(tmp_path):
    # A preempted `t5pod train` saves its checkpoint and exits 0; the fine-tunings after a
    # pre-training must not start from its unfinished checkpoint.
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    runner = study.Study("cpu", str(tmp_path), types.SimpleNamespace(print_commands=False))
    os.makedirs(runner.folder)
    with pytest.raises(SystemExit, match="pre-training x stopped at step 0 of 5 .* Run the same command again"):
        runner._run([sys.executable, "-c", "pass"], str(tmp_path / "run"), 5, "pre-training x")


def _study_with_fake_runs(monkeypatch, stop_row=None):
    """scripts/study.py whose runs are faked: CoLA scores 40 and 30 (seeds 0, 1) for every row, CB 60."""
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    from t5pod import cli
    monkeypatch.setattr(cli, "import_tensorflow_quietly", lambda: None)
    monkeypatch.setattr(study.Study, "pretrain", lambda self, objective: f"pretrain_{objective}")

    def finetune(self, row, mixture, start, seed):
        if row == stop_row:
            raise SystemExit(f"[study] fine-tuning {row} stopped")
        return f"{row}_seed{seed}"

    monkeypatch.setattr(study.Study, "finetune", finetune)
    monkeypatch.setattr(study, "task_scores", lambda run: {
        "glue_cola_v002": {"step": 500, "score": 40.0 - 10 * run.endswith("1"), "metrics": {"mcc": 0.0}},
        "super_glue_cb_v102": {"step": 500, "score": 60.0, "metrics": {"accuracy": 70.0, "f1": 50.0}}})
    return study


def test_a_study_cut_short_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    study = _study_with_fake_runs(monkeypatch, stop_row="prefix_lm")
    with pytest.raises(SystemExit, match="prefix_lm stopped"):
        study.main(["--rows=baseline,prefix_lm", f"--out={tmp_path}", "--text_file_pattern=books/*.txt"])
    results = json.loads((tmp_path / "cpu" / "results.json").read_text())
    assert list(results["rows"]) == ["baseline"]
    assert results["rows"]["baseline"]["glue_average"] == {"mean": 35.0, "spread": 5.0, "runs": [40.0, 30.0]}
    table = (tmp_path / "cpu" / "results.md").read_text().splitlines()
    assert table[0].endswith("| cola | sg_cb |")
    assert table[2] == "| baseline | 35.0 ± 5.0 | 83.28 | 60.0 ± 0.0 | 71.36 | 35.0 ± 5.0 | 60.0 ± 0.0 |"
    assert sorted(os.listdir(tmp_path / "cpu")) == ["results.json", "results.md"]


def test_rows_run_one_at_a_time_share_the_table_unless_the_settings_differ(tmp_path, monkeypatch):
    study = _study_with_fake_runs(monkeypatch)
    for row in ("baseline", "prefix_lm"):
        study.main([f"--rows={row}", f"--out={tmp_path}", "--text_file_pattern=books/*.txt"])
    table = (tmp_path / "cpu" / "results.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| baseline", "| prefix_lm"]
    both = json.loads((tmp_path / "cpu" / "results.json").read_text())
    assert both["rows"]["prefix_lm"]["paper_glue_average"] == 80.69
    assert both["rows"]["baseline"]["glue_average"]["runs"] == [40.0, 30.0]

    # One seed is another study: its table does not mix with the two-seed rows, which are kept aside.
    study.main(["--rows=no_pretraining", "--seeds=0", f"--out={tmp_path}", "--text_file_pattern=books/*.txt"])
    one_seed = json.loads((tmp_path / "cpu" / "results.json").read_text())
    assert list(one_seed["rows"]) == ["no_pretraining"] and one_seed["preset_settings"]["seeds"] == [0]
    (aside,) = [name for name in os.listdir(tmp_path / "cpu") if name.startswith("results-") and name.endswith(".json")]
    assert json.loads((tmp_path / "cpu" / aside).read_text()) == both
    assert (tmp_path / "cpu" / aside.replace(".json", ".md")).read_text().splitlines() == table
