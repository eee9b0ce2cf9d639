"""What a T5X user hits in the first hour: a run's own vocabulary, unreachable paths, export's
tokenizer, seqio metrics of every kind."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import linen as nn

from helpers import SMALL_MODEL, run_cli, step_config, train_config
from t5pod import (
    checkpoints,
    cli,
    configs,
    evaluation,
    ginconf,
    inference,
    models,
    network,
    partitioning,
    tasks,
    train_step,
    trainer,
)
from t5pod.configs import InferConfig, MeshConfig
from t5pod.data import demo_corpus

UNREACHABLE = "gs://t5pod-no-such-bucket-3f9c1e/spiece.model"


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_records_the_vocabulary_it_used_and_infer_from_its_config_works(tmp_path):
    run = tmp_path / "run"
    done = run_cli(
        "train",
        "--gin_file=runs/pretrain.gin",  # not demo.gin: VOCABULARY_PATH keeps the gs:// default
        "--gin_file=models/tiny.gin",
        f"--gin.MODEL_DIR='{run}'",
        "--gin.MIXTURE_OR_TASK_NAME='demo_span_corruption'",
        "--gin.t5pod.T5Config.vocab_size=2176",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        "--gin.TRAIN_STEPS=1",
        "--gin.BATCH_SIZE=4",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = (run / "config.gin").read_text()
    assert config.rstrip().endswith("VOCABULARY_PATH = 'demo'")
    (tmp_path / "in.jsonl").write_text(json.dumps({"inputs": "Return a list of the words."}) + "\n")
    infer = [
        "infer",
        f"--gin_file={run / 'config.gin'}",
        f"--gin.CHECKPOINT_PATH='{run}'",
        f"--input_file={tmp_path / 'in.jsonl'}",
    ]
    done = run_cli(*infer, f"--output_file={tmp_path / 'out.jsonl'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prediction" in json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    # A vocabulary that cannot be reached (a bucket offline, or none such) is one line, exit 2.
    done = run_cli(*infer, f"--output_file={tmp_path / 'out2.jsonl'}", f"--gin.VOCABULARY_PATH='{UNREACHABLE}'")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and UNREACHABLE in lines[0], done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_export_says_in_one_line_when_it_cannot_write_the_tokenizer(pretrained_demo_run, tmp_path):
    done = run_cli(
        "export-hf",
        str(pretrained_demo_run),
        str(tmp_path / "hf"),
        f"--gin_file={pretrained_demo_run / 'config.gin'}",
        f"--gin.VOCABULARY_PATH='{UNREACHABLE}'",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"no tokenizer written: {UNREACHABLE} cannot be read" in done.stdout
    assert (tmp_path / "hf" / "model.safetensors").exists() and not (tmp_path / "hf" / "spiece.model").exists()


# A seqio task with metrics of every kind seqio's Evaluator knows, on three fixed examples.
EXAMPLES = [
    {"inputs": "one two", "targets": "three"},
    {"inputs": "four", "targets": "five six"},
    {"inputs": "seven", "targets": "eight"},
]
received = {}


def _predict_metric(targets, predictions):
    received["predict"] = (list(targets), list(predictions))
    return {"predict_count": len(predictions)}


def _score_metric(targets, scores):
    received["score"] = (list(targets), list(scores))
    return {"mean_log_likelihood": float(np.mean(scores))}


def _aux_metric(targets, predictions, aux_values):
    received["aux"] = list(aux_values["scores"])
    return {"aux_count": len(aux_values["scores"])}


def _register_metrics_task():
    vocabulary = demo_corpus.vocabulary()
    name = "t5pod_test_every_metric_kind"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {k: [e[k] for e in EXAMPLES] for k in ("inputs", "targets")}
            ),
            splits=("validation",),
        ),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=True),
            "targets": seqio.Feature(vocabulary, add_eos=True),
        },
        metric_fns=[_predict_metric, _score_metric, _aux_metric],
    )
    return seqio.get_mixture_or_task(name)


def _random_predictor(lengths: dict):
    """(parameters, a Predictor over them) of SMALL_MODEL from seed 0, on one device, 2 rows a batch."""
    params = nn.unbox(
        models.build(SMALL_MODEL).init(jax.random.PRNGKey(0), **models.dummy_features(SMALL_MODEL))["params"]
    )
    config = InferConfig(checkpoint_path="", task_feature_lengths=lengths, batch_size=2, mesh=MeshConfig((1, 1)))
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    return params, inference.Predictor(SMALL_MODEL, config, vocabulary=None, mesh=mesh, params=params)


def _log_likelihood(params, input_ids, target_ids):
    """log p(targets + EOS | inputs) from the model's logits, computed here (not by the Predictor)."""
    inputs = np.array([input_ids + [1]], np.int32)
    targets = np.array([target_ids + [1]], np.int32)
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    logits = network.Transformer(SMALL_MODEL).apply({"params": params}, inputs, decoder_inputs)
    log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    return float(np.take_along_axis(log_probs, targets[..., None], axis=-1).sum())


