"""Linear probes of a frozen encoder (`python -m t5pod probe`): how much a task's answer can be read
off the mean-pooled encoder outputs with a linear model, from a checkpoint or from random weights.

Features are the encoder's final outputs averaged over each input's tokens ([examples, embed]),
computed on the mesh like decoding; `--features=embeddings` averages the token embeddings the
encoder reads instead (what pre-training put in the embedding table alone). Classification tasks
(class-name targets) fit scikit-learn's logistic regression, regression tasks (STS-B) ridge
regression; the regularisation strength is chosen by 5-fold cross-validation on the training
features alone, and the fitted model is scored once on the evaluation split: accuracy x 100, or
Pearson correlation x 100.
"""

import dataclasses
import json

import jax
import numpy as np
from flax import linen as nn

from t5pod.tasks import transfer
from t5pod import evaluation, inference, metric_writers, models, partitioning
from t5pod.configs import InferConfig, T5Config
from t5pod.data import benchmarks, pipeline
from t5pod.data.glue_metrics import as_text
from t5pod.linear_probe import REGULARISATION_GRID, fit_and_score  # noqa: F401  (REGULARISATION_GRID: probe's API)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    task: str
    kind: str  # "classification" (score: accuracy x 100) or "regression" (Pearson x 100)
    score: float
    train_examples: int
    eval_examples: int
    regularisation: float  # the cross-validated C (logistic) or alpha (ridge)
    features: str = "encoder"  # or "embeddings"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def random_params(model_config: T5Config, layout, seed: int):
    """Freshly initialised parameters (as a fine-tuning from random weights starts), laid out on the mesh."""
    model = models.build(model_config)
    features = models.dummy_features(model_config)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, **features)["params"]), out_shardings=layout.param_shardings)
    with layout.mesh, nn.logical_axis_rules(layout.rules):
        return init(jax.random.PRNGKey(seed))


def _base_task(task_name: str) -> str:
    return transfer.SUBSETS.get(task_name, (task_name,))[0]


def task_kind(task_name: str) -> str:
    """ "classification" for tasks whose targets are class names, "regression" for STS-B."""
    base = _base_task(task_name)
    if base in benchmarks.LABEL_CLASSES:
        return "classification"
    if base.startswith("glue_stsb"):
        return "regression"
    raise ValueError(f"probe takes a classification task or STS-B, not {task_name!r} (e.g. glue_sst2_1k_v002).")


def features_and_labels(
    predictor, task_name: str, split: str, lengths: dict, features: str = "encoder"
) -> tuple[np.ndarray, np.ndarray]:
    """(pooled encodings [examples, embed], labels [examples]) of a task split, labels as the task's
    postprocessor reads its targets (class ids, or STS-B's float). features: "encoder" (the encoder's
    outputs) or "embeddings" (the token embeddings it reads)."""
    task = pipeline.get_task_or_mixture(task_name)
    rows = evaluation.task_rows(task_name, split, lengths)
    if not rows:
        raise ValueError(f"{task_name}/{split} has no examples to probe.")
    postprocess = task.postprocess_fn
    labels = np.array(
        [postprocess(as_text(r["targets_pretokenized"]), example=r, is_target=True) for r in rows], np.float64
    )
    return predictor.encode_ids([r["input_ids"] for r in rows], features), labels


def probe(
    predictor,
    task_name: str,
    lengths: dict,
    train_split: str = "train",
    eval_split: str = "validation",
    eval_task: str | None = None,
    features: str = "encoder",
) -> ProbeResult:
    """Fits a linear probe on task_name's train_split and scores it on eval_task's (default the base
    benchmark task's: a transfer subset is scored on the dev set) eval_split."""
    if features not in inference.POOLED_FEATURES:
        raise ValueError(f"probe --features is one of {', '.join(inference.POOLED_FEATURES)}, not {features!r}.")
    kind = task_kind(task_name)
    eval_task = eval_task or _base_task(task_name)
    train_x, train_y = features_and_labels(predictor, task_name, train_split, lengths, features)
    eval_x, eval_y = features_and_labels(predictor, eval_task, eval_split, lengths, features)
    score, strength = fit_and_score(kind, train_x, train_y, eval_x, eval_y)
    return ProbeResult(task_name, kind, score, len(train_y), len(eval_y), strength, features)


def make_predictor(model_config: T5Config, config: InferConfig, vocabulary, random_init_seed: int | None = None):
    """A Predictor over config.checkpoint_path's parameters, or over random ones (random_init_seed set)."""
    if model_config.is_decoder_only:
        raise ValueError("probe reads an encoder: it takes encoder-decoder models only.")
    if random_init_seed is None:
        return inference.Predictor(model_config, config, vocabulary)
    mesh = partitioning.mesh_of(config.mesh)
    layout = inference.mesh_layout(model_config, mesh, config.mesh.fsdp, config.mesh.logical_axis_rules)
    return inference.Predictor(
        model_config, config, vocabulary, mesh=layout.mesh, params=random_params(model_config, layout, random_init_seed)
    )


def run(
    model_config: T5Config,
    config: InferConfig,
    vocabulary,
    task_name: str,
    random_init_seed: int | None = None,
    train_split: str = "train",
    eval_split: str = "validation",
    eval_task: str | None = None,
    features: str = "encoder",
    output_file: str | None = None,
) -> dict:
    """`t5pod probe` as a function: probes config.checkpoint_path's encoder (or fresh random weights
    with random_init_seed) on task_name; process 0 prints the result row and appends it to
    output_file. Returns the row."""
    predictor = make_predictor(model_config, config, vocabulary, random_init_seed)
    result = probe(predictor, task_name, config.task_feature_lengths, train_split, eval_split, eval_task, features)
    row = {
        **result.as_dict(),
        "checkpoint": None if random_init_seed is not None else config.checkpoint_path,
        "random_init_seed": random_init_seed,
    }
    if jax.process_index() == 0:
        print(json.dumps(row))
        if output_file:
            metric_writers.append_lines(output_file, [json.dumps(row, ensure_ascii=False)])
    return row
