"""T5X habits: --gin_bindings, T5X binding names, and checkpoint paths that name one step."""

import json

import jax
import numpy as np
import pytest

from t5pod import checkpoints, cli, ginconf
from t5pod import configs
from t5pod.configs import T5Config

TRAIN_GIN = ["tasks.gin", "runs/pretrain.gin"]


@pytest.mark.parametrize(
    "t5x, value, macro, field",
    [
        ("utils.SaveCheckpointConfig.period", "7", "CHECKPOINT_PERIOD", "checkpoint.period"),
        ("utils.SaveCheckpointConfig.keep", "3", "KEEP_CHECKPOINTS", "checkpoint.keep"),
        ("trainer.Trainer.num_microbatches", "4", "NUM_MICROBATCHES", "optimizer.num_microbatches"),
        ("utils.create_learning_rate_scheduler.base_learning_rate", "0.5", "LEARNING_RATE", "optimizer.learning_rate"),
        ("utils.create_learning_rate_scheduler.warmup_steps", "123", "WARMUP_STEPS", "optimizer.warmup_steps"),
        ("train.eval_period", "9", "EVAL_PERIOD", "eval.period"),
        ("train.total_steps", "11", "TRAIN_STEPS", "train_steps"),
        ("train.random_seed", "5", "RANDOM_SEED", "random_seed"),
    ],
)
def test_t5x_bindings_set_the_t5pod_macro(t5x, value, macro, field):
    ginconf.parse(TRAIN_GIN, ["MODEL_DIR = '/unused'", f"{t5x} = {value}"])
    assert ginconf.macro(macro) == json.loads(value)
    assert configs.flat(ginconf.train_config())[field] == json.loads(value)


@pytest.mark.parametrize(
    "t5x, named",
    [
        ("partitioning.PjitPartitioner.num_partitions = 8", "MESH_SHAPE"),
        ("utils.create_learning_rate_scheduler.factors = 'constant * rsqrt_decay'", "LEARNING_RATE_SCHEDULE"),
        ("TRAIN_STEPS_RELATIVE = 100", "TRAIN_STEPS"),
        ("INFER_OUTPUT_DIR = '/tmp/x'", "--output_file"),
    ],
)
def test_t5x_bindings_without_a_twin_name_what_to_set(t5x, named):
    with pytest.raises(ValueError, match="T5X setting") as error:
        ginconf.parse(TRAIN_GIN, ["MODEL_DIR = '/unused'", t5x])
    assert named in str(error.value)


def test_gin_bindings_flag_is_repeatable_like_t5x(capsys):
    status = cli.main(
        [
            "data",
            "--task=demo_span_corruption",
            "--num_examples=1",
            "--gin_bindings=MIXING_TEMPERATURE = 2.0",
            "--gin_bindings=TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 6}",
        ]
    )
    assert status == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["inputs"]["ids"]) == 16 and len(row["targets"]["ids"]) <= 6  # targets are not padded
    assert cli.main(["data", "--task=demo_span_corruption", "--gin_bindings=NUM_EXAMPLES = 3"]) == 2
    assert "Unknown gin macro NUM_EXAMPLES" in capsys.readouterr().err


def test_a_checkpoint_path_may_name_one_step(tmp_path):
    config = T5Config(vocab_size=64, d_model=8, d_kv=4, num_heads=2, d_ff=16, num_layers=1, num_decoder_layers=1)
    saved = {step: {"w": np.full((2, 3), float(step), np.float32)} for step in (1, 3)}
    for step, params in saved.items():
        checkpoints.save_params(str(tmp_path / "ckpt"), params, config, step)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved[1])
    assert checkpoints.named_step(str(tmp_path / "ckpt")) is None
    assert checkpoints.named_step(str(tmp_path / "ckpt" / "1")) == 1
    assert checkpoints.latest_step(str(tmp_path / "ckpt")) == 3
    assert checkpoints.latest_step(str(tmp_path / "ckpt" / "1")) == 1
    assert checkpoints.all_steps(str(tmp_path / "ckpt" / "1")) == [1]
    restored = checkpoints.restore_params(str(tmp_path / "ckpt" / "1"), config, abstract)
    np.testing.assert_array_equal(restored["w"], saved[1]["w"])
    # A run folder whose name is a number is a folder of checkpoints, not one step.
    run = tmp_path / "7"
    checkpoints.save_params(str(run / "checkpoints"), saved[3], config, 3)
    assert checkpoints.named_step(str(run)) is None and checkpoints.latest_step(str(run)) == 3


@pytest.mark.parametrize(
    "command, macros",
    [
        ("train", ["TRAIN_STEPS = 524288", "BATCH_SIZE", "TASK_FEATURE_LENGTHS"]),
        ("infer", ["INFER_BATCH_SIZE = 8", "BEAM_SIZE = 1"]),
        ("eval", ["EVAL_SPLIT = 'validation'", "CHECKPOINT_PATH"]),
    ],
)
def test_help_lists_the_run_macros_with_defaults_and_an_example(command, macros, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(m in text for m in macros), text[-1500:]
    assert "example:" in text and f"python -m t5pod {command} " in text


def test_tfds_data_dir_flag_sets_the_macro(capsys):
    assert cli.main(["data", "--list", "--tfds_data_dir=/data/tfds"]) == 0
    assert "c4_v220_span_corruption" in capsys.readouterr().out
    assert ginconf.macro("TFDS_DATA_DIR") == "/data/tfds"
