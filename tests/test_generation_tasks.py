"""Summarization, translation and SQuAD tasks: formats, local files, and their metrics checked by hand
and against the libraries' own results."""

import json
import math

import numpy as np
import pytest
import sacrebleu
import seqio
from rouge_score import rouge_scorer

from t5pod import tasks
from t5pod.data import generation_files, generation_metrics


def test_rouge_by_hand():
    # target unigrams: the x2, cat, sat, on, mat (6); prediction: the x2, cat, on, mat (5), all in the target.
    scores = generation_metrics.rouge(["the cat sat on the mat"], ["the cat on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 2 * 1 * (5 / 6) / (1 + 5 / 6))  # P 1, R 5/6
    # bigrams: 3 of the prediction's 4 are among the target's 5.
    assert scores["rouge2"] == pytest.approx(100 * 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    # one sentence: the longest common subsequence is the whole prediction, as for ROUGE-1.
    assert scores["rougeLsum"] == pytest.approx(scores["rouge1"])


def test_rouge_lsum_splits_sentences_at_spaced_full_stops():
    # With " . " read as a sentence end, each target sentence is found whole: ROUGE-Lsum 100.
    # Read as one sentence, the longest common subsequence is 3 of 6 tokens: 50.
    target, prediction = "the cat sat . the dog ran", "the dog ran . the cat sat"
    assert generation_metrics.rouge([target], [prediction])["rougeLsum"] == pytest.approx(100)
    unsplit = rouge_scorer.RougeScorer(["rougeLsum"]).score(target, prediction)["rougeLsum"].fmeasure
    assert unsplit == pytest.approx(0.5)


def test_rouge_equals_the_library_on_several_pairs():
    targets = ["police killed the gunman . two were hurt .", "a b c d", "Hello world"]
    predictions = ["the gunman was killed by police . two hurt", "a c", "nothing alike"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])
    expected = {k: 0.0 for k in ("rouge1", "rouge2", "rougeLsum")}
    for t, p in zip(targets, predictions):
        for k, v in scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n")).items():
            expected[k] += 100 * v.fmeasure / len(targets)
    assert generation_metrics.rouge(targets, predictions) == pytest.approx(expected)


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; same length, so no brevity penalty.
    score = generation_metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat"])["bleu"]
    assert score == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)
    # A prediction half the reference's length: brevity penalty exp(1 - 8/4).
    short = generation_metrics.bleu(["one two three four five six seven eight"], ["one two three four"])["bleu"]
    assert short == pytest.approx(100 * math.exp(1 - 8 / 4), abs=1e-6)


def test_bleu_equals_sacrebleu_with_the_references_settings():
    targets = ["Ein Mann schläft auf einem Sofa.", "Zwei Hunde spielen im Schnee!", "Kinder, die lachen."]
    predictions = ["Ein Mann schläft auf dem Sofa.", "Zwei Hunde spielen im Gras!", "Kinder lachen."]
    expected = sacrebleu.corpus_bleu(predictions, [targets], smooth_method="exp", tokenize="intl").score
    assert generation_metrics.bleu(targets, predictions)["bleu"] == pytest.approx(expected)
    thirteen_a = sacrebleu.corpus_bleu(predictions, [targets], smooth_method="exp", tokenize="13a").score
    assert generation_metrics.bleu(targets, predictions, tokenize="13a")["bleu"] == pytest.approx(thirteen_a)


def test_squad_best_of_all_answers():
    example = {"answers": np.array([b"J . R . R . Tolkien", b"Tolkien", b""])}
    targets = [generation_metrics.all_answers("ignored", example, is_target=True)]
    assert targets == [["J . R . R . Tolkien", "Tolkien"]]
    # "tolkien" matches the second answer exactly; "the author tolkien" overlaps it in 1 of 2 normalised tokens.
    assert generation_metrics.squad(targets, ["Tolkien"]) == {"em": 100.0, "f1": 100.0}
    scores = generation_metrics.squad(targets, ["the author Tolkien"])
    assert scores["em"] == 0.0 and scores["f1"] == pytest.approx(100 * 2 * 0.5 * 1 / 1.5)


def _example(task: str, split: str = "validation"):
    dataset = seqio.get_mixture_or_task(task).get_dataset({"inputs": 512, "targets": 128}, split=split, shuffle=False)
    return next(dataset.as_numpy_iterator())


@pytest.fixture
def registry():
    """Tasks registered again with the defaults afterwards, whatever the test registered."""
    yield
    tasks.register_all()


@pytest.fixture
def local_tasks(tmp_path, registry):
    (tmp_path / "cnndm.jsonl").write_text(
        json.dumps({"article": "Rain fell. Roads flooded.", "url": "u", "highlights": "Roads flooded ."}) + "\n"
    )
    (tmp_path / "val.en").write_text("A dog runs.\nTwo cats sleep.\n")
    (tmp_path / "val.de").write_text("Ein Hund rennt.\nZwei Katzen schlafen.\n")
    squad = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Tolkien, an author, wrote it.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Who wrote it?",
                                "answers": [
                                    {"text": "Tolkien", "answer_start": 0},
                                    {"text": "Tolkien, an author", "answer_start": 0},
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad))
    tasks.register_all(
        "demo",
        task_files={
            "cnn_dailymail_v002": {"validation": str(tmp_path / "cnndm.jsonl")},
            "wmt_t2t_ende_v003": {"validation": str(tmp_path / "val.{lang}")},
            "squad_v010_allanswers": {"validation": str(tmp_path / "dev-v1.1.json")},
        },
    )
    return tmp_path


