"""Where metrics go: the console, MODEL_DIR/metrics.jsonl and TensorBoard (train/ and eval/).

Only the writing process (process 0) writes; others get a writer that does nothing.
"""

import json
import os
import time

import tensorflow as tf


def write_text(path: str, text: str):
    tf.io.gfile.makedirs(os.path.dirname(path))
    if tf.io.gfile.exists(path):  # not every filesystem truncates on "w"
        tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


class _JsonLines:
    """Appends lines to a file; on buckets (no append there) rewrites the whole file each time."""

    def __init__(self, path: str):
        self.path, self.remote = path, "://" in path
        tf.io.gfile.makedirs(os.path.dirname(path))
        if self.remote:
            self.lines = tf.io.gfile.GFile(path).read().splitlines() if tf.io.gfile.exists(path) else []
        else:
            self.file = open(path, "a", encoding="utf-8")

    def write(self, line: str):
        if self.remote:
            self.lines.append(line)
            write_text(self.path, "\n".join(self.lines) + "\n")
        else:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self):
        if not self.remote:
            self.file.close()


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

    def open(self):
        if self.enabled and self._jsonl is None:
            self._jsonl = _JsonLines(os.path.join(self.model_dir, "metrics.jsonl"))

    def _summary_writer(self, split: str):
        if split not in self._summary_writers:
            folder = "train" if split == "train" else "eval"
            self._summary_writers[split] = tf.summary.create_file_writer(os.path.join(self.model_dir, folder))
        return self._summary_writers[split]

    def write(self, step: int, metrics: dict, split: str = "train", summary: bool = True):
        """One row: {"step", "split", **metrics} to metrics.jsonl, and (summary) scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": step, "split": split, **metrics, "time": round(time.time(), 3)}
        self._jsonl.write(json.dumps(row))
        if not summary:
            return
        with self._summary_writer(split).as_default(step=step):
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    tf.summary.scalar(key if split == "train" else f"{split}/{key}", value)
        self._summary_writer(split).flush()

    def print(self, message: str):
        if self.enabled:
            print(message, flush=True)

    def close(self):
        if self.enabled and self._jsonl is not None:
            self._jsonl.close()
            for writer in self._summary_writers.values():
                writer.close()


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
