"""The files of `infer`: inputs streamed line by line (never held whole), and an output written as
batches finish, so that a killed run continues where it stopped when run again.

While it runs, OUT.partial holds the finished rows in input order and OUT.partial.json the
settings they were made with; when every row is done OUT.partial becomes OUT. A rerun with the
same settings keeps the rows already written and skips their inputs; one with other settings is
refused rather than mixing two runs in one file.
"""

import itertools
import json
import os
import tempfile
from typing import Iterable, Iterator

from t5pod import metric_writers
from t5pod.inference import InferenceError


def is_jsonl(path: str) -> bool:
    """JSONL by its name (.jsonl, .json) or by a first non-blank line that opens an object."""
    if path.endswith((".jsonl", ".json")):
        return True
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("{")
    return False


def count_rows(path: str) -> int:
    """Non-blank lines of a file, read in chunks (for progress and ETA)."""
    count = 0
    with open(path, "rb") as f:
        for line in f:
            count += bool(line.strip())
    return count


def input_rows(path: str, mode: str) -> Iterator[dict]:
    """Rows of an input file, one per non-blank line, read lazily: JSONL objects with `inputs` (and
    `targets` for score), or plain text lines (predict only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Input file {path} not found.")
    jsonl, empty = is_jsonl(path), True
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            empty = False
            yield _parse_row(path, number, line, jsonl, mode)
    if empty:
        raise InferenceError(f"Input file {path} is empty: nothing to {mode}.")


def _parse_row(path: str, number: int, line: str, jsonl: bool, mode: str) -> dict:
    if jsonl:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InferenceError(f"{path}:{number}: not valid JSON ({error}).") from None
        if not isinstance(row, dict) or "inputs" not in row:
            raise InferenceError(f"{path}:{number}: a JSON object with an `inputs` field is needed.")
        for key in ("inputs", "targets"):
            if key in row and not isinstance(row[key], str):
                raise InferenceError(f"{path}:{number}: `{key}` must be a string, got "
                                     f"{type(row[key]).__name__} {json.dumps(row[key])[:60]}.")
    else:
        row = {"inputs": line}
    if mode == "score" and "targets" not in row:
        raise InferenceError(f"{path}:{number}: --mode=score needs a `targets` field on every line "
                             "(JSONL: {\"inputs\": ..., \"targets\": ...}).")
    row["_where"] = f"{path}:{number}"  # for error messages; not written out
    return row


def check_output_path(path: str):
    """Fails before any decoding when `path` cannot become the output file."""
    if os.path.isdir(path):
        raise InferenceError(f"--output_file {path} is a directory; name a file inside it.")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".infer-check-"):
            pass
    except OSError as error:
        raise InferenceError(f"--output_file {path} cannot be written ({error.strerror}); choose a writable "
                             "path.") from None


def append_jsonl(path: str, rows: Iterable[dict]):
    """Appends rows to a JSONL file (creating it), locally or on a bucket: earlier rows are kept."""
    metric_writers.append_lines(path, [json.dumps(row, ensure_ascii=False) for row in rows])


class ResumableOutput:
    """OUT.partial (rows so far) and OUT.partial.json (their settings), OUT once complete."""

    def __init__(self, path: str, settings: dict):
        self.path, self.settings = path, settings
        self.partial, self.settings_path = f"{path}.partial", f"{path}.partial.json"
        self._file = None

    def rows_done(self, batch_size: int) -> int:
        """Rows already in OUT.partial, kept to whole batches (a batch cut off by a kill is redone, so
        that every batch decodes as in an uninterrupted run); 0 for a new file."""
        if not os.path.exists(self.partial):
            return 0
        saved = None
        if os.path.exists(self.settings_path):
            with open(self.settings_path, encoding="utf-8") as f:
                saved = json.load(f)
        if saved != self.settings:
            saved = saved or {}
            differences = ", ".join(f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in sorted(self.settings.items())
                                    if saved.get(k) != v)
            raise InferenceError(f"{self.partial} holds rows of an earlier infer with other settings ({differences}). "
                                 f"Rerun with those settings to finish it, or delete {self.partial} to start again.")
        with open(self.partial, "rb+") as f:
            lines = f.read().split(b"\n")[:-1]  # the last piece is empty, or a row cut off by a kill
            keep = len(lines) - len(lines) % batch_size
            f.truncate(sum(len(line) + 1 for line in lines[:keep]))
        return keep

    def _open(self):
        with open(self.settings_path, "w", encoding="utf-8") as f:
            json.dump(self.settings, f)
        self._file = open(self.partial, "a", encoding="utf-8")

    def write(self, rows: Iterable[dict]):
        """Appends a finished batch. The files appear with the first one: a run refused while
        reading or checking its first batch leaves nothing behind."""
        if self._file is None:
            self._open()
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self):
        if self._file is None:  # nothing was left to do: every row was written before
            self._open()
        self._file.close()
        os.replace(self.partial, self.path)
        os.remove(self.settings_path)


def batches(rows: Iterable[dict], batch_size: int, skip: int = 0) -> Iterator[tuple[int, list[dict]]]:
    """(batch number, up to batch_size rows) after the first `skip` rows (a multiple of batch_size)."""
    rows = itertools.islice(rows, skip, None)
    number = skip // batch_size
    while batch := list(itertools.islice(rows, batch_size)):
        yield number, batch
        number += 1