def test_local_files_give_the_reference_formats(local_tasks):
    cnndm = _example("cnn_dailymail_v002")
    assert cnndm["inputs_pretokenized"] == b"summarize: Rain fell. Roads flooded."
    assert cnndm["targets_pretokenized"] == b"Roads flooded ."
    wmt = _example("wmt_t2t_ende_v003")
    assert wmt["inputs_pretokenized"] == b"translate English to German: A dog runs."
    assert wmt["targets_pretokenized"] == b"Ein Hund rennt."
    squad = _example("squad_v010_allanswers")
    # The reference pads ASCII punctuation with spaces in question, context and answers.
    assert squad["inputs_pretokenized"] == b"question: Who wrote it ? context: Tolkien , an author , wrote it . "
    assert squad["targets_pretokenized"] == b"Tolkien"
    assert list(squad["answers"]) == [b"Tolkien", b"Tolkien , an author"]


def test_bad_task_files_name_the_problem(tmp_path, registry):
    with pytest.raises(ValueError, match="TASK_FILES names 'cnn_dailymail'"):
        tasks.register_all("demo", task_files={"cnn_dailymail": {"validation": "x.jsonl"}})
    (tmp_path / "a.en").write_text("one\ntwo\n")
    (tmp_path / "a.de").write_text("eins\n")
    with pytest.raises(generation_files.TaskFileError, match="2 en lines but 1 de lines"):
        generation_files.read_translations(str(tmp_path / "a.{lang}"), "en", "de")
    (tmp_path / "s.jsonl").write_text(json.dumps({"article": "x"}) + "\n")
    with pytest.raises(generation_files.TaskFileError, match="line 1: no text field 'highlights'"):
        generation_files.read_summaries(str(tmp_path / "s.jsonl"), "article", "highlights")
    with pytest.raises(generation_files.TaskFileError, match="No file matches"):
        generation_files.read_squad(str(tmp_path / "missing*.json"))
    # Without local files and without the TFDS data: the error names both ways to get it.
    tasks.register_all("demo", tfds_data_dir=str(tmp_path / "no_tfds"))
    with pytest.raises(FileNotFoundError, match=r"wmt16_translate/ro-en.*TFDS_DATA_DIR.*TASK_FILES=.*wmt16_enro_v003"):
        _example("wmt16_enro_v003")


