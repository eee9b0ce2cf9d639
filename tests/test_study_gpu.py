"""The gpu preset's bundle route (scripts/study_gpu*.py): the runner's numpy
corruption and packing against the objectives' TensorFlow code and hand-worked rows, and pack ->
run -> score at toy scale, with scores checked on predictions whose answers are known."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)
import study_gpu  # noqa: E402
import study_gpu_data  # noqa: E402
import study_gpu_run  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
GLUE_DIR = os.path.join(SHARED, "glue")
BOOKS = os.path.join(SHARED, "pretrain", "gutenberg")


def test_replace_spans_by_hand():
    tokens = np.array([[5, 6, 7, 8, 9]])
    noise = np.array([[False, True, True, False, True]])
    # Each noise run becomes one sentinel counting down from the base; EOS (1) after, then padding.
    assert study_gpu_data.replace_spans(tokens, noise, 100, 8).tolist() == [[5, 99, 8, 98, 1, 0, 0, 0]]
    assert study_gpu_data.replace_spans(tokens, ~noise, 100, 8).tolist() == [[99, 6, 7, 98, 9, 1, 0, 0]]
    # Too long for the length: cut to length - 1 tokens, EOS last.
    assert study_gpu_data.replace_spans(tokens, ~noise, 100, 4).tolist() == [[99, 6, 7, 1]]


def test_replace_spans_matches_the_objectives_tensorflow_code():
    tf = pytest.importorskip("tensorflow")
    from t5pod.data import objectives

    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 1000, size=(12, 50)).astype(np.int32)
    noise = rng.random(tokens.shape) < 0.3
    ours = study_gpu_data.replace_spans(tokens, noise, 1100, 64)
    for row in range(len(tokens)):
        expected = objectives.replace_spans_with_sentinels(tf.constant(tokens[row]), tf.constant(noise[row]), 1100)
        expected = expected.numpy().tolist() + [1]
        assert ours[row, : len(expected)].tolist() == expected
        assert not ours[row, len(expected) :].any()


def _reconstruct(inputs: list, targets: list, first_sentinel: int) -> list:
    """The raw row again: each sentinel of the inputs replaced by the next run of noise tokens in
    the targets (whose own sentinels stand for the kept runs)."""
    runs, current = [], []
    for t in targets[: targets.index(1)]:
        if t >= first_sentinel:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(t)
    if current:
        runs.append(current)
    out, runs = [], iter(runs)
    for t in inputs[: inputs.index(1)]:
        out += next(runs) if t >= first_sentinel else [t]
    return out


def test_iid_denoising_batches_keep_every_token_and_corrupt_fifteen_percent():
    rng = np.random.default_rng(1)
    documents = [rng.integers(2, 900, size=n).astype(np.int32) for n in rng.integers(5, 80, size=400)]
    stream = set(np.concatenate(documents).tolist())
    batches = study_gpu_data.iid_denoising_batches(
        documents, batch=16, lengths={"inputs": 65, "targets": 40}, sentinel_base=1000, seed=3
    )
    noise, total = 0, 0
    for _ in range(10):
        batch = next(batches)
        assert batch["decoder_input_tokens"][:, 1:].tolist() == batch["decoder_target_tokens"][:, :-1].tolist()
        for inputs, targets in zip(batch["encoder_input_tokens"].tolist(), batch["decoder_target_tokens"].tolist()):
            raw = _reconstruct(inputs, targets, 900)
            assert len(raw) == 64 and set(raw) <= stream  # 64 raw tokens a row, all from the documents
            noise += sum(1 for t in targets[: targets.index(1)] if t < 900)
            total += len(raw)
    assert abs(noise / total - 0.15) < 0.02  # 10,240 tokens: the standard error is 0.0035


def test_packing_by_hand():
    examples = [([3, 4], [7]), ([5], [8, 9]), ([6, 6, 6], [2])]
    rows = study_gpu_data.pack(examples, {"inputs": 6, "targets": 6})
    assert [len(r) for r in rows] == [2, 1]  # the third example's 4 input tokens overflow row one
    features = study_gpu_data.packed_features(rows, {"inputs": 6, "targets": 6})
    assert features["encoder_input_tokens"][0].tolist() == [3, 4, 1, 5, 1, 0]
    assert features["encoder_segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 0]
    assert features["encoder_positions"][0].tolist() == [0, 1, 2, 0, 1, 0]
    assert features["decoder_target_tokens"][0].tolist() == [7, 1, 8, 9, 1, 0]
    assert features["decoder_input_tokens"][0].tolist() == [0, 7, 0, 8, 9, 0]  # shifted within segments
    assert features["decoder_segment_ids"][0].tolist() == [1, 1, 2, 2, 2, 0]
    assert features["decoder_positions"][0].tolist() == [0, 1, 0, 1, 2, 0]
    assert features["decoder_loss_weights"][0].tolist() == [1, 1, 1, 1, 1, 0]
    assert features["encoder_input_tokens"][1].tolist() == [6, 6, 6, 1, 0, 0]


def test_encoder_start_takes_the_decoder_from_the_fresh_parameters():
    pretrained = {"encoder": {"w": 1}, "decoder": {"layer": {"w": 2}}, "token_embedder": {"embedding": 3}}
    fresh = {"encoder": {"w": 10}, "decoder": {"layer": {"w": 20}}, "token_embedder": {"embedding": 30}}
    merged = study_gpu_run.merge_fresh_decoder(pretrained, fresh)
    assert merged == {"encoder": {"w": 1}, "decoder": {"layer": {"w": 20}}, "token_embedder": {"embedding": 3}}


def test_the_runners_model_is_the_gpu_presets():
    """The runner cannot read gin (the GPU machine has none): its model must equal what the gpu
    preset's gin file and settings give."""
    from t5pod import ginconf
    from t5pod.configs import T5Config

    sys.path.insert(0, SCRIPTS)
    import study

    preset = study.PRESETS["gpu"]
    ginconf.parse(list(preset.model_gin), [f"t5pod.T5Config.vocab_size={preset.vocab_size}"])
    expected = dataclasses.replace(ginconf.model_config(platform="gpu"), dropout_rate=preset.pretrain_dropout)
    assert T5Config(**study_gpu_run.GPU_MODEL, dtype=preset.pretrain_settings["t5pod.T5Config.dtype"]) == expected


