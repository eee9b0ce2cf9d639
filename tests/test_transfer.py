"""The study's transfer measurements: small-data subsets, checkpoint choice on held-out data,
Welch intervals, linear probes (features, fits, the `probe` command)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import BENCHMARK_ROWS, REPO
from t5pod import inference, models, probe
from t5pod.configs import InferConfig, T5Config
from t5pod.tasks import transfer


def _study_transfer():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("study_transfer", REPO / "scripts" / "study_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_subsets_are_disjoint_nested_and_fixed():
    rows = [{"idx": i} for i in range(5000)]
    one = transfer.split_rows(rows, 1000, 1000)
    four = transfer.split_rows(rows, 4000, 1000)
    rest = transfer.split_rows(rows, None, 500)
    held = {r["idx"] for r in one["validation"]}
    assert len(one["train"]) == 1000 and len(held) == 1000 and len(four["train"]) == 4000
    assert not held & {r["idx"] for r in four["train"]}  # never trained on what chooses the checkpoint
    assert {r["idx"] for r in one["train"]} < {r["idx"] for r in four["train"]}  # 1k within 4k
    assert four["validation"] == one["validation"]
    assert len(rest["train"]) == 4500 and len(rest["validation"]) == 500
    assert transfer.split_rows(rows, 1000, 1000) == one  # the same subset on every call
    assert {r["idx"] for r in one["train"]} != set(range(1000, 2000))  # shuffled, not the file's order
    with pytest.raises(ValueError, match="has 5000 examples; the subset needs 5001"):
        transfer.split_rows(rows, 4001, 1000)
    with pytest.raises(ValueError, match="positive sizes"):
        transfer.split_rows(rows, 0, 10)


def test_sst2_1k_task_on_the_real_training_file(shared_data):
    import seqio

    from t5pod import tasks

    tasks.register_all("demo", glue_dir=str(shared_data / "glue"))
    lengths = {"inputs": 128, "targets": 8}
    task = seqio.get_mixture_or_task("glue_sst2_1k_v002")
    train = list(task.get_dataset(lengths, split="train", shuffle=False).as_numpy_iterator())
    held = list(task.get_dataset(lengths, split="validation", shuffle=False).as_numpy_iterator())
    assert len(train) == 1000 and len(held) == 1000
    assert not {x["inputs_pretokenized"] for x in train} & {x["inputs_pretokenized"] for x in held}
    assert all(x["inputs_pretokenized"].startswith(b"sst2 sentence: ") for x in train)
    assert {x["targets_pretokenized"] for x in train} == {b"positive", b"negative"}
    mixture = seqio.get_mixture_or_task("glue_sst2_1k_with_dev")
    assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {"glue_sst2_1k_v002": 1.0, "glue_sst2_v002": 0.0}


def _write_metrics(folder, task, lines):
    os.makedirs(folder / "inference_eval", exist_ok=True)
    (folder / "inference_eval" / f"{task}-metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_the_checkpoint_is_chosen_on_held_out_data_never_on_dev(tmp_path):
    module = _study_transfer()
    _write_metrics(
        tmp_path,
        "glue_sst2_1k_v002",
        [
            {"step": 10, "accuracy": 70.0},
            {"step": 20, "accuracy": 80.0},
            {"step": 30, "accuracy": 80.0},
            {"step": 40, "accuracy": 75.0},
        ],
    )
    _write_metrics(
        tmp_path,
        "glue_sst2_v002",
        [
            {"step": 10, "accuracy": 60.0},
            {"step": 20, "accuracy": 65.0},
            {"step": 30, "accuracy": 90.0},
            {"step": 40, "accuracy": 70.0},
        ],
    )
    chosen = module.select(str(tmp_path), "sst2_1k")
    # Held-out ties at 20 and 30 go to the earlier; dev's own best (90 at step 30) is not taken.
    assert chosen == {
        "step": 20,
        "heldout": 80.0,
        "dev": 65.0,
        "last_step": 40,
        "dev_at_last_step": 70.0,
        "dev_best_any_step": 90.0,
    }
    # STS-B reports Pearson; a constant prediction (NaN correlation) counts as 0, not as the best.
    _write_metrics(
        tmp_path,
        "glue_stsb_heldout_v002",
        [{"step": 5, "pearson_corrcoef": float("nan")}, {"step": 10, "pearson_corrcoef": 12.0}],
    )
    _write_metrics(
        tmp_path,
        "glue_stsb_v002",
        [
            {"step": 5, "pearson_corrcoef": 1.0, "spearman_corrcoef": 50.0},
            {"step": 10, "pearson_corrcoef": 11.0, "spearman_corrcoef": 9.0},
        ],
    )
    assert module.select(str(tmp_path), "stsb")["dev"] == 11.0


def test_welch_interval_matches_scipy_and_a_hand_computation():
    module = _study_transfer()
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]
    difference, low, high = module.welch_interval(a, b)
    # By hand: difference 5/3; variances of the means 1/3 and 1/9, so se = 2/3; Welch's df = 3.2.
    half = stats.t.ppf(0.975, 3.2) * 2 / 3
    assert (difference, low, high) == pytest.approx((5 / 3, 5 / 3 - half, 5 / 3 + half))
    pretrained, random = [81.2, 79.5, 80.4, 82.0, 78.9], [70.1, 74.3, 69.8, 72.5, 71.0]
    interval = stats.ttest_ind(pretrained, random, equal_var=False).confidence_interval(0.95)
    assert module.welch_interval(pretrained, random)[1:] == pytest.approx((interval.low, interval.high))
    row = module.comparison("sst2_1k", 1, "finetune", pretrained, random)
    assert row["difference"] == pytest.approx(np.mean(pretrained) - np.mean(random))
    assert row["ci95"] == pytest.approx([interval.low, interval.high])
    with pytest.raises(ValueError, match="at least two scores"):
        module.welch_interval([1.0], [1.0, 2.0])
    # One fine-tuning seed on a side: no interval yet. A checkpoint's probe is one deterministic score:
    # its interval is the random side's alone (sd 1 over 3 seeds: t(0.975, 2) / sqrt(3) = 2.48).
    assert "ci95" not in module.comparison("stsb", 1, "finetune", [10.0], [1.0, 2.0])
    probed = module.comparison("sst2_4k", 1, "probe", [65.0], [50.0, 51.0, 52.0])
    assert probed["difference"] == 14.0 and probed["ci95"] == pytest.approx([14 - 2.4841, 14 + 2.4841], abs=1e-3)


def test_linear_fits_score_signal_and_no_signal():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(600, 16))
    labels = (x[:, 3] > 0).astype(float)
    score, strength = probe.fit_and_score("classification", x[:400], labels[:400], x[400:], labels[400:])
    assert score >= 95 and strength in probe.REGULARISATION_GRID
    noise = rng.randint(0, 2, size=600).astype(float)
    score, _ = probe.fit_and_score("classification", x[:400], noise[:400], x[400:], noise[400:])
    assert 35 <= score <= 65  # chance: 200 examples, about 3.5 points of standard error
    target = 2 * x[:, 0] - x[:, 5] + 0.1 * rng.normal(size=600)
    score, _ = probe.fit_and_score("regression", x[:400], target[:400], x[400:], target[400:])
    assert score == pytest.approx(100 * np.corrcoef(2 * x[400:, 0] - x[400:, 5], target[400:])[0, 1], abs=1.0)
    assert probe.fit_and_score("regression", np.zeros((50, 4)), target[:50], np.zeros((20, 4)), target[:20])[0] == 0.0


def test_pooled_features_are_the_mean_over_each_rows_tokens():
    config = T5Config(vocab_size=64, d_model=16, d_ff=32, num_heads=2, d_kv=8, num_layers=2, num_decoder_layers=1)
    infer = InferConfig(checkpoint_path="", task_feature_lengths={"inputs": 12, "targets": 4}, batch_size=4)
    layout = inference.mesh_layout(
        config, jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(4, 1), ("data", "model")), False
    )
    params = probe.random_params(config, layout, seed=3)
    predictor = inference.Predictor(config, infer, None, mesh=layout.mesh, params=params)
    rows = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31], [40, 41, 42, 43, 44]]
    features = predictor.encode_ids(rows)
    assert features.shape == (5, 16)
    model = models.build(config)
    host_params = jax.device_get(params)
    for row, pooled in zip(rows, features):
        tokens = jnp.array([row + [1]])  # the EOS the predictor closes every row with; no padding
        encoded = np.asarray(model.apply({"params": host_params}, tokens, method=model.encode))[0]
        np.testing.assert_allclose(pooled, encoded.mean(axis=0), rtol=1e-4, atol=1e-5)
    # The embeddings probe reads the table alone: each row's mean of its tokens' rows (EOS is id 1).
    table = np.asarray(host_params["token_embedder"]["embedding"])
    embedded = predictor.encode_ids(rows, features="embeddings")
    for row, pooled in zip(rows, embedded):
        np.testing.assert_allclose(pooled, table[row + [1]].mean(axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="encoder.*embeddings.*not 'decoder'"):
        predictor.encode_ids(rows, features="decoder")


def _probe(*flags):
    command = [
        sys.executable,
        "-m",
        "t5pod",
        "probe",
        "--gin_file=models/tiny.gin",
        "--gin.VOCABULARY_PATH='demo'",
        f"--gin.GLUE_DIR='{BENCHMARK_ROWS / 'glue'}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
        *flags,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=""), timeout=600, cwd=REPO
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_probe_command_on_a_checkpoint(tmp_path, pretrained_demo_run):
    out = tmp_path / "probes.jsonl"
    checkpoint = pretrained_demo_run / "checkpoints" / "2"
    done = _probe(
        "--task=glue_stsb_v002", f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--output_file={out}", "--gin_file=demo.gin"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["kind"] == "regression" and row["checkpoint"] == str(checkpoint) and row["random_init_seed"] is None
    assert row["train_examples"] == 24 and row["eval_examples"] == 24 and -100 <= row["score"] <= 100


@pytest.mark.slow
@pytest.mark.e2e
def test_probe_command_on_random_weights(tmp_path):
    out = tmp_path / "probes.jsonl"
    done = _probe("--task=glue_sst2_v002", "--random_init_seed=0", f"--output_file={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["task"] == "glue_sst2_v002" and row["kind"] == "classification" and row["random_init_seed"] == 0
    assert row["train_examples"] == 24 and row["eval_examples"] == 24 and row["checkpoint"] is None
    assert 0 <= row["score"] <= 100 and math.isclose(row["score"] * 24 / 100, round(row["score"] * 24 / 100))
    assert row["features"] == "encoder"
    assert json.loads(done.stdout.strip().splitlines()[-1]) == row
    assert "FutureWarning" not in done.stderr
    both = _probe("--task=glue_sst2_v002", "--random_init_seed=0", "--gin.CHECKPOINT_PATH='/tmp/run'")
    assert both.returncode == 2 and "CHECKPOINT_PATH or --random_init_seed, not both" in both.stderr
    wrong = _probe("--task=super_glue_record_v102", "--random_init_seed=0")
    assert wrong.returncode == 2 and "classification task or STS-B" in wrong.stderr
