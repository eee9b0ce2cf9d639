"""Pretraining tasks, text sources, packing, shards and exact continuation of the stream."""

import gzip
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5pod import tasks
from t5pod.data import demo_corpus, pipeline, text_sources, vocabularies


@pytest.fixture(scope="module")
def demo_vocabulary():
    return demo_corpus.vocabulary()


def test_demo_corpus_is_large_english_and_needs_no_download():
    path = demo_corpus.corpus_path()
    text = open(path, encoding="utf-8").read()
    assert len(text.encode()) > 2_000_000
    words = text.lower().split()
    assert words.count("the") / len(words) > 0.03  # English prose, not code


def test_demo_vocabulary_follows_t5_conventions(demo_vocabulary):
    tokenizer = demo_vocabulary.tokenizer
    assert (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.unk_id(), tokenizer.bos_id()) == (0, 1, 2, -1)
    assert demo_vocabulary.vocab_size == demo_corpus.VOCAB_SIZE + 100
    # Sentinels count down from the last id, as in T5's vocabulary (<extra_id_0> = 32099 there).
    assert demo_vocabulary.encode("<extra_id_0>") == [demo_vocabulary.vocab_size - 1] == [2099]
    assert demo_vocabulary.decode([demo_vocabulary.vocab_size - 100]) == "<extra_id_99>"
    assert vocabularies.padded_vocab_size(demo_vocabulary) == 2176
    ids = demo_vocabulary.encode("Return the number of items in the list.")
    assert demo_vocabulary.decode(ids) == "Return the number of items in the list."


def _examples(name, split="train", n=4, lengths=None, **kwargs):
    lengths = lengths or {"inputs": 128, "targets": 32}
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(lengths, split=split, shuffle=False, seed=0, **kwargs)
    return [
        {k: v.tolist() for k, v in x.items() if not k.endswith("_pretokenized")} for x in ds.take(n).as_numpy_iterator()
    ]


def test_demo_span_corruption_examples(demo_vocabulary):
    tasks.register_all()
    examples = _examples("demo_span_corruption")
    assert len(examples) == 4
    for x in examples:
        assert len(x["inputs"]) == 128 and x["inputs"][-1] == 1  # 141 raw tokens -> 128 inputs
        assert len(x["targets"]) == 29 and x["targets"][0] == demo_vocabulary.vocab_size - 1
    validation = _examples("demo_span_corruption", split="validation", n=1)
    assert validation and validation[0]["inputs"] != examples[0]["inputs"]


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "jsonl", "jsonl.gz", "paragraphs", "tfrecord"])
def test_text_file_formats(tmp_path, fmt):
    docs = ["First document, one line.", "Second document\nwith two lines.", "Third one."]
    if fmt.startswith("txt"):
        docs = [d.replace("\n", " ") for d in docs]
        body = "\n".join(docs) + "\n\n"
    elif fmt.startswith("jsonl"):
        body = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
    elif fmt == "paragraphs":
        body = "\n\n".join(docs) + "\n"
    path = tmp_path / f"corpus.{fmt if fmt != 'paragraphs' else 'txt'}"
    if fmt == "tfrecord":
        with tf.io.TFRecordWriter(str(path)) as writer:
            for d in docs:
                feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[d.encode()]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    elif fmt.endswith(".gz"):
        path.write_bytes(gzip.compress(body.encode()))
    else:
        path.write_text(body)
    dataset = text_sources.text_dataset([str(path)], paragraphs=fmt == "paragraphs")
    assert [x["text"].decode() for x in dataset.as_numpy_iterator()] == docs


