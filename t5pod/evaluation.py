"""seqio-style evaluation on the mesh: decode a task's split, postprocess targets and predictions,
apply the task's metric functions, and write T5X's inference_eval files.

Used by `eval` (for the checkpoints it is given) and by training at each EVAL_PERIOD with
INFERENCE_EVAL set. Files under OUT_DIR/inference_eval/, written by process 0:
  <task>-<step>.jsonl     inputs, targets and prediction per example (a second evaluation of the
                          same step goes to <task>-<step>.<n>.jsonl: nothing is overwritten)
  <task>-metrics.jsonl    one line per evaluation: {"step": ..., metric: value, ...}
"""

import itertools
import json
import os
from typing import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from t5pod import checkpoints, decoding, inference, metric_writers
from t5pod.configs import EvalConfig
from t5pod.progress import Progress
from t5pod.data import pipeline
from t5pod.data.glue_metrics import as_text

INFERENCE_EVAL_FOLDER = "inference_eval"
# Targets of unlabelled examples (GLUE and SuperGLUE test rows: label -1), as the tasks write them.
_NO_LABEL = ("<unk>", "-1.0", "")


class EvaluationError(ValueError):
    pass


def task_examples(name: str, split: str, lengths: dict, use_cached: bool = False) -> Iterator[dict]:
    """A task split's examples in order, streamed, with input token ids (no EOS) added; use_cached:
    read the task's seqio cache."""
    task = pipeline.get_task_or_mixture(name)
    dataset = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1, use_cached=use_cached)
    for example in dataset.as_numpy_iterator():
        row = dict(example)
        row["input_ids"] = [int(t) for t in example["inputs"] if t not in (0, decoding.EOS)]
        yield row


def task_size(name: str, split: str) -> int | None:
    """Examples in a task split when seqio knows without reading it (None otherwise)."""
    try:
        return pipeline.get_task_or_mixture(name).num_input_examples(split)
    except (ValueError, KeyError, NotImplementedError, AttributeError):
        return None


def task_rows(
    name: str, split: str, lengths: dict, max_examples: int | None = None, use_cached: bool = False
) -> list[dict]:
    """The first max_examples (default: all) examples of a task split, with input token ids."""
    return list(itertools.islice(task_examples(name, split, lengths, use_cached), max_examples))


