"""Inference from a checkpoint: predictions or scores for a file or a task split, and seqio-style
evaluation (predict, postprocess, metrics) of a task or mixture.

Inputs are batched to a fixed batch size (the last batch padded) so the decoder compiles once.
"""

import json
import os
import tempfile
from typing import Iterable, Iterator

import jax
import numpy as np
import seqio
from flax import linen as nn

from t5pod import checkpoints, decoding, models
from t5pod.configs import InferConfig, T5Config
from t5pod.data import pipeline


class InferenceError(ValueError):
    pass


def load_params(model_config: T5Config, checkpoint_path: str, step: int | None = None):
    """Parameters of a checkpoint (default: the newest), checked against the model config."""
    abstract = nn.unbox(models.abstract_variables(model_config)["params"])
    try:
        return checkpoints.restore_params(checkpoint_path, model_config, abstract, step)
    except checkpoints.CheckpointError:
        raise
    except (ValueError, KeyError) as error:
        raise checkpoints.CheckpointError(
            f"The checkpoint in {checkpoint_path} does not fit the gin model or cannot be read "
            f"({checkpoints.describe_read_error(error)}). Pass the model gin file it was trained with, or point "
            "CHECKPOINT_PATH at an intact checkpoint.") from None
    except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds for a damaged file
        raise checkpoints.CheckpointError(
            f"The checkpoint in {checkpoint_path} cannot be read ({checkpoints.describe_read_error(error)}); point "
            "CHECKPOINT_PATH at an intact checkpoint.") from None


def read_input_file(path: str, mode: str) -> list[dict]:
    """JSONL objects with `inputs` (and `targets` for score), or plain text lines (predict only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Input file {path} not found.")
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    is_jsonl = path.endswith((".jsonl", ".json")) or (lines and lines[0].lstrip().startswith("{"))
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if is_jsonl:
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
        rows.append(row)
    if not rows:
        raise InferenceError(f"Input file {path} is empty: nothing to {mode}.")
    return rows


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
    """Appends rows to a JSONL file (creating it): earlier rows are kept."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_jsonl_atomically(path: str, rows: Iterable[dict]):
    """Writes to a temporary file beside `path` and renames it: a failure never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory, prefix=".infer-", delete=False)
    try:
        with handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(handle.name, path)
    except BaseException:
        os.unlink(handle.name)
        raise


def _pad_rows(ids: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        row = row[:length - 1] + [decoding.EOS] if len(row) >= length else row + [decoding.EOS]
        out[i, :len(row)] = row
    return out


def _batches(items: list, batch_size: int) -> Iterator[tuple[list, int]]:
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        yield chunk + [chunk[-1]] * (batch_size - len(chunk)), len(chunk)


class Predictor:
    """A model, its parameters and compiled decode/score functions for one InferConfig."""

    def __init__(self, model_config: T5Config, config: InferConfig, vocabulary, params=None):
        self.config, self.vocabulary = config, vocabulary
        self.model, self.model_config = models.build(model_config), model_config
        self.params = params if params is not None else load_params(model_config, config.checkpoint_path)
        model, c = self.model, config
        if c.beam_size > 1:
            self._decode = jax.jit(lambda p, x, rng: jax.tree_util.tree_map(
                lambda a: a[:, 0], decoding.beam_search(model, p, x, c.max_decode_length, c.beam_size, c.alpha)))
        else:
            self._decode = jax.jit(lambda p, x, rng: decoding.sample_decode(
                model, p, x, c.max_decode_length, rng, c.temperature, c.top_k))
        self._score = jax.jit(lambda p, batch: decoding.score(model, p, batch))

    def load_step(self, step: int):
        """Switches to another checkpoint of the same run (no recompilation)."""
        self.params = load_params(self.model_config, self.config.checkpoint_path, step)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return _pad_rows([self.vocabulary.encode(t) for t in texts], self.config.input_length)

    def predict_ids(self, input_ids: list[list[int]]) -> list[list[int]]:
        """Token ids (without EOS) predicted for each input's token ids (without EOS)."""
        out = []
        rng = jax.random.PRNGKey(self.config.seed)
        for number, (chunk, real) in enumerate(_batches(input_ids, self.config.batch_size)):
            tokens, _ = self._decode(self.params, _pad_rows(chunk, self.config.input_length),
                                     jax.random.fold_in(rng, number))
            out += [decoding.strip_after_eos(row) for row in np.asarray(tokens)[:real]]
        return out

    def score_ids(self, input_ids: list[list[int]], target_ids: list[list[int]]) -> list[float]:
        """Log-likelihood of each target (EOS included) given its input."""
        pairs = list(zip(input_ids, target_ids))
        out = []
        for chunk, real in _batches(pairs, self.config.batch_size):
            batch = models.scoring_features(self.model_config, _pad_rows([i for i, _ in chunk], self.config.input_length),
                                            _pad_rows([t for _, t in chunk], self.config.target_length))
            out += [float(s) for s in np.asarray(self._score(self.params, batch))[:real]]
        return out


