"""Pretraining tasks: span corruption (and the paper's other objectives, and UL2's mixture of
denoisers) over C4, your text, or the embedded demo corpus."""

import functools

import seqio
import tensorflow as tf

from t5pod.data import demo_corpus, objectives, text_sources, ul2

C4_TFDS_NAME = "c4/en:3.0.1"
# One in this many demo documents is held out as the validation split.
DEMO_VALIDATION_EVERY = 50


def output_features(vocabulary) -> dict:
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def _preprocessors(objective):
    return [
        functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        objective,
        seqio.preprocessors.append_eos_after_trim,
    ]


def _demo_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    held_out = split == "validation"
    dataset = text_sources.text_dataset([demo_corpus.corpus_path()]).enumerate()
    dataset = dataset.filter(lambda i, x: tf.equal(i % DEMO_VALIDATION_EVERY == DEMO_VALIDATION_EVERY - 1, held_out))
    return dataset.map(lambda i, x: x)


def register(
    vocabulary,
    *,
    text_file_pattern: str | None = None,
    text_paragraphs: bool = False,
    text_validation_file_pattern: str | None = None,
    text_validation_fraction: float = 0.01,
    tfds_data_dir: str | None = None,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
):
    """Tasks `<source>_<objective>` for the sources c4_v220, text and demo and every objective of
    t5pod.objectives.OBJECTIVES and UL2's mixture of denoisers (`ul2`), e.g. c4_v220_span_corruption,
    demo_bert_style or text_ul2."""
    c4 = seqio.TfdsDataSource(tfds_name=C4_TFDS_NAME, tfds_data_dir=tfds_data_dir)
    text = text_sources.TextFileSource(
        text_file_pattern or "", text_validation_file_pattern, text_paragraphs, text_validation_fraction
    )
    demo = seqio.FunctionDataSource(_demo_dataset_fn, splits=("train", "validation"))
    sources = {
        "c4_v220": (c4, output_features(vocabulary)),
        "text": (text, output_features(vocabulary)),
        "demo": (demo, output_features(demo_corpus.vocabulary())),
    }
    preprocessors = {
        name: objectives.objective(name, noise_density, mean_noise_span_length) for name in objectives.OBJECTIVES
    }
    preprocessors["ul2"] = ul2.mixture_of_denoisers
    for name, objective in preprocessors.items():
        for prefix, (source, features) in sources.items():
            _add(f"{prefix}_{name}", source, _preprocessors(objective), features)


def _add(name, source, preprocessors, features, **kwargs):
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=source, preprocessors=preprocessors, output_features=features, metric_fns=[], **kwargs
    )
