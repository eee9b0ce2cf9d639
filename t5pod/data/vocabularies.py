"""SentencePiece vocabularies with T5's conventions (pad 0, eos 1, unk 2, no bos, 100 extra ids)."""

import os
import random
import shutil
import tempfile
from typing import Callable, Iterable

import seqio
from google.protobuf.message import DecodeError
import sentencepiece as spm

DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
EXTRA_IDS = 100


class VocabularyError(ValueError):
    pass


def get_vocabulary(path: str = DEFAULT_VOCABULARY_PATH, extra_ids: int = EXTRA_IDS) -> seqio.SentencePieceVocabulary:
    """A seqio vocabulary; `<extra_id_0>` is vocab_size - 1 (32099 for the T5 vocabulary)."""
    if not path.startswith(("gs://", "s3://", "http://", "https://")) and not os.path.isfile(path):
        raise VocabularyError(
            f"Vocabulary file {path} not found. Set --gin.VOCABULARY_PATH=\"'/path/to/spiece.model'\" or "
            "train one with `python -m t5pod train-vocab`."
        )
    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids)
    if os.path.isfile(path):  # remote files are only read when first used
        try:
            vocabulary.tokenizer  # noqa: B018 - loads the model file now, not at first use
            check_sentinels(vocabulary)
        except (DecodeError, RuntimeError) as error:
            raise VocabularyError(
                f"Vocabulary file {path} is not a SentencePiece model ({type(error).__name__}); set "
                "VOCABULARY_PATH to a .model file written by SentencePiece (e.g. `python -m t5pod train-vocab`)."
            ) from None
    return vocabulary


def check_sentinels(vocabulary: seqio.SentencePieceVocabulary):
    """Denoising objectives need sentinel ids: from extra_ids, or pieces named <extra_id_N>."""
    if vocabulary.extra_ids > 0:
        return
    if vocabulary.tokenizer.piece_to_id("<extra_id_0>") == vocabulary.tokenizer.unk_id():
        raise VocabularyError(
            f"Vocabulary {vocabulary.sentencepiece_model_file} has no extra ids (sentinels) for span "
            "corruption; load it with extra_ids=100."
        )


def padded_vocab_size(vocabulary: seqio.Vocabulary, multiple: int = 128) -> int:
    """The model's embedding size: the vocabulary size rounded up (32100 -> 32128)."""
    return -(-vocabulary.vocab_size // multiple) * multiple


class LazyVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary whose model file is built on first use (e.g. the demo's).

    `build` returns the model file's path; nothing is built when tasks are merely registered.
    """

    def __init__(self, build: Callable[[], str], extra_ids: int = EXTRA_IDS):
        self._build = build
        super().__init__(None, extra_ids)

    def _model_context(self):
        if self._sentencepiece_model_file is None:
            self._sentencepiece_model_file = self._build()
        return super()._model_context()


def train_vocabulary(
    texts: Iterable[str],
    model_path: str,
    vocab_size: int = 32000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    max_sentences: int = 2_000_000,
    seed: int = 0,
) -> str:
    """Trains a SentencePiece model with T5's special ids; writes model_path (and .vocab).

    texts: documents or lines of text. The file appears only when training succeeded.
    """
    model_path = os.path.abspath(model_path)
    if not model_path.endswith(".model"):
        raise VocabularyError(f"The vocabulary path must end in .model, got {model_path}.")
    # The corpus and the model are made in a temporary folder: nothing appears at model_path's
    # folder unless training succeeds.
    with tempfile.TemporaryDirectory() as work:
        corpus = os.path.join(work, "corpus.txt")
        # At most max_sentences lines, sampled here with `seed` (reservoir sampling, in input order):
        # SentencePiece's own sampling draws differently in every process whatever its seed, so the
        # same command gave a different vocabulary each time.
        sample, lines, chooser = [], 0, random.Random(seed)
        for text in texts:
            for line in text.splitlines():
                if line.strip():
                    lines += 1
                    if len(sample) < max_sentences:
                        sample.append((lines, line.strip()))
                    elif (slot := chooser.randrange(lines)) < max_sentences:
                        sample[slot] = (lines, line.strip())
        if lines == 0:
            raise VocabularyError("No text to train a vocabulary on: the corpus is empty.")
        with open(corpus, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for _, line in sorted(sample))
        prefix = os.path.join(work, "spiece")
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            input=corpus,
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            input_sentence_size=0,  # every line of the sample above
            shuffle_input_sentence=False,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
            hard_vocab_limit=False,
        )
        os.makedirs(os.path.dirname(model_path), exist_ok=True)
        shutil.move(prefix + ".vocab", model_path[: -len(".model")] + ".vocab")
        # Copied beside the target, then renamed: a kill mid-copy (another filesystem) leaves no
        # truncated model at model_path.
        partial = f"{model_path}.partial-{os.getpid()}"
        shutil.move(prefix + ".model", partial)
        os.replace(partial, model_path)
    return model_path