def test_saved_pretrained_parameters_load_back_and_another_models_are_refused(tmp_path):
    import argparse

    import jax

    runner = study_gpu_run.Runner(study_gpu_run.TOY_MODEL, "float32")
    params = runner.init(jax.random.PRNGKey(7))
    study = study_gpu_run.Study(argparse.Namespace(out=str(tmp_path / "out")), bundle={})
    study.results["stages"]["pretrain"] = {"steps": 3, "flops": 1e9}
    path = str(tmp_path / "params.npz")
    study_gpu_run.save_params(study, params, path)
    again = study_gpu_run.Study(argparse.Namespace(out=str(tmp_path / "again")), bundle={})
    loaded = study_gpu_run.load_params(again, runner, path)
    assert again.results["stages"]["pretrain"]["steps"] == 3
    pairs = zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves_with_path(loaded))
    for (path_a, a), (path_b, b) in pairs:
        assert path_a == path_b and np.array_equal(np.asarray(a), np.asarray(b))
    wider = study_gpu_run.Runner(dict(study_gpu_run.TOY_MODEL, d_model=48), "float32")
    with pytest.raises(SystemExit, match="does not hold this model's parameters"):
        study_gpu_run.load_params(again, wider, path)


def test_runner_refuses_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study_gpu_run.main(["--bundle", str(tmp_path / "none.npz"), "--out", str(tmp_path), "--seeds", "0"])
    assert "--seeds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_gpu_run.main(["--bundle", str(tmp_path / "none.npz"), "--out", str(tmp_path)])
    assert "study_gpu.py pack" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(GLUE_DIR) or not os.path.isdir(BOOKS), reason="needs ../shared/data")
