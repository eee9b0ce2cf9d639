"""Documents from local (or gfile-reachable) text files, for pretraining on your own text.

Formats, by file name: `*.jsonl` / `*.json` (one JSON object per line with a `text` field),
`*.tfrecord*` (tf.Example with a bytes feature `text`), anything else plain text with one
document per line, or per blank-line-separated block when paragraphs=True. A `.gz` suffix
means gzip.
"""

import json

import tensorflow as tf


class TextFileError(ValueError):
    pass


def match_files(pattern: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(pattern)) if pattern else []
    if not files:
        raise TextFileError(
            f"TEXT_FILE_PATTERN {pattern!r} matches no file. Point it at your text, e.g. "
            "--gin.TEXT_FILE_PATTERN=\"'/data/books/*.txt'\" (plain text, .jsonl, .tfrecord, optionally .gz).")
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
        raise TextFileError(f"{path.numpy().decode()}: a line is not a JSON object with a 'text' field "
                            f"({type(error).__name__}: {error}): {line.numpy()[:80]!r}") from None
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
        return records.map(lambda r: tf.io.parse_single_example(r, {"text": tf.io.FixedLenFeature([], tf.string)})["text"])
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    if kind == "jsonl":
        lines = lines.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
        return lines.map(lambda line: tf.py_function(_parse_json_text, [line, path], tf.string))
    return _paragraphs(lines) if paragraphs else lines


def text_dataset(files: list[str], paragraphs: bool = False) -> tf.data.Dataset:
    """{"text": string} for every non-empty document of the files, in order.

    The files must share one format (that of the first). Built from tf.data ops only, so the
    iterator position can be checkpointed.
    """
    kind, gzipped = file_format(files[0]), files[0].endswith(".gz")
    mixed = [f for f in files if (file_format(f), f.endswith(".gz")) != (kind, gzipped)]
    if mixed:
        raise TextFileError(f"TEXT_FILE_PATTERN mixes file formats: {files[0]} and {mixed[0]}; use one format.")
    documents = tf.data.Dataset.from_tensor_slices(files).flat_map(
        lambda path: file_dataset(path, kind, paragraphs, gzipped))
    documents = documents.filter(lambda text: tf.strings.length(tf.strings.strip(text)) > 0)
    return documents.map(lambda text: {"text": text})


def is_empty(dataset: tf.data.Dataset) -> bool:
    return next(iter(dataset.take(1)), None) is None
