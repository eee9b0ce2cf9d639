"""`infer` as a function (`infer`), and its files: inputs streamed line by line (never held whole),
and an output written as batches finish, so that a killed run continues where it stopped when run
again.

While it runs, OUT.partial holds the finished rows in input order and OUT.partial.json the
settings they were made with; when every row is done OUT.partial becomes OUT. A rerun with the
same settings keeps the rows already written and skips their inputs; one with other settings is
refused rather than mixing two runs in one file.
"""

import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
from typing import Iterable, Iterator

import jax

from t5pod import checkpoints, distributed, evaluation, inference, metric_writers, run_lock
from t5pod.configs import InferConfig, T5Config
from t5pod.inference import InferenceError
from t5pod.progress import Progress


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
                raise InferenceError(
                    f"{path}:{number}: `{key}` must be a string, got "
                    f"{type(row[key]).__name__} {json.dumps(row[key])[:60]}."
                )
    else:
        row = {"inputs": line}
    if mode == "score" and "targets" not in row:
        raise InferenceError(
            f"{path}:{number}: --mode=score needs a `targets` field on every line "
            '(JSONL: {"inputs": ..., "targets": ...}).'
        )
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
        raise InferenceError(
            f"--output_file {path} cannot be written ({error.strerror}); choose a writable path."
        ) from None


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
            differences = ", ".join(
                f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in sorted(self.settings.items()) if saved.get(k) != v
            )
            raise InferenceError(
                f"{self.partial} holds rows of an earlier infer with other settings ({differences}). "
                f"Rerun with those settings to finish it, or delete {self.partial} to start again."
            )
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
        try:
            if self._file is None:
                self._open()
            for row in rows:
                self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            self._abandon()
            raise InferenceError(
                f"Writing {self.partial} failed ({error.strerror or error}); the whole batches written before are "
                "kept. Free space and run the same command to continue after them."
            ) from None

    def _abandon(self):
        """Closes the output after a failed write (its unwritten buffer cannot be flushed either)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

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


def check_request(input_file: str | None, task: str | None, output_file: str | None, mode: str) -> int | None:
    """Refuses a request that names no input (or two), no output or a missing or empty input file;
    returns the input file's rows (None for a task)."""
    if bool(input_file) == bool(task):
        raise ValueError("infer needs either --input_file=IN or --task=NAME (with --split).")
    if not output_file:
        raise ValueError("infer needs --output_file=OUT (JSONL).")
    if input_file and not os.path.isfile(input_file):
        raise FileNotFoundError(f"Input file {input_file} not found.")
    total = count_rows(input_file) if input_file else None
    if total == 0:
        raise ValueError(f"Input file {input_file} is empty: nothing to {mode}.")
    return total


def infer(
    model_config: T5Config,
    config: InferConfig,
    vocabulary,
    output_file: str,
    mode: str = "predict",
    input_file: str | None = None,
    task: str | None = None,
    split: str = "validation",
    total: int | None = None,
) -> int:
    """Predicts (mode "predict") or scores ("score") every row of input_file, or of a task's split, into
    output_file on the mesh of config; every process of a multi-host job calls it and process 0 writes.
    A killed run called again with the same settings continues after the rows written. total: the
    input file's rows when the caller has checked the request already. Returns the rows written."""
    if total is None:
        total = check_request(input_file, task, output_file, mode)
    source = os.path.abspath(input_file) if input_file else f"{task}:{split}"
    settings = {
        "input": source,
        "input_sha256": _fingerprint(input_file) if input_file else None,  # a file replaced at the same path
        "mode": mode,
        "checkpoint_path": checkpoints.absolute(config.checkpoint_path),
        "checkpoint_step": checkpoints.latest_step(config.checkpoint_path),
        "model": model_config.checkpoint_fields(),
        **{k: v for k, v in dataclasses.asdict(config).items() if k not in ("checkpoint_path", "mesh")},
    }
    output = ResumableOutput(output_file, settings)

    # One infer per output file: the same lease as a run's MODEL_DIR, beside the output, taken
    # before the partial output is read (reading it may cut off a half-written batch).
    lease = run_lock.RunLease(
        os.path.dirname(os.path.abspath(output_file)),
        name=os.path.basename(output_file) + ".lease",
        what=f"--output_file {output_file}",
    )

    def check_output_and_lock() -> int:
        if input_file and os.path.abspath(input_file) == os.path.abspath(output_file):
            raise InferenceError(f"--output_file {output_file} is the input file; name another file for the output.")
        check_output_path(output_file)
        lease.acquire()
        try:
            return output.rows_done(config.batch_size)
        except BaseException:
            lease.release()
            raise

    done = distributed.checked_by_first(check_output_and_lock)  # before anything is restored or decoded
    try:
        return _infer_rows(model_config, config, vocabulary, output, done, mode, input_file, task, split, total)
    finally:
        lease.release()


def _fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _infer_rows(model_config, config, vocabulary, output, done, mode, input_file, task, split, total) -> int:
    output_file = output.path
    predictor = inference.Predictor(model_config, config, vocabulary)
    if task:
        lengths = {"inputs": config.input_length, "targets": config.target_length}
        rows = (
            {
                "inputs": r["inputs_pretokenized"].decode(),
                "targets": r["targets_pretokenized"].decode(),
                "_ids": r["input_ids"],
                "_where": f"{task} {split} example {i + 1}",
            }
            for i, r in enumerate(evaluation.task_examples(task, split, lengths))
        )
        total = evaluation.task_size(task, split)
    else:
        rows = input_rows(input_file, mode)
    is_writer = jax.process_index() == 0
    if is_writer and done:
        print(f"Continuing {output.partial}: its first {done} rows are kept.", flush=True)
    progress = Progress(total, done, enabled=is_writer)
    for number, batch in batches(rows, config.batch_size, skip=done):
        results = _infer_batch(predictor, batch, number, mode)
        if is_writer:
            output.write(results)
        progress.update(len(batch))
    if is_writer:
        output.finish()
        progress.done(f"Wrote {progress.rows} {'scores' if mode == 'score' else 'predictions'} to {output_file}")
    return progress.rows


def _infer_batch(predictor, batch: list[dict], number: int, mode: str) -> list[dict]:
    """Output rows for one batch of input rows; this process encodes only the rows it owns."""
    encode, owned = predictor.vocabulary.encode, [predictor.owns(i) for i in range(len(batch))]
    input_ids = [(r.get("_ids") or encode(r["inputs"])) if mine else None for r, mine in zip(batch, owned)]
    clean = [{k: v for k, v in r.items() if k not in ("_ids", "_where")} for r in batch]
    if mode == "predict":
        predictions = predictor.predict_batch(input_ids, number)
        return [
            {**r, "prediction": predictor.vocabulary.decode(p), "prediction_ids": p} for r, p in zip(clean, predictions)
        ]
    refusal = None
    target_ids = [encode(r["targets"]) if mine else None for r, mine in zip(batch, owned)]
    try:
        for row, ids, targets, mine in zip(batch, input_ids, target_ids, owned):
            if mine:
                inference.check_fits(ids, predictor.config.input_length, "inputs", row["_where"])
                inference.check_fits(targets, predictor.config.target_length, "targets", row["_where"])
    except InferenceError as error:
        refusal = error
    if distributed.agree(refusal is not None):  # a row refused on one process stops them all
        raise refusal or InferenceError("another process refused a row of this batch; its error says which.")
    scores = predictor.score_batch(input_ids, target_ids)
    return [{**r, "score": s} for r, s in zip(clean, scores)]
