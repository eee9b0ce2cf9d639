"""Where metrics go: the console, MODEL_DIR/metrics.jsonl and TensorBoard (train/ and eval/).

Only the writing process (process 0) writes; others get a writer that does nothing.
"""

import json
import os
import time

import tensorflow as tf
from clu import metric_writers as clu_writers

# On buckets, metrics.jsonl is written as parts in this folder of MODEL_DIR.
REMOTE_PARTS_FOLDER = "metrics"


def is_remote(path: str) -> bool:
    """Whether path names a bucket or other filesystem that tf.io.gfile reaches by URL (gs://, ram://)."""
    return "://" in path


def write_text(path: str, text: str):
    tf.io.gfile.makedirs(os.path.dirname(path))
    if tf.io.gfile.exists(path):  # not every filesystem truncates on "w"
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def check_writable(folder: str, what: str):
    """Raises PermissionError naming `what` unless a file can be made in `folder` (created if
    missing), locally or on a bucket: checked before work whose results would go there."""
    probe = os.path.join(folder, f".t5pod-write-check-{os.getpid()}")
    try:
        tf.io.gfile.makedirs(folder)
        write_text(probe, "")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
        raise PermissionError(f"{what} {folder} cannot be written ({reason}); choose a writable folder.") from None


def append_lines(path: str, lines: list[str]):
    """Appends lines to a small file (one line per evaluation, say), creating it. Buckets have no
    append: there the file is read and written again, which suits files that grow by a line per
    evaluation; metrics.jsonl, a line per LOG_PERIOD, goes to parts instead (below)."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    text = "".join(line + "\n" for line in lines)
    if not is_remote(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            text = f.read() + text
    write_text(path, text)


class _JsonLines:
    """Appends lines to metrics.jsonl.

    Buckets (gs://...) have no append, and rewriting the file at each log would make every log cost
    more as the run grows. There the lines go, a batch at a time (every `flush_every_s` and at
    close), to new objects metrics/part-NNNNN.jsonl, each written once; read_metrics joins them.
    """

    def __init__(self, path: str, flush_every_s: float = 60.0):
        self.path, self.remote, self.flush_every_s = path, is_remote(path), flush_every_s
        tf.io.gfile.makedirs(os.path.dirname(path))
        if self.remote:
            self.parts = os.path.join(os.path.dirname(path), REMOTE_PARTS_FOLDER)
            tf.io.gfile.makedirs(self.parts)
            self.next_part = len(tf.io.gfile.glob(os.path.join(self.parts, "part-*.jsonl")))
            self.pending, self.last_flush = [], time.time()
        else:
            self.file = open(path, "a", encoding="utf-8")

    def write(self, line: str):
        if not self.remote:
            self.file.write(line + "\n")
            self.file.flush()
            return
        self.pending.append(line)
        if time.time() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self):
        if self.remote and self.pending:
            write_text(os.path.join(self.parts, f"part-{self.next_part:05d}.jsonl"), "\n".join(self.pending) + "\n")
            self.next_part, self.pending, self.last_flush = self.next_part + 1, [], time.time()

    def close(self):
        if self.remote:
            self.flush()
        else:
            self.file.close()


def read_metrics(model_dir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl, or, on a bucket, of its parts in order."""
    paths = [os.path.join(model_dir, "metrics.jsonl")]
    paths += sorted(tf.io.gfile.glob(os.path.join(model_dir, REMOTE_PARTS_FOLDER, "part-*.jsonl")))
    rows = []
    for path in paths:
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                rows += [json.loads(line) for line in f if line.strip()]
    return rows


class MetricWriter:
    """create=False defers creating MODEL_DIR and its files until open(): a run prints while it
    checks its settings and writes nothing until they hold."""

    def __init__(self, model_dir: str, enabled: bool = True, create: bool = True):
        self.enabled = enabled
        self.model_dir = model_dir
        self._summary_writers = {}
        self._jsonl = None
        if create:
            self.open()

    @property
    def opened(self) -> bool:
        """Whether rows now reach metrics.jsonl (this process writes, and open() was called)."""
        return self._jsonl is not None

    def open(self):
        if self.enabled and self._jsonl is None:
            self._jsonl = _JsonLines(os.path.join(self.model_dir, "metrics.jsonl"))

    def _summary_writer(self, split: str) -> clu_writers.SummaryWriter:
        folder = "train" if split == "train" else "eval"
        if folder not in self._summary_writers:
            self._summary_writers[folder] = clu_writers.SummaryWriter(os.path.join(self.model_dir, folder))
        return self._summary_writers[folder]

    def write(self, step: int, metrics: dict, split: str = "train", summary: bool = True):
        """One row: {"step", "split", **metrics} to metrics.jsonl, and (summary) scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": step, "split": split, **metrics, "time": round(time.time(), 3)}
        self._jsonl.write(json.dumps(row))
        if not summary:
            return
        writer = self._summary_writer(split)
        writer.write_scalars(
            step,
            {
                key if split == "train" else f"{split}/{key}": value
                for key, value in metrics.items()
                if isinstance(value, (int, float))
            },
        )
        writer.flush()

    def write_run_settings(self, step: int, operative_config: str, hparams: dict):
        """TensorBoard's Text tab gets the operative gin config, its HParams tab the run's settings."""
        if not self.enabled:
            return
        writer = self._summary_writer("train")
        # TensorBoard renders text as Markdown: indent by 4 spaces to show the config verbatim.
        writer.write_texts(
            step, {"operative_config": "\n".join("    " + line for line in operative_config.splitlines())}
        )
        writer.write_hparams({k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()})
        writer.flush()

    def print(self, message: str):
        if self.enabled:
            print(message, flush=True)

    def close(self):
        if self.enabled and self._jsonl is not None:
            self._jsonl.close()
            for writer in self._summary_writers.values():
                writer.close()