def test_text_file_errors(tmp_path):
    with pytest.raises(text_sources.TextFileError, match="matches no file"):
        text_sources.match_files(str(tmp_path / "*.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "wrong key"}\n')
    with pytest.raises(Exception, match="not a JSON object with a 'text' field"):
        list(text_sources.text_dataset([str(tmp_path / "bad.jsonl")]).as_numpy_iterator())
    (tmp_path / "empty.txt").write_text("\n\n")
    tasks.register_all(text_file_pattern=str(tmp_path / "empty.txt"))
    with pytest.raises(text_sources.TextFileError, match="corpus is empty"):
        _examples("text_span_corruption")


def _corpus(folder: pathlib.Path, files: int, docs_per_file: int = 5) -> list[str]:
    texts = []
    for f in range(files):
        docs = [f"Document {d} of file {f}, with some words." for d in range(docs_per_file)]
        (folder / f"part-{f}.txt").write_text("\n".join(docs) + "\n")
        texts += docs
    return texts


def _shard_in_processes(pattern: str, num_shards: int, folder: pathlib.Path) -> list[dict]:
    env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent))
    worker = str(pathlib.Path(__file__).parent / "helpers" / "text_shard_worker.py")
    runs = [
        subprocess.Popen(
            [sys.executable, worker, pattern, str(i), str(num_shards), str(folder / f"opened-{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(num_shards)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


@pytest.mark.e2e
def test_each_process_reads_only_its_own_files(tmp_path):
    """2 real processes over 4 files: each opens its 2 files, and together they get the
    single-process stream's documents, each once."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = _corpus(corpus, files=4)
    whole = text_sources.TextFileSource(str(corpus / "*.txt"), validation_fraction=0.01)
    train = [x["text"].decode() for x in whole.get_dataset("train", shuffle=False).as_numpy_iterator()]
    held = [t for t in texts if bool(text_sources.held_out(tf.constant(t), 0.01))]
    assert sorted(train) == sorted(set(texts) - set(held))
    first, second = _shard_in_processes(str(corpus / "*.txt"), 2, tmp_path)
    assert first["opened"] == [str(corpus / "part-0.txt"), str(corpus / "part-2.txt")]
    assert second["opened"] == [str(corpus / "part-1.txt"), str(corpus / "part-3.txt")]
    assert sorted(first["texts"] + second["texts"]) == sorted(train)
    assert all(" of file 0," in t or " of file 2," in t for t in first["texts"])


def test_fewer_files_than_processes_shards_examples_and_says_so(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = _corpus(corpus, files=1, docs_per_file=8)
    tasks.register_all(vocabulary_path="demo", text_file_pattern=str(corpus / "*.txt"))
    with caplog.at_level(logging.WARNING):
        for index in (0, 1):
            pipeline.get_dataset("text_span_corruption", {"inputs": 32, "targets": 8}, shard_index=index, num_shards=2)
    said = [r.getMessage() for r in caplog.records if "reads all of them" in r.getMessage()]
    assert said == [
        "text_span_corruption: 1 file(s) for 2 processes, so every process reads all of them and keeps "
        "1/2 of the examples. Split the data into at least 2 files for each process to read only its own."
    ]
    probe = seqio.Task(
        "text_probe",
        source=text_sources.TextFileSource(str(corpus / "*.txt")),
        preprocessors=[],
        output_features={"text": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string, rank=0)},
    )
    shards = [
        [
            x["text"].decode()
            for x in probe.get_dataset(
                None, "train", shuffle=False, shard_info=seqio.ShardInfo(i, 2)
            ).as_numpy_iterator()
        ]
        for i in (0, 1)
    ]
    held = {t for t in texts if bool(text_sources.held_out(tf.constant(t), 0.01))}
    assert shards[0] == [t for t in texts if t not in held][0::2]
    assert shards[1] == [t for t in texts if t not in held][1::2]


def test_text_validation_split_by_hash_or_by_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = _corpus(corpus, files=2, docs_per_file=20)

    def read(source, split):
        return [x["text"].decode() for x in source.get_dataset(split, shuffle=False).as_numpy_iterator()]

    halves = text_sources.TextFileSource(str(corpus / "*.txt"), validation_fraction=0.5)
    train, validation = read(halves, "train"), read(halves, "validation")
    assert train and validation and not set(train) & set(validation) and sorted(train + validation) == sorted(texts)
    # The hash is FarmHash's fingerprint: the same document is held out on every host and run.
    assert set(validation) == {t for t in texts if tf.strings.to_hash_bucket_fast(t, 1_000_000).numpy() < 500_000}
    by_file = text_sources.TextFileSource(str(corpus / "part-0.txt"), str(corpus / "part-1.txt"))
    assert read(by_file, "validation") == texts[20:] and read(by_file, "train") == texts[:20]
    with pytest.raises(text_sources.TextFileError, match="TEXT_VALIDATION_FRACTION is 0"):
        text_sources.TextFileSource(str(corpus / "*.txt"), validation_fraction=0)


@pytest.mark.e2e
def test_text_to_tfrecord_script_keeps_every_document(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [f'Document {i}, with "quotes" and a newline\nin it.' for i in range(7)]
    for f, part in enumerate((docs[:4], docs[4:])):
        (corpus / f"part-{f}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in part))
    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "text_to_tfrecord.py"
    command = [
        sys.executable,
        str(script),
        f"--input={corpus}/*.jsonl",
        f"--output_dir={tmp_path}/out",
        "--num_shards=3",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=""), timeout=120)
    assert done.returncode == 0, done.stderr
    shards = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in shards] == [f"text-0000{i}-of-00003.tfrecord" for i in range(3)]
    read = [[x["text"].decode() for x in text_sources.text_dataset([str(p)]).as_numpy_iterator()] for p in shards]
    assert read == [docs[0::3], docs[1::3], docs[2::3]]
    again = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=""), timeout=120)
    assert again.returncode == 2 and "already holds" in again.stderr
    assert sorted((tmp_path / "out").iterdir()) == shards


def test_text_span_corruption_reads_shared_books(shared_data):
    tasks.register_all(
        vocabulary_path=demo_corpus.vocabulary_path(),
        text_file_pattern=str(shared_data / "pretrain" / "tinyshakespeare.txt"),
    )
    examples = _examples("text_span_corruption", n=3)
    assert all(len(x["inputs"]) == 128 for x in examples)


def test_packing_worked_example():
    ex = [{"inputs": [7, 8, 5, 1], "targets": [3, 9, 1]}, {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1]}]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(ex),
        output_signature={"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)},
    )
    (row,) = list(pipeline.feature_converter(pack=True)(ds, {"inputs": 10, "targets": 7}).as_numpy_iterator())
    assert row["encoder_input_tokens"].tolist() == [7, 8, 5, 1, 8, 4, 9, 3, 1, 0]
    assert row["encoder_segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 0]
    assert row["encoder_positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0]
    assert row["decoder_target_tokens"].tolist() == [3, 9, 1, 4, 1, 0, 0]
    assert row["decoder_input_tokens"].tolist() == [0, 3, 9, 0, 4, 0, 0]
    assert row["decoder_loss_weights"].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 2, 2, 0, 0]
    assert row["decoder_positions"].tolist() == [0, 1, 2, 0, 1, 0, 0]
    unpacked = list(pipeline.feature_converter(pack=False)(ds, {"inputs": 10, "targets": 7}).as_numpy_iterator())
    assert unpacked[0]["decoder_input_tokens"].tolist() == [0, 3, 9, 1, 0, 0, 0]  # EOS at first padding


def test_process_shards_are_disjoint_and_cover_the_data():
    tasks.register_all()
    lengths = {"inputs": 64, "targets": 16}

    def rows(index, count):
        ds = pipeline.get_dataset(
            "demo_span_corruption",
            lengths,
            "validation",
            shuffle=False,
            num_epochs=1,
            shard_index=index,
            num_shards=count,
            pack=False,
        )
        return {tuple(x["encoder_input_tokens"]) for x in ds.take(400).as_numpy_iterator()}

    whole = rows(0, 1)
    first, second = rows(0, 2), rows(1, 2)
    assert first and second and not first & second
    assert len(first | second) >= 0.9 * len(whole)  # chunk boundaries differ per shard stream


@pytest.mark.slow
def test_continuing_at_step_n_gives_the_next_batch(tmp_path):
    tasks.register_all()

    def fresh_iterator():  # a restarted process builds its pipeline anew
        ds = pipeline.get_dataset(
            "demo_span_corruption", {"inputs": 64, "targets": 16}, seed=3, shard_index=0, num_shards=1
        )
        return pipeline.CheckpointableIterator(pipeline.batched(ds, batch_size=4))

    uninterrupted = fresh_iterator()
    batches = [next(uninterrupted) for _ in range(6)]
    again = fresh_iterator()
    np.testing.assert_array_equal(next(again)["encoder_input_tokens"], batches[0]["encoder_input_tokens"])

    first = fresh_iterator()
    for _ in range(3):
        next(first)
    first.save(str(tmp_path / "data" / "position"))
    resumed = fresh_iterator()
    resumed.restore(str(tmp_path / "data" / "position"))
    for expected in batches[3:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    assert not np.array_equal(batches[3]["encoder_input_tokens"], batches[4]["encoder_input_tokens"])


def test_unknown_task_names_close_matches():
    tasks.register_all()
    with pytest.raises(pipeline.UnknownTaskError, match="Did you mean demo_span_corruption"):
        pipeline.get_task_or_mixture("demo_span_corruptoin")


@pytest.mark.parametrize(
    "objective",
    [
        "bert_style",
        "deshuffling",
        "drop_corrupted_tokens",
        "iid_denoising",
        "mass_style",
        "prefix_lm",
        "span_corruption",
    ],
)
def test_every_objective_is_a_task_of_every_source(objective, demo_vocabulary):
    from t5pod.data import objectives

    assert objective in objectives.OBJECTIVES
    registered = set(seqio.TaskRegistry.names())
    assert {f"c4_v220_{objective}", f"text_{objective}", f"demo_{objective}"} <= registered
    (example,) = _examples(f"demo_{objective}", n=1, lengths={"inputs": 64, "targets": 64})
    assert example["inputs"][-1] == 1 and example["targets"][-1] == 1 and len(example["inputs"]) <= 64
    if objective in ("bert_style", "mass_style", "deshuffling"):
        assert len(example["targets"]) == 64 and example["inputs"] != example["targets"]