def tasks_with_metrics(name: str, split: str) -> list[seqio.Task]:
    """The tasks of a task or mixture that have metrics (functions or seqio Metric objects) and the split."""
    provider = pipeline.get_task_or_mixture(name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    return [task for task in tasks if task.metric_objs and split in task.splits]


def _metric_objects(task: seqio.Task) -> list:
    """The task's seqio Metric objects other than the wrappers seqio makes of its metric functions."""
    return [m for m in task.metric_objs if not isinstance(m, seqio.metrics.PassthroughLegacyMetric)]


def _values(results) -> dict:
    return {k: float(getattr(v, "value", v)) for k, v in results.items()}


def compute_metrics(task: seqio.Task, rows: list[dict], prediction_ids: list, predictor) -> dict:
    """The task's metrics, as seqio's Evaluator splits them: metric functions of (targets, predictions)
    get postprocessed decoded predictions; of (targets, scores) the log-likelihood of each target;
    of (targets, predictions, aux_values) the predictions and {"scores": their log-likelihoods}.
    seqio Metric objects get the model output of their model_output_type."""
    vocabulary = task.output_features["targets"].vocabulary
    postprocess = task.postprocess_fn or (lambda output, example=None, is_target=False: output)
    targets = [postprocess(as_text(r["targets_pretokenized"]), example=r, is_target=True) for r in rows]
    outputs = [postprocess(vocabulary.decode(p), example=r, is_target=False) for p, r in zip(prediction_ids, rows)]
    objects = _metric_objects(task)
    kinds = {m.model_output_type for m in objects}
    input_ids = [r["input_ids"] for r in rows]
    target_scores = prediction_scores = None
    if task.score_metric_fns or seqio.metrics.ModelOutputType.SCORE in kinds:
        target_ids = [[int(t) for t in r["targets"] if t not in (0, decoding.EOS)] for r in rows]
        target_scores = predictor.score_ids(input_ids, target_ids)
    if task.predict_with_aux_metric_fns or seqio.metrics.ModelOutputType.PREDICTION_WITH_AUX in kinds:
        prediction_scores = predictor.score_ids(input_ids, prediction_ids)
    metrics = {}
    for metric_fn in task.predict_metric_fns:
        metrics.update(_values(metric_fn(targets, outputs)))
    for metric_fn in task.score_metric_fns:
        metrics.update(_values(metric_fn(targets, target_scores)))
    for metric_fn in task.predict_with_aux_metric_fns:
        metrics.update(_values(metric_fn(targets, outputs, {"scores": prediction_scores})))
    model_outputs = {
        seqio.metrics.ModelOutputType.PREDICTION: prediction_ids,
        seqio.metrics.ModelOutputType.SCORE: np.asarray(target_scores),
        seqio.metrics.ModelOutputType.PREDICTION_WITH_AUX: (prediction_ids, {"scores": np.asarray(prediction_scores)}),
    }
    for metric in objects:
        if metric.model_output_type not in model_outputs:
            raise EvaluationError(
                f"{task.name} has a metric of model output type "
                f"{seqio.metrics.ModelOutputType.to_str(metric.model_output_type)}, which t5pod does not produce."
            )
        computed = metric.from_model_output(rows, model_outputs[metric.model_output_type], task.output_features)
        metrics.update(_values(computed.compute()))
    return metrics


def evaluate_task(
    predictor, task: seqio.Task, split: str, lengths: dict, max_examples: int | None = None, use_cached: bool = False
) -> tuple[dict, list[dict]]:
    """(metrics, one record per example: inputs, targets, prediction) of one task's split."""
    rows = task_rows(task.name, split, lengths, max_examples, use_cached)
    if rows and all(as_text(r["targets_pretokenized"]) in _NO_LABEL for r in rows):
        raise EvaluationError(
            f"{task.name}'s {split!r} split has no labels (its targets are placeholders, as in GLUE's test "
            "splits): its metrics would be meaningless. Evaluate the validation split, or write predictions "
            "with `infer --task=... --split=...`."
        )
    input_ids = [r["input_ids"] if predictor.owns(i) else None for i, r in enumerate(rows)]
    vocabulary = task.output_features["targets"].vocabulary
    progress = Progress(len(rows), what="examples", prefix=f"{task.name} ({split}): ", enabled=jax.process_index() == 0)
    prediction_ids = predictor.predict_ids(input_ids, progress.update)
    predictions = [vocabulary.decode(p) for p in prediction_ids]
    metrics = compute_metrics(task, rows, prediction_ids, predictor)
    metrics["examples"] = len(rows)
    records = [
        {
            "inputs": as_text(r.get("inputs_pretokenized", b"")),
            "targets": as_text(r["targets_pretokenized"]),
            "prediction": p,
        }
        for r, p in zip(rows, predictions)
    ]
    return metrics, records


def evaluate(
    predictor, name: str, split: str, lengths: dict, max_examples: int | None = None, use_cached: bool = False
) -> dict:
    """{task: metrics} for every task of `name` with metrics and the split."""
    tasks = tasks_with_metrics(name, split)
    if not tasks:
        raise EvaluationError(f"{name} has no task with metrics and a {split!r} split to evaluate.")
    return {task.name: evaluate_task(predictor, task, split, lengths, max_examples, use_cached)[0] for task in tasks}


def _free_name(folder: str, task: str, step: int) -> str:
    path = os.path.join(folder, f"{task}-{step}.jsonl")
    number = 1
    while tf.io.gfile.exists(path):
        path = os.path.join(folder, f"{task}-{step}.{number}.jsonl")
        number += 1
    return path


def write_inference_eval(out_dir: str, task: str, step: int, metrics: dict, records: list[dict]) -> str:
    """Writes the step's predictions and appends its metrics line; returns the predictions' path."""
    folder = os.path.join(out_dir, INFERENCE_EVAL_FOLDER)  # local or on a bucket
    path = _free_name(folder, task, step)
    metric_writers.write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    metric_writers.append_lines(os.path.join(folder, f"{task}-metrics.jsonl"), [json.dumps({"step": step, **metrics})])
    return path


def run(
    predictor,
    name: str,
    split: str,
    lengths: dict,
    step: int,
    out_dir: str,
    writer,
    max_examples: int | None = None,
    use_cached: bool = False,
) -> dict:
    """Evaluates every task of `name` with metrics at `step`: inference_eval files, metrics.jsonl
    rows (split "inference_eval") and TensorBoard scalars inference_eval/<task>/<metric>, a console
    line per task. Every process decodes its share; process 0 writes. Returns {task: metrics}."""
    tasks = tasks_with_metrics(name, split)
    if not tasks:
        raise EvaluationError(f"{name} has no task with metrics and a {split!r} split to evaluate.")
    results = {}
    for task in tasks:
        metrics, records = evaluate_task(predictor, task, split, lengths, max_examples, use_cached)
        if jax.process_index() == 0:
            write_inference_eval(out_dir, task.name, step, metrics, records)
        writer.write(step, {f"{task.name}/{k}": v for k, v in metrics.items()}, split=INFERENCE_EVAL_FOLDER)
        shown = "  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.2f}" for k, v in metrics.items())
        writer.print(f"{task.name} ({split}, step {step}): {shown}")
        results[task.name] = metrics
    return results


