"""Summarization, translation and SQuAD under the reference T5's names, prefixes and metrics.

Rows come from TFDS, or, for a task named in TASK_FILES, from local files (formats in
t5pod.data.generation_files); both give TFDS's features, formatted by the same tf.data code:

  cnn_dailymail_v002     summarize: ARTICLE -> highlights             ROUGE-1/2/Lsum
  xsum_v110              summarize: DOCUMENT -> summary               ROUGE-1/2/Lsum
  wmt_t2t_ende_v003      translate English to German: EN -> DE        BLEU
  wmt14_enfr_v003        translate English to French: EN -> FR        BLEU
  wmt16_enro_v003        translate English to Romanian: EN -> RO      BLEU
  squad_v010_allanswers  question: Q context: C -> the first answer   EM/F1 against every answer
"""

import functools

import seqio
import tensorflow as tf

from t5pod.data import generation_files, generation_metrics
from . import glue

LANGUAGES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian"}
# task: (TFDS name, splits, article field, summary field)
SUMMARIZATION = {
    "cnn_dailymail_v002": ("cnn_dailymail:3.4.0", ("train", "validation", "test"), "article", "highlights"),
    "xsum_v110": ("xsum:1.1.0", ("train", "validation", "test"), "document", "summary"),
}
# task: (TFDS name, splits, source language, target language)
TRANSLATION = {
    "wmt_t2t_ende_v003": ("wmt_t2t_translate/de-en:1.0.0", ("train", "validation", "test"), "en", "de"),
    "wmt14_enfr_v003": ("wmt14_translate/fr-en:1.0.0", ("train", "validation", "test"), "en", "fr"),
    "wmt16_enro_v003": ("wmt16_translate/ro-en:1.0.0", ("train", "validation", "test"), "en", "ro"),
}
SQUAD = {"squad_v010_allanswers": ("squad/v1.1:3.0.0", ("train", "validation"))}
TASK_NAMES = (*SUMMARIZATION, *TRANSLATION, *SQUAD)


def _pad_punctuation(text):
    """The reference's SQuAD spacing: a space each side of ASCII punctuation, runs of spaces as one."""
    return tf.strings.regex_replace(tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 "), r"\s+", " ")


def _join(parts):
    return tf.strings.regex_replace(tf.strings.join(parts, separator=" "), r"\s+", " ")


def summarize(x, article_key: str, summary_key: str):
    return {"inputs": _join(["summarize:", x[article_key]]), "targets": x[summary_key]}


def translate(x, source: str, target: str):
    prefix = f"translate {LANGUAGES[source]} to {LANGUAGES[target]}: "
    return {"inputs": tf.strings.join([prefix, x[source]]), "targets": x[target]}


def squad(x):
    answers = _pad_punctuation(x["answers"])
    inputs = _join(["question:", _pad_punctuation(x["question"]), "context:", _pad_punctuation(x["context"])])
    return {"inputs": inputs, "targets": answers[0], "id": x["id"], "answers": answers}


def _rows_dataset(rows: list[dict]) -> tf.data.Dataset:
    if not rows:
        raise generation_files.TaskFileError("The split's files hold no rows.")
    return glue.strings_dataset({k: [row[k] for row in rows] for k in rows[0]})


def _source(task: str, tfds_name: str, splits: tuple, files: dict | None, read, tfds_data_dir):
    if files:
        unknown = sorted(set(files) - set(splits))
        if unknown:
            raise ValueError(f"TASK_FILES for {task} names the split {unknown[0]!r}; {task} has {', '.join(splits)}.")

        def local(split: str, shuffle_files: bool, seed=None):
            del shuffle_files, seed
            return _rows_dataset(read(files[split]))

        return seqio.FunctionDataSource(local, splits=tuple(files))

    def tfds_dataset(split: str, shuffle_files: bool, seed=None):
        dataset = glue.tfds_dataset(
            tfds_name,
            split,
            tfds_data_dir,
            f"read local files: --gin.TASK_FILES=\"{{'{task}': {{'{split}': 'FILES'}}}}\"",
            shuffle_files,
            seed,
        )
        if task in SQUAD:  # answers as a flat list of strings, as the local reader gives them
            dataset = dataset.map(lambda x: {**x, "answers": x["answers"]["text"]})
        return dataset

    return seqio.FunctionDataSource(tfds_dataset, splits=splits)


def register(vocabulary, *, task_files: dict | None = None, tfds_data_dir: str | None = None):
    task_files = dict(task_files or {})
    unknown = sorted(set(task_files) - set(TASK_NAMES))
    if unknown:
        raise ValueError(
            f"TASK_FILES names {unknown[0]!r}, which is none of the tasks that read files: "
            f"{', '.join(TASK_NAMES)} (GLUE and SuperGLUE read GLUE_DIR and SUPERGLUE_DIR)."
        )
    features = {"inputs": seqio.Feature(vocabulary, add_eos=True), "targets": seqio.Feature(vocabulary, add_eos=True)}
    tail = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim]

    def add(task, source, formatter, metric_fn, postprocess_fn=None):
        seqio.TaskRegistry.remove(task)
        seqio.TaskRegistry.add(
            task,
            source=source,
            preprocessors=[seqio.map_over_dataset(formatter), *tail],
            output_features=features,
            postprocess_fn=postprocess_fn,
            metric_fns=[metric_fn],
        )

    for task, (tfds_name, splits, article, summary) in SUMMARIZATION.items():
        read = functools.partial(generation_files.read_summaries, article_key=article, summary_key=summary)
        add(
            task,
            _source(task, tfds_name, splits, task_files.get(task), read, tfds_data_dir),
            functools.partial(summarize, article_key=article, summary_key=summary),
            generation_metrics.rouge,
        )
    for task, (tfds_name, splits, source, target) in TRANSLATION.items():
        read = functools.partial(generation_files.read_translations, source=source, target=target)
        add(
            task,
            _source(task, tfds_name, splits, task_files.get(task), read, tfds_data_dir),
            functools.partial(translate, source=source, target=target),
            generation_metrics.bleu,
        )
    for task, (tfds_name, splits) in SQUAD.items():
        add(
            task,
            _source(task, tfds_name, splits, task_files.get(task), generation_files.read_squad, tfds_data_dir),
            squad,
            generation_metrics.squad,
            generation_metrics.all_answers,
        )
