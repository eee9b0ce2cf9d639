"""seqio task and mixture registrations. Importing this package registers everything with
defaults; register_all() registers again with explicit settings (the CLI calls it after gin)."""

import os

from . import generation, glue, mixtures, pretraining, transfer
from t5pod.data import demo_corpus, vocabularies


def register_all(
    vocabulary_path: str = vocabularies.DEFAULT_VOCABULARY_PATH,
    *,
    text_file_pattern: str | None = None,
    text_paragraphs: bool = False,
    text_validation_file_pattern: str | None = None,
    text_validation_fraction: float = 0.01,
    tfds_data_dir: str | None = None,
    glue_dir: str | None = None,
    superglue_dir: str | None = None,
    task_files: dict | None = None,
    mixing_rate_limit: float | None = None,
    mixing_temperature: float = 1.0,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    pretraining_size: str = "small",
):
    """(Re-)registers every task and mixture. vocabulary_path 'demo' is the demo corpus's
    vocabulary. Unset directories fall back to the GLUE_DIR, SUPERGLUE_DIR and TFDS_DATA_DIR
    environment variables. task_files maps a generation task to local files per split
    ({'cnn_dailymail_v002': {'validation': 'cnndm/val.jsonl'}}), read instead of TFDS."""
    if not 0 < noise_density < 1:
        raise ValueError(f"NOISE_DENSITY must be between 0 and 1 (the paper's 0.15), got {noise_density}.")
    if not mean_noise_span_length >= 1:  # a mean below one token would make more spans than noise
        raise ValueError(f"MEAN_NOISE_SPAN_LENGTH must be at least 1 (the paper's 3), got {mean_noise_span_length}.")
    vocabulary = demo_corpus.vocabulary() if vocabulary_path == "demo" else vocabularies.get_vocabulary(vocabulary_path)
    tfds_data_dir = tfds_data_dir or os.environ.get("TFDS_DATA_DIR")
    pretraining.register(
        vocabulary,
        text_file_pattern=text_file_pattern,
        text_paragraphs=text_paragraphs,
        text_validation_file_pattern=text_validation_file_pattern,
        text_validation_fraction=text_validation_fraction,
        tfds_data_dir=tfds_data_dir,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )
    glue.register(vocabulary, glue_dir=glue_dir, superglue_dir=superglue_dir, tfds_data_dir=tfds_data_dir)
    transfer.register(vocabulary, glue_dir=glue_dir, tfds_data_dir=tfds_data_dir)
    generation.register(vocabulary, task_files=task_files, tfds_data_dir=tfds_data_dir)
    mixtures.register(
        mixing_rate_limit=mixing_rate_limit, mixing_temperature=mixing_temperature, pretraining_size=pretraining_size
    )


register_all()
