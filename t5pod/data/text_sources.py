"""Documents from local (or gfile-reachable) text files, for pretraining on your own text.

Formats, by file name: `*.jsonl` / `*.json` (one JSON object per line with a `text` field),
`*.tfrecord*` (tf.Example with a bytes feature `text`), anything else plain text with one
document per line, or per blank-line-separated block when paragraphs=True. A `.gz` suffix
means gzip. JSON is parsed in Python; scripts/text_to_tfrecord.py converts a corpus once to TFRecord
shards, which TensorFlow reads natively.
"""

import json

import seqio
import tensorflow as tf


class TextFileError(ValueError):
    pass


def match_files(pattern: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(pattern)) if pattern else []
    if not files:
        raise TextFileError(
            f"TEXT_FILE_PATTERN {pattern!r} matches no file. Point it at your text, e.g. "
            "--gin.TEXT_FILE_PATTERN=\"'/data/books/*.txt'\" (plain text, .jsonl, .tfrecord, optionally .gz)."
        )
    return files


def file_format(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if ".tfrecord" in name:
        return "tfrecord"
    return "text"


def _parse_json_text(line, path):
    try:
        text = json.loads(line.numpy().decode("utf-8"))["text"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise TextFileError(
            f"{path.numpy().decode()}: a line is not a JSON object with a 'text' field "
            f"({type(error).__name__}: {error}): {line.numpy()[:80]!r}"
        ) from None
    return text


def _paragraphs(lines: tf.data.Dataset) -> tf.data.Dataset:
    """Joins runs of non-blank lines; a blank line ends a document."""

    def step(block, line):
        blank = tf.equal(tf.strings.strip(line), "")
        emitted = tf.where(blank, block, "")
        joined = tf.where(tf.equal(block, ""), line, tf.strings.join([block, line], separator="\n"))
        return tf.where(blank, "", joined), emitted

    lines = lines.concatenate(tf.data.Dataset.from_tensors(tf.constant("")))
    return lines.scan(tf.constant(""), step)


def file_dataset(path, kind: str, paragraphs: bool = False, gzipped: bool = False) -> tf.data.Dataset:
    """Documents (scalar strings) of one file, in file order; checkpointable tf.data ops only."""
    compression = "GZIP" if gzipped else None
    if kind == "tfrecord":
        records = tf.data.TFRecordDataset(path, compression_type=compression)
        return records.map(
            lambda r: tf.io.parse_single_example(r, {"text": tf.io.FixedLenFeature([], tf.string)})["text"]
        )
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    if kind == "jsonl":
        lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
        return lines.map(lambda line: tf.py_function(_parse_json_text, [line, path], tf.string))
    return _paragraphs(lines) if paragraphs else lines


def check_one_format(files: list[str]) -> tuple[str, bool]:
    """(format, gzipped) shared by all the files."""
    kind, gzipped = file_format(files[0]), files[0].endswith(".gz")
    mixed = [f for f in files if (file_format(f), f.endswith(".gz")) != (kind, gzipped)]
    if mixed:
        raise TextFileError(f"TEXT_FILE_PATTERN mixes file formats: {files[0]} and {mixed[0]}; use one format.")
    return kind, gzipped


def documents(path, kind: str, paragraphs: bool = False, gzipped: bool = False) -> tf.data.Dataset:
    """The non-empty documents (scalar strings) of one file."""
    docs = file_dataset(path, kind, paragraphs, gzipped)
    return docs.filter(lambda text: tf.strings.length(tf.strings.strip(text)) > 0)


def text_dataset(files: list[str], paragraphs: bool = False) -> tf.data.Dataset:
    """{"text": string} for every non-empty document of the files, in order.

    The files must share one format (that of the first). Built from tf.data ops only, so the
    iterator position can be checkpointed.
    """
    kind, gzipped = check_one_format(files)
    docs = tf.data.Dataset.from_tensor_slices(files).flat_map(lambda path: documents(path, kind, paragraphs, gzipped))
    return docs.map(lambda text: {"text": text})


def held_out(text: tf.Tensor, fraction: float) -> tf.Tensor:
    """Whether a document belongs to the held-out validation split: a stable hash of its text
    (FarmHash fingerprint, the same on every host and run) falls in the first `fraction`."""
    return tf.strings.to_hash_bucket_fast(text, 1_000_000) < int(round(fraction * 1_000_000))


class TextFileSource(seqio.FileDataSource):
    """Documents of local (or gfile-reachable) text files as a seqio source with a train and a
    validation split.

    Files are the unit of sharding: seqio hands each process (ShardInfo) its own files when there
    are at least as many files as processes, and otherwise reads everything and keeps every n-th
    example (pipeline.get_dataset says so). The validation split is validation_pattern's files,
    or, without one, the documents that `held_out` picks at validation_fraction (train then
    skips them).
    """

    def __init__(
        self,
        pattern: str,
        validation_pattern: str | None = None,
        paragraphs: bool = False,
        validation_fraction: float = 0.01,
    ):
        if not 0 < validation_fraction < 1:
            raise TextFileError(f"TEXT_VALIDATION_FRACTION is {validation_fraction}; it must be between 0 and 1.")
        self.pattern, self.validation_pattern = pattern, validation_pattern
        self.paragraphs, self.validation_fraction = paragraphs, validation_fraction
        super().__init__(
            read_file_fn=None, split_to_filepattern={"train": pattern, "validation": validation_pattern or pattern}
        )

    def list_shards(self, split: str) -> list[str]:
        return match_files(self._split_to_filepattern[split])

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        **unused,
    ) -> tf.data.Dataset:
        files = self.list_shards(split)
        kind, gzipped = check_one_format(files)
        paths = tf.data.Dataset.from_tensor_slices(files)
        if shard_info:  # seqio passes it only when there are at least as many files as shards
            paths = paths.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            paths = paths.shuffle(len(files), seed=seed)
        docs = paths.interleave(
            lambda path: documents(path, kind, self.paragraphs, gzipped),
            cycle_length=min(16, len(files)),
            block_length=16,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if not self.validation_pattern:
            in_validation = split == "validation"
            docs = docs.filter(lambda text: tf.equal(held_out(text, self.validation_fraction), in_validation))
        if split == "train" and is_empty(docs):
            raise TextFileError(f"The corpus is empty: {self.pattern!r} matches only empty files.")
        return docs.map(lambda text: {"text": text})


def is_empty(dataset: tf.data.Dataset) -> bool:
    return next(iter(dataset.take(1)), None) is None