def test_pack_run_and_score_at_toy_scale(tmp_path):
    from t5pod.data import demo_corpus

    book = sorted(os.listdir(BOOKS))[0]
    with open(os.path.join(BOOKS, book), encoding="utf-8") as f:
        (tmp_path / "book.txt").write_text(f.read()[:60_000], encoding="utf-8")
    vocabulary = demo_corpus.vocabulary_path()
    bundle = str(tmp_path / "bundle.npz")
    common = [f"--vocabulary={vocabulary}", f"--glue_dir={GLUE_DIR}", f"--bundle={bundle}"]
    study_gpu.main(["pack", *common, f"--text_file_pattern={tmp_path / 'book.txt'}"])
    arrays = np.load(bundle)
    assert len(arrays["sst2_1k_train_labels"]) == 1000 and len(arrays["sst2_1k_heldout_labels"]) == 1000
    assert len(arrays["stsb_train_labels"]) == 5249 and len(arrays["stsb_dev_labels"]) == 1500
    assert set(arrays["sst2_1k_dev_labels"].tolist()) == {0.0, 1.0} and int(arrays["sentinel_base"]) == 2100

    # The runner imports neither TensorFlow nor seqio: it runs where they are not installed.
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(SCRIPTS, "study_gpu_run.py"), f"--bundle={bundle}", f"--out={out}"]
    command += ["--model=toy", "--pretrain_steps=30", "--log_period=10", "--pretrain_batch=8", "--inputs_length=64"]
    command += ["--targets_length=32", "--warmup_steps=10", "--finetune_scale_down=160", "--seeds=2"]
    command += ["--probe_seeds=2", "--probe_workers=1", "--tasks=sst2_1k"]
    guard = "import sys; sys.modules['tensorflow'] = sys.modules['seqio'] = None; import runpy; "
    guard += f"sys.argv = {command[1:]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    subprocess.run([sys.executable, "-c", guard], check=True, timeout=900)
    results = json.loads((out / "results.json").read_text())
    curve = results["stages"]["pretrain"]["curve"]
    assert [c["step"] for c in curve] == [10, 20, 30] and curve[-1]["loss"] < curve[0]["loss"]
    assert {(r["start"], r["seed"]) for r in results["runs"]} == {
        (s, seed) for s in study_gpu_run.STARTS for seed in (0, 1)
    }
    assert len(results["probes"]) == 3 * 3  # the pre-trained model and two random ones, three probes each

    # Score predictions whose answers are known: the pre-trained start answers every held-out and
    # dev example right, random weights answer every one with the other class.
    predictions = dict(np.load(out / "predictions.npz"))
    positive, negative = (
        [int(t) for t in arrays["sst2_1k_train_targets_flat"][a:b]]
        for a, b in (_first_target(arrays, 1.0), _first_target(arrays, 0.0))
    )
    for key in predictions:
        _, start, _, _, which = key.split("/")
        right = start != "random"
        answers = [positive if (label == 1.0) == right else negative for label in arrays[f"sst2_1k_{which}_labels"]]
        predictions[key] = np.array([(ids + [1] + [0] * 8)[:8] for ids in answers], np.uint16)
    np.savez(out / "predictions.npz", **predictions)
    assert (
        study_gpu.main(["score", *common, f"--results={out}", f"--out={tmp_path / 'study'}", "--preset_steps=60"]) == 0
    )
    transfer = json.loads((tmp_path / "study" / "gpu" / "transfer.json").read_text())
    finetune = {r["method"]: r for r in transfer if r["task"] == "sst2_1k" and r["method"].startswith("finetune")}
    assert finetune["finetune"]["pretrained"] == [100.0, 100.0] and finetune["finetune"]["random"] == [0.0, 0.0]
    assert finetune["finetune"]["difference"] == 100.0 and finetune["finetune"]["compute"] == 0.5
    assert finetune["finetune_encoder"]["pretrained"] == [100.0, 100.0]
    probes = [r for r in transfer if r["method"] == "probe"]
    assert {r["task"] for r in probes} == {"sst2_1k", "sst2_4k", "stsb"}
    assert all(len(r["random"]) == 2 and len(r["pretrained"]) == 1 for r in probes)


def _first_target(arrays, label: float) -> tuple[int, int]:
    """Offsets of the first SST-2 training target whose label is `label`."""
    row = int(np.argmax(arrays["sst2_1k_train_labels"] == label))
    offsets = arrays["sst2_1k_train_targets_offsets"]
    return int(offsets[row]), int(offsets[row + 1])