@pytest.mark.slow
def test_finetune_and_eval_summarization_and_translation_end_to_end(tmp_path, shared_data, registry):
    """A tiny model fine-tuned a few steps on the CNN/DM sample, then `eval` on it and on the
    translation sample: ROUGE and BLEU come out, equal to the libraries on the written predictions."""
    from t5pod import cli

    cnndm = (shared_data / "summarization" / "frank_cnndm_test.jsonl").read_text().splitlines()
    (tmp_path / "cnndm_train.jsonl").write_text("\n".join(cnndm[8:40]) + "\n")
    (tmp_path / "cnndm_val.jsonl").write_text("\n".join(cnndm[:8]) + "\n")
    for language in ("en", "de"):
        lines = (shared_data / "translation" / "multi30k_en_de" / f"val.{language}").read_text().splitlines()
        (tmp_path / f"val.{language}").write_text("\n".join(lines[:8]) + "\n")
    files = {
        "cnn_dailymail_v002": {
            "train": str(tmp_path / "cnndm_train.jsonl"),
            "validation": str(tmp_path / "cnndm_val.jsonl"),
        },
        "wmt_t2t_ende_v003": {"validation": str(tmp_path / "val.{lang}")},
    }
    common = [
        "--gin_file=models/tiny.gin",
        "--gin.t5pod.T5Config.vocab_size=2176",
        "--gin.VOCABULARY_PATH='demo'",
        f"--gin.TASK_FILES={files!r}",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 16}",
    ]
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--gin_file=runs/finetune.gin",
                *common,
                f"--gin.MODEL_DIR='{run}'",
                "--gin.MIXTURE_OR_TASK_NAME='cnn_dailymail_v002'",
                "--gin.INITIAL_CHECKPOINT_PATH=None",
                "--gin.TRAIN_STEPS=3",
                "--gin.BATCH_SIZE=8",
                "--gin.INFERENCE_EVAL=False",
            ]
        )
        == 0
    )
    # TensorBoard holds the operative config as text and the run's settings as hyperparameters.
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    values = [
        v
        for path in tf.io.gfile.glob(str(run / "train" / "events.*"))
        for event in tf.compat.v1.train.summary_iterator(path)
        for v in event.summary.value
    ]
    text = next(v for v in values if v.tag.startswith("operative_config"))
    assert "MIXTURE_OR_TASK_NAME = 'cnn_dailymail_v002'" in tf.make_ndarray(text.tensor).item().decode()
    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        next(v for v in values if v.tag == "_hparams_/session_start_info").metadata.plugin_data.content
    )
    assert hparams.session_start_info.hparams["train/train_steps"].number_value == 3
    assert hparams.session_start_info.hparams["model/d_model"].number_value == 128
    for task, metric in (
        ("cnn_dailymail_v002", generation_metrics.rouge),
        ("wmt_t2t_ende_v003", generation_metrics.bleu),
    ):
        assert (
            cli.main(
                [
                    "eval",
                    *common,
                    f"--gin.CHECKPOINT_PATH='{run}'",
                    f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
                    "--gin.INFER_BATCH_SIZE=8",
                    "--gin.MAX_DECODE_LENGTH=16",
                ]
            )
            == 0
        )
        reported = [json.loads(line) for line in open(run / "eval_metrics.jsonl")][-1]
        rows = [json.loads(line) for line in open(run / "inference_eval" / f"{task}-3.jsonl")]
        assert reported["task"] == task and reported["step"] == 3 and reported["examples"] == len(rows) == 8
        assert rows[0]["targets"] == (
            json.loads(cnndm[0])["highlights"]
            if task.startswith("cnn")
            else "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"
        )
        expected = metric([r["targets"] for r in rows], [r["prediction"] for r in rows])
        assert {k: reported[k] for k in expected} == pytest.approx(expected)