def _check_fits(ids: list[list[int]], length: int, feature: str):
    """Scores are of whole sequences: one that does not fit (with its EOS) is an error, not a cut."""
    for number, row in enumerate(ids, 1):
        if len(row) + 1 > length:
            raise InferenceError(
                f"Row {number}: its {feature} are {len(row) + 1} tokens with EOS, more than "
                f"TASK_FEATURE_LENGTHS['{feature}'] = {length}; score with --gin.TASK_FEATURE_LENGTHS set to at "
                f"least {len(row) + 1} for {feature!r}.")


def run_file(predictor: Predictor, rows: list[dict], mode: str) -> list[dict]:
    """Rows in input order with `prediction` and `prediction_ids`, or `score`."""
    vocabulary = predictor.vocabulary
    input_ids = [vocabulary.encode(r["inputs"]) for r in rows]
    if mode == "score":
        target_ids = [vocabulary.encode(r["targets"]) for r in rows]
        _check_fits(input_ids, predictor.config.input_length, "inputs")
        _check_fits(target_ids, predictor.config.target_length, "targets")
        scores = predictor.score_ids(input_ids, target_ids)
        return [{**r, "score": s} for r, s in zip(rows, scores)]
    predictions = predictor.predict_ids(input_ids)
    return [{**r, "prediction": vocabulary.decode(p), "prediction_ids": p} for r, p in zip(rows, predictions)]


def task_rows(name: str, split: str, lengths: dict) -> list[dict]:
    """Examples of a task split as rows with inputs/targets text and token ids (no EOS)."""
    task = pipeline.get_task_or_mixture(name)
    dataset = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
    rows = []
    for example in dataset.as_numpy_iterator():
        row = {k: v for k, v in example.items()}
        row["input_ids"] = [int(t) for t in example["inputs"] if t not in (0, decoding.EOS)]
        rows.append(row)
    return rows


def evaluate(predictor: Predictor, name: str, split: str, lengths: dict) -> dict[str, dict[str, float]]:
    """seqio-style evaluation: predict, postprocess targets and predictions, apply metric_fns."""
    provider = pipeline.get_task_or_mixture(name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    results = {}
    for task in tasks:
        if not task.metric_fns or split not in task.splits:
            continue
        rows = task_rows(task.name, split, lengths)
        predictions = predictor.predict_ids([r["input_ids"] for r in rows])
        decode = predictor.vocabulary.decode
        postprocess = task.postprocess_fn or (lambda output, example=None, is_target=False: output)
        targets = [postprocess(r["targets_pretokenized"].decode("utf-8"), example=r, is_target=True) for r in rows]
        outputs = [postprocess(decode(p), example=r, is_target=False) for p, r in zip(predictions, rows)]
        metrics = {}
        for metric_fn in task.metric_fns:
            metrics.update({k: float(v) for k, v in metric_fn(targets, outputs).items()})
        metrics["examples"] = len(rows)
        results[task.name] = metrics
    if not results:
        raise InferenceError(f"{name} has no task with metrics and a {split!r} split to evaluate.")
    return results