def test_eval_gives_each_seqio_metric_the_model_output_it_asks_for():
    task = _register_metrics_task()
    params, predictor = _random_predictor({"inputs": 16, "targets": 8})
    config = predictor.config
    metrics, records = evaluation.evaluate_task(predictor, task, "validation", config.task_feature_lengths)
    assert metrics["predict_count"] == metrics["aux_count"] == metrics["examples"] == 3
    targets, predictions = received["predict"]
    assert targets == ["three", "five six", "eight"] and all(isinstance(p, str) for p in predictions)
    assert [r["prediction"] for r in records] == predictions
    # Score metrics get the log-likelihood of each target, as the model's own logits give it.
    vocabulary = demo_corpus.vocabulary()
    expected = [
        _log_likelihood(params, vocabulary.encode(e["inputs"]), vocabulary.encode(e["targets"])) for e in EXAMPLES
    ]
    assert received["score"][0] == targets
    np.testing.assert_allclose(received["score"][1], expected, rtol=1e-4)
    assert metrics["mean_log_likelihood"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert len(received["aux"]) == 3 and all(s < 0 for s in received["aux"])


class _Writer:
    def __init__(self):
        self.lines = []

    def write(self, step, metrics, split=None):
        pass

    def print(self, line):
        self.lines.append(line)


def test_eval_prints_counts_as_integers(tmp_path):
    task = _register_metrics_task()
    params, predictor = _random_predictor({"inputs": 16, "targets": 8})
    config = predictor.config
    writer = _Writer()
    evaluation.run(predictor, task.name, "validation", config.task_feature_lengths, 7, str(tmp_path), writer)
    (line,) = writer.lines
    assert "examples 3" in line and "examples 3.00" not in line and "predict_count 3" in line


T5X_USER_GIN = """from __gin__ import dynamic_registration
from t5x import utils
import __main__ as train_script

include 't5x/examples/t5/t5_1_1/small.gin'
include 't5x/configs/runs/pretrain.gin'

MIXTURE_OR_TASK_NAME = 'demo_span_corruption'
utils.SaveCheckpointConfig.period = 100
train_script.train:
  eval_period = 7
  random_seed = 3
"""


def test_a_t5x_gin_file_reads_with_its_t5x_names(tmp_path):
    path = tmp_path / "t5x_user.gin"
    path.write_text(T5X_USER_GIN)
    ginconf.parse(["tasks.gin", str(path)], ["MODEL_DIR='/run'"])
    config, model = ginconf.train_config(), ginconf.model_config()
    assert (config.checkpoint.period, config.eval.period, config.random_seed) == (100, 7, 3)
    assert (model.d_model, model.num_layers, model.feed_forward_proj) == (512, 8, "gated-gelu")  # T5 1.1 small
    assert config.data.mixture_or_task_name == "demo_span_corruption"


@pytest.mark.parametrize(
    "line, message",
    [
        ("partitioning.PjitPartitioner.num_partitions = 8", 'MESH_SHAPE="(-1, 8)"'),
        (
            "utils.RestoreCheckpointConfig.path = '/ckpt'",
            "utils.RestoreCheckpointConfig, a T5X setting t5pod does not read",
        ),
        ("include 't5x/contrib/moe/models.gin'", "has no t5pod twin"),
    ],
)
def test_what_a_t5x_gin_file_says_that_t5pod_cannot_is_one_line(tmp_path, capsys, line, message):
    path = tmp_path / "t5x_user.gin"
    path.write_text(T5X_USER_GIN + line + "\n")
    status = cli.main(["data", "--list", f"--gin_file={path}"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_mixture_or_task_module_registers_the_users_tasks(tmp_path, monkeypatch):
    (tmp_path / "my_t5x_tasks.py").write_text(
        "import seqio\n"
        "from t5pod.data import demo_corpus\n"
        "seqio.TaskRegistry.remove('my_t5x_task')\n"
        "seqio.TaskRegistry.add('my_t5x_task', source=seqio.TextLineDataSource({'train': 'x.txt'}),\n"
        "    output_features={'targets': seqio.Feature(demo_corpus.vocabulary())})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ginconf.parse(["tasks.gin"], ["MIXTURE_OR_TASK_MODULE='my_t5x_tasks'"])
    ginconf.register_tasks()
    assert seqio.get_mixture_or_task("my_t5x_task").name == "my_t5x_task"
    ginconf.parse(["tasks.gin"], ["MIXTURE_OR_TASK_MODULE='no_such_module_here'"])
    with pytest.raises(ValueError, match="MIXTURE_OR_TASK_MODULE 'no_such_module_here' cannot be imported.*PYTHONPATH"):
        ginconf.register_tasks()
    tasks.register_all()


def test_loss_normalizing_factor_divides_the_summed_loss_as_in_t5x():
    """With a factor F the gradient is of sum(token losses) / F: the per-token mean's gradient times
    target_tokens / F. The reported loss is the per-token mean either way."""
    batch = {
        "encoder_input_tokens": np.tile(np.arange(2, 18, dtype=np.int32), (4, 1)),
        "decoder_target_tokens": np.tile(np.arange(3, 11, dtype=np.int32), (4, 1)),
    }
    batch["decoder_input_tokens"] = np.pad(batch["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
    batch["decoder_loss_weights"] = np.ones_like(batch["decoder_target_tokens"])
    batch["decoder_loss_weights"][:, 6:] = 0  # 4 x 6 = 24 real target tokens
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    results = {}
    for factor in (None, 233472.0):
        step = step_config(
            task_feature_lengths={"inputs": 16, "targets": 8},
            batch_size=4,
            mesh_shape=(1, 1),
            loss_normalizing_factor=factor,
        )
        setup = trainer.create_state(SMALL_MODEL, step, mesh)
        with mesh, nn.logical_axis_rules(setup.rules):
            state = setup.init(jax.random.PRNGKey(0))
            _, metrics = trainer.make_train_step(step, setup, mesh)(state, batch, jax.random.PRNGKey(1))
        results[factor] = jax.device_get(metrics)
    assert float(results[None]["weight_sum"]) == 24
    np.testing.assert_allclose(
        float(results[233472.0]["grad_norm"]), float(results[None]["grad_norm"]) * 24 / 233472.0, rtol=1e-5
    )
    assert train_step.summarize(results[233472.0])["loss"] == pytest.approx(train_step.summarize(results[None])["loss"])
    with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR must be a positive number.*NUM_REAL_TARGET_TOKENS"):
        step_config(loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")


def test_a_umt5_folder_is_refused_at_its_config(tmp_path, capsys):
    (tmp_path / "umt5").mkdir()
    config = {
        "model_type": "umt5",
        "vocab_size": 256,
        "d_model": 8,
        "d_kv": 2,
        "d_ff": 16,
        "num_heads": 4,
        "num_layers": 1,
    }
    (tmp_path / "umt5" / "config.json").write_text(json.dumps(config))
    assert cli.main(["convert-hf", str(tmp_path / "umt5"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a umT5 model, whose every layer has its own relative position bias" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_logical_axis_rules_from_gin_replace_those_axes_rules():
    ginconf.parse(
        ["tasks.gin", "runs/pretrain.gin", "models/tiny.gin"],
        ["MODEL_DIR='/run'", "LOGICAL_AXIS_RULES=[('mlp', None), ('embed', 'model')]"],
    )
    step = ginconf.step_config()
    assert step.mesh.logical_axis_rules == (("mlp", None), ("embed", "model"))
    rules = partitioning.logical_rules(False, step.mesh.logical_axis_rules)
    assert dict(rules)["mlp"] is None and dict(rules)["embed"] == "model" and dict(rules)["heads"] == "model"
    mesh = partitioning.make_mesh((4, 2))
    setup = trainer.create_state(
        SMALL_MODEL,
        dataclasses.replace(
            step, batch=dataclasses.replace(step.batch, task_feature_lengths={"inputs": 16, "targets": 4})
        ),
        mesh,
    )
    wi = setup.shardings.params["encoder"]["layers_0"]["mlp"]["wi"].spec  # [embed, mlp]
    assert tuple(wi) == ("model", None)
    for bad, message in (
        ([("mlpp", "model")], "names 'mlpp', not a logical axis of t5pod"),
        ([("mlp", "tensor")], "maps 'mlp' to 'tensor'; the mesh axes are 'data', 'model' or None"),
        (["mlp"], "holds \\(logical axis, mesh axis\\) pairs"),
    ):
        with pytest.raises(ValueError, match=message):
            partitioning.logical_rules(False, configs.MeshConfig(logical_axis_rules=bad).logical_axis_rules)


def test_activations_follow_the_platform_unless_the_gin_files_say():
    ginconf.parse(["models/tiny.gin"])
    assert [ginconf.model_config(p).dtype for p in ("tpu", "gpu", "cpu")] == ["bfloat16", "bfloat16", "float32"]
    ginconf.parse(["models/tiny.gin"], ["t5pod.T5Config.dtype = 'float32'"])
    assert ginconf.model_config("tpu").dtype == "float32"


def _saved_opt_state(model_dir, model_config, step_config_):
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    setup = trainer.create_state(model_config, dataclasses.replace(step_config_, mesh=configs.MeshConfig((1, 1))), mesh)
    step = checkpoints.latest_step(str(model_dir / "checkpoints"))
    _, opt_state, _ = checkpoints.restore_train_state(str(model_dir), step, setup.abstract_state)
    return jax.device_get(opt_state)


@pytest.mark.slow
def test_fine_tuning_can_continue_the_checkpoints_adafactor_state(pretrained_demo_run, tmp_path):
    tasks.register_all()
    ginconf.parse([str(pretrained_demo_run / "config.gin")])
    model = dataclasses.replace(ginconf.model_config(), dropout_rate=0.0)
    settings = dict(
        train_steps=1,
        batch_size=8,
        schedule="constant",
        learning_rate=1e-3,
        initial_checkpoint_path=str(pretrained_demo_run),
        checkpoint_period=1,
    )
    pretrained = _saved_opt_state(pretrained_demo_run, model, step_config(**settings))
    runs = {}
    for restore in (False, True):
        config = train_config(tmp_path / str(restore), initial_optimizer_state=restore, **settings)
        trainer.train(config, model)
        runs[restore] = _saved_opt_state(tmp_path / str(restore), model, config.step)
    # The pre-training's two steps continue: Adafactor's count is 3 after one more; the schedule's is 1.
    assert int(pretrained[0].count) == 2
    assert (int(runs[True][0].count), int(runs[True][2].count)) == (3, 1)
    assert (int(runs[False][0].count), int(runs[False][2].count)) == (1, 1)
    # optax's Adafactor mixes a moment with decay 1 - (count + 1)^-0.8: 0 from a fresh state (the
    # fresh run's moment is the gradient squared), 1 - 3^-0.8 for the restored one (count 2).
    v = lambda state: state[0].v["encoder"]["encoder_norm"]["scale"]  # noqa: E731 - unfactored, [embed]
    decay = 1 - 3.0**-0.8
    np.testing.assert_allclose(v(runs[True]), decay * v(pretrained) + (1 - decay) * v(runs[False]), rtol=1e-4)
    with pytest.raises(ValueError, match="INITIAL_OPTIMIZER_STATE=True restores from INITIAL_CHECKPOINT_PATH"):
        train_config(tmp_path / "x", initial_optimizer_state=True)


def test_eval_refuses_a_split_without_labels(tmp_path):
    """GLUE's test rows carry label -1 (target '<unk>'); the postprocessed prediction of an unknown
    label is -1 too, so accuracy would read 100%."""
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "test.tsv").write_text("index\tsentence\n0\ta fine film\n1\ta dull one\n2\tnot bad\n")
    (glue / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na dull one\t0\nnot bad\t1\n")
    tasks.register_all(vocabulary_path="demo", glue_dir=str(tmp_path / "glue"))
    try:
        task = seqio.get_mixture_or_task("glue_sst2_v002")
        _, predictor = _random_predictor({"inputs": 16, "targets": 4})
        config = predictor.config
        with pytest.raises(evaluation.EvaluationError, match="'test' split has no labels"):
            evaluation.evaluate_task(predictor, task, "test", config.task_feature_lengths)
        metrics, _ = evaluation.evaluate_task(predictor, task, "validation", config.task_feature_lengths)
        assert metrics["examples"] == 3 and 0 <= metrics["accuracy"] <= 100
    finally:
        tasks.register_all()