def best_steps(out_dir: str, task_names: list[str]) -> dict[str, tuple[int, str, float]]:
    """{task: (step, metric, value)} with the highest first metric in the task's metrics file (every
    evaluation recorded there, in training or by `eval`; ties go to the earliest)."""
    best = {}
    for task in task_names:
        path = os.path.join(out_dir, INFERENCE_EVAL_FOLDER, f"{task}-metrics.jsonl")
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                row = json.loads(line)
                metric = next(k for k in row if k != "step")
                if task not in best or row[metric] > best[task][2]:
                    best[task] = (row["step"], metric, row[metric])
    return best


def evaluate_checkpoints(
    model_config, config, vocabulary, eval_config: EvalConfig, all_checkpoints: bool = False
) -> list[dict]:
    """`t5pod eval` as a function: evaluates the newest checkpoint of config.checkpoint_path (or every
    one) on the tasks of eval_config.mixture_or_task_name that have metrics, on the mesh of config;
    every process of a multi-host job calls it. Appends a row per task and step to
    eval_metrics.jsonl in eval_config.output_dir (default: the checkpoint path), writes the
    inference_eval/ files and TensorBoard rows, and with several checkpoints prints the best step
    per task. Returns the rows."""
    name, split = eval_config.mixture_or_task_name, eval_config.split
    if not tasks_with_metrics(name, split):
        raise EvaluationError(f"{name} has no task with metrics and a {split!r} split to evaluate.")
    out_dir = eval_config.output_dir or config.checkpoint_path
    is_writer = jax.process_index() == 0
    if is_writer:  # before any decoding, so that no evaluation is done only to be lost
        metric_writers.check_writable(out_dir, "The eval output folder (EVAL_OUTPUT_DIR, default CHECKPOINT_PATH)")
    lengths = {"inputs": config.input_length, "targets": config.target_length}
    steps = checkpoints.all_steps(config.checkpoint_path) if all_checkpoints else [None]  # None: the newest
    writer, rows, skipped, predictor = metric_writers.MetricWriter(out_dir, enabled=is_writer), [], [], None
    for step in steps:
        try:
            if predictor is None:
                predictor = inference.Predictor(model_config, config, vocabulary, step=step)
            else:
                predictor.load_step(step)
        except checkpoints.CheckpointError as error:
            if not all_checkpoints:
                raise
            skipped.append(step)  # one damaged checkpoint does not cost the others their evaluation
            writer.print(f"Warning: checkpoint {step} is skipped: {error}")
            continue
        step = step if step is not None else checkpoints.latest_step(config.checkpoint_path) or 0
        step_rows = [
            {"step": step, "split": split, "task": task, **metrics}
            for task, metrics in run(
                predictor, name, split, lengths, step, out_dir, writer, use_cached=eval_config.use_cached
            ).items()
        ]
        if is_writer:  # each step's rows as soon as they exist: a later failure does not lose them
            metric_writers.append_lines(
                os.path.join(out_dir, "eval_metrics.jsonl"), [json.dumps(row, ensure_ascii=False) for row in step_rows]
            )
        rows += step_rows
    writer.close()
    if len(steps) > 1 and is_writer:  # the files are process 0's
        for task, (step, metric, score) in sorted(best_steps(out_dir, sorted({r["task"] for r in rows})).items()):
            writer.print(f"best {task}: step {step} ({metric} {score:.2f})")
    if skipped:
        raise EvaluationError(
            f"Checkpoint{'s' if len(skipped) > 1 else ''} {', '.join(map(str, skipped))} of {config.checkpoint_path} "
            f"cannot be read and {'were' if len(skipped) > 1 else 'was'} not evaluated (named above); the "
            f"{len(steps) - len(skipped)} others' rows are in eval_metrics.jsonl."
        )
    return rows
