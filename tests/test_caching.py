"""seqio caches built by `t5pod cache-tasks` on Beam's DirectRunner, and training from them."""

import glob
import json
import os

import pytest
import seqio
import tensorflow as tf

from helpers import train_config
from t5pod import tasks
from t5pod import cli, trainer
from t5pod.configs import T5Config
from t5pod.data import demo_corpus, text_sources

MODEL = T5Config(
    vocab_size=2176,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.1,
)


def _cli(capsys, *args) -> tuple[int, str, str]:
    """The command in this process (the README test runs it as its own process)."""
    capsys.readouterr()
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def _train_config(model_dir, steps):
    return train_config(
        model_dir,
        mixture_or_task_name="text_span_corruption",
        task_feature_lengths={"inputs": 64, "targets": 16},
        train_steps=steps,
        use_cached=True,
    )


def _losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


@pytest.mark.slow
def test_cache_tasks_then_train_from_the_cache_and_resume(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(demo_corpus.corpus_path(), encoding="utf-8") as f:
        lines = [line.strip() for line, _ in zip(f, range(400)) if line.strip()]
    for i in range(2):
        (corpus / f"part-{i}.txt").write_text("\n".join(lines[i::2]) + "\n")
    settings = [f"--gin.TEXT_FILE_PATTERN='{corpus}/*.txt'", "--gin.VOCABULARY_PATH='demo'"]
    status, out, err = _cli(
        capsys,
        "cache-tasks",
        "--tasks=text_span_corruption",
        f"--output_cache_dir={tmp_path / 'cache'}",
        "--direct_num_workers=1",
        *settings,
    )
    assert status == 0, err[-3000:]
    assert f"Cached {tmp_path / 'cache' / 'text_span_corruption'}" in out
    folder = tmp_path / "cache" / "text_span_corruption"
    assert sorted(p.name for p in folder.iterdir()) == [
        "COMPLETED",
        "info.train.json",
        "info.validation.json",
        "stats.train.json",
        "stats.validation.json",
        "train.tfrecord-00000-of-00002",
        "train.tfrecord-00001-of-00002",
        "validation.tfrecord-00000-of-00002",
        "validation.tfrecord-00001-of-00002",
    ]

    # The cache holds each train document tokenized once (order aside), read here without seqio;
    # tokenized as seqio's tokenize does (TF's SentencePiece op; the Python one differs on a few lines).
    vocabulary = demo_corpus.vocabulary()
    train_docs = [d for d in lines if not bool(text_sources.held_out(tf.constant(d), 0.01))]
    records = tf.data.TFRecordDataset(sorted(glob.glob(str(folder / "train.tfrecord-*"))))
    cached = [
        tuple(tf.io.parse_single_example(r, {"targets": tf.io.VarLenFeature(tf.int64)})["targets"].values.numpy())
        for r in records
    ]
    assert sorted(cached) == sorted(tuple(vocabulary.encode_tf(d).numpy()) for d in train_docs)
    assert json.loads((folder / "stats.train.json").read_text())["examples"] == len(train_docs)

    status, _, err = _cli(
        capsys, "cache-tasks", "--tasks=text_span_corruption", f"--output_cache_dir={tmp_path / 'cache'}", *settings
    )
    assert status == 2 and "already holds a complete cache" in err
    for path in corpus.iterdir():  # from here on only the cache can feed the task
        path.unlink()
    status, out, err = _cli(
        capsys,
        "data",
        "--task=text_span_corruption",
        "--num_examples=1",
        "--gin.USE_CACHED_TASKS=True",
        f"--seqio_additional_cache_dirs={tmp_path / 'cache'}",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
        *settings,
    )
    assert status == 0, err[-2000:]
    example = json.loads(out.strip().splitlines()[-1])
    assert example["inputs"]["ids"] and example["targets"]["ids"]

    # Training from the cache (the corpus is gone): the same cached data read again gives the same
    # run, and a run cut at step 2 resumes onto the uninterrupted one.
    tasks.register_all(vocabulary_path="demo", text_file_pattern=f"{corpus}/*.txt")
    seqio.set_global_cache_dirs([str(tmp_path / "cache")])
    try:
        trainer.train(_train_config(tmp_path / "straight", 4), MODEL)
        trainer.train(_train_config(tmp_path / "cut", 2), MODEL)
        trainer.train(_train_config(tmp_path / "cut", 4), MODEL)
    finally:
        seqio.set_global_cache_dirs([])
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "cut")
    assert sorted(straight) == [1, 2, 3, 4] and len(set(straight.values())) == 4
    assert resumed == straight
