"""The settings table: one source (the gin files' comments), complete, current in docs/, and the
code's own macro names agree with the gin files' bindings."""

import dataclasses
import re

import pytest

from conftest import REPO
from t5pod import cli, configs, ginconf, run_dir, settings

GIN = REPO / "gin"


def _defined_in(path) -> set[str]:
    """Macro names assigned at the start of a line of a gin file (an independent, plainer reading)."""
    return {
        line.split("=")[0].strip() for line in path.read_text().splitlines() if re.match(r"[A-Z][A-Z0-9_]*\s*=", line)
    }


def test_every_run_macro_is_in_the_table_with_a_meaning():
    rows = {s.name: s for s in settings.settings()}
    defined = set().union(*(_defined_in(GIN / name) for name in settings.MACRO_FILES))
    assert set(rows) == defined
    assert [name for name, s in rows.items() if not s.meaning] == []
    # Macros the commands read themselves, not through a gin binding, are settings too.
    assert {"VOCABULARY_PATH", *ginconf.DATA_COMMAND_MACROS} <= set(rows)
    # No other shipped gin file (demo runs, mixing, fine-tuning methods) invents a macro of its own,
    # apart from the ones a command defines itself in that file's own block.
    others = {path for path in GIN.rglob("*.gin") if "models" not in path.parts}
    invented = {f"{path.relative_to(GIN)}: {name}" for path in others for name in _defined_in(path) - set(rows)}
    assert invented == set()


def test_a_meaning_goes_on_over_indented_comment_lines():
    task_files = next(m for m in settings.read_macros("tasks.gin") if m.name == "TASK_FILES")
    assert task_files.default == "{}"
    assert task_files.meaning == (
        "local files instead of TFDS for summarization, translation, SQuAD: "
        "{'cnn_dailymail_v002': {'train': 'cnndm/train*.jsonl', 'validation': ...}}"
    )
    seed = {s.name: s for s in settings.settings()}["RANDOM_SEED"]
    assert seed.commands == ("train", "plan", "infer", "eval", "probe")
    assert seed.defaults == {"runs/pretrain.gin": "0", "runs/infer.gin": "0"}


def test_the_docs_page_is_current():
    assert (REPO / "docs" / "settings.md").read_text() == settings.markdown(), (
        "docs/settings.md is stale: run `make docs`"
    )
    table = [line for line in settings.markdown().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table) == len(settings.settings())
    learning_rate = next(line for line in table if line.startswith("| LEARNING_RATE |"))
    # Pre-training's default, prompt tuning's, and fine-tuning's.
    assert "| `1.0` (runs/pretrain.gin); `0.3` (finetuning/prompt_tuning.gin) | `1e-3` |" in learning_rate


def test_every_command_of_the_parser_runs_a_function():
    choices = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == set(cli.COMMANDS)
    assert all(callable(run) for run in cli.COMMANDS.values())


def test_help_prints_each_macro_with_its_meaning():
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for line in (GIN / "runs" / "pretrain.gin").read_text().splitlines():
        match = re.match(r"([A-Z][A-Z0-9_]*) = (.*?)\s+# (.*)$", line)
        if match:
            assert f"  {match[1]} = {match[2]}  # {match[3]}" in text, match[1]


LENGTHS = {"inputs": 8, "targets": 4}
# (config class, the other arguments it needs, its gin file, {field: a value out of range})
OUT_OF_RANGE = [
    (configs.BatchConfig, {"task_feature_lengths": LENGTHS}, "runs/pretrain.gin", {"batch_size": 0}),
    (
        configs.OptimizerConfig,
        {},
        "runs/pretrain.gin",
        {"learning_rate": 0, "num_microbatches": 0, "warmup_steps": -1, "z_loss": -1, "label_smoothing": -0.1},
    ),
    (configs.CheckpointConfig, {}, "runs/pretrain.gin", {"period": 0}),
    (configs.TrainEvalConfig, {}, "runs/pretrain.gin", {"period": -1, "steps": 0}),
    (configs.MeshConfig, {}, "runs/pretrain.gin", {"shape": (0, 1)}),
    (
        configs.TrainConfig,
        {
            "model_dir": "run",
            "data": configs.DataConfig("demo"),
            "batch": configs.BatchConfig(LENGTHS, 8),
            "train_steps": 1,
        },
        "runs/pretrain.gin",
        {"train_steps": 0, "log_period": 0},
    ),
    (
        configs.InferConfig,
        {"checkpoint_path": "run"},
        "runs/infer.gin",
        {"batch_size": 0, "max_decode_length": 0, "beam_size": 0, "alpha": -1, "temperature": -1, "top_k": -1},
    ),
]


@pytest.mark.parametrize("cls,others,gin_file,bad", OUT_OF_RANGE, ids=[case[0].__name__ for case in OUT_OF_RANGE])
def test_a_setting_out_of_range_is_named_by_the_macro_its_gin_file_binds(cls, others, gin_file, bad):
    bound = settings.field_macros(gin_file, f"t5pod.{cls.__name__}")
    if cls is configs.TrainConfig:
        assert bound == {
            "model_dir": "MODEL_DIR",
            "train_steps": "TRAIN_STEPS",
            "log_period": "LOG_PERIOD",
            "random_seed": "RANDOM_SEED",
        }
    for field, value in bad.items():
        with pytest.raises(ValueError) as error:
            cls(**{**others, field: value})
        assert str(error.value).startswith(f"{bound[field]} must"), (cls.__name__, field, str(error.value))


def test_every_part_of_a_run_is_bound_from_its_macros():
    parts = {f.name: f.type for f in dataclasses.fields(configs.TrainConfig) if dataclasses.is_dataclass(f.type)}
    assert set(parts) == {"data", "batch", "optimizer", "mesh", "checkpoint", "eval"}
    text = (GIN / "runs" / "pretrain.gin").read_text()
    for name, cls in parts.items():
        assert f"  {name} = @t5pod.{cls.__name__}()" in text, name
        # Every field of the part is bound from a macro, except the ones left to their defaults on purpose.
        unbound = {f.name for f in dataclasses.fields(cls)} - set(
            settings.field_macros("runs/pretrain.gin", f"t5pod.{cls.__name__}")
        )
        assert unbound <= {"pack", "loss_normalizing_factor", "asynchronous", "split"}, (name, unbound)
    infer = settings.field_macros("runs/infer.gin", "t5pod.InferConfig")
    assert (
        infer["batch_size"] == "INFER_BATCH_SIZE"
        and "  mesh = @t5pod.MeshConfig()" in (GIN / "runs" / "infer.gin").read_text()
    )
    evaluate = settings.field_macros("runs/eval.gin", "t5pod.EvalConfig")
    assert evaluate == {
        "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
        "split": "EVAL_SPLIT",
        "output_dir": "EVAL_OUTPUT_DIR",
        "use_cached": "USE_CACHED_TASKS",
    }


def test_the_resume_check_names_settings_that_exist():
    macros = _defined_in(GIN / "runs" / "pretrain.gin") | _defined_in(GIN / "tasks.gin")
    for name, (named, _) in run_dir._STREAM_SETTINGS.items():
        if named.startswith("t5pod."):
            _, cls, field = named.split(".")
            assert field in {f.name for f in dataclasses.fields(getattr(configs, cls))}, named
        else:
            assert named in macros, (name, named)


def test_a_required_macro_left_unset_is_named_with_its_fix():
    for files, name in (
        (["tasks.gin", "runs/eval.gin"], "CHECKPOINT_PATH"),
        (["tasks.gin", "runs/pretrain.gin"], "MODEL_DIR"),
    ):
        with pytest.raises(ValueError, match=f"The gin macro {name} has no value .* pass --gin.{name}="):
            ginconf.parse(files)
    ginconf.parse(
        ["tasks.gin", "runs/eval.gin"], ["CHECKPOINT_PATH = '/ckpt'", "MIXTURE_OR_TASK_NAME = 'glue_cola_v002'"]
    )
    assert ginconf.eval_config() == configs.EvalConfig("glue_cola_v002", "validation", None, False)


# The operative config.gin of a run written before TrainConfig was composed of parts (abridged).
OLDER_CONFIG_GIN = """
BATCH_SIZE = 4
MODEL_DIR = '/runs/old'
TrainConfig.model_dir = %MODEL_DIR
TrainConfig.mixture_or_task_name = 'demo_span_corruption'
TrainConfig.task_feature_lengths = {'inputs': 32, 'targets': 8}
TrainConfig.train_steps = 2
TrainConfig.batch_size = %BATCH_SIZE
TrainConfig.checkpoint_period = 250
TrainConfig.keep_checkpoints = 3
TrainConfig.mesh_shape = (2, 4)
TrainConfig.fsdp = True
TrainConfig.eval_period = 5
TrainConfig.num_microbatches = 2
"""


def test_an_older_runs_config_gin_reads_as_the_composed_configs(tmp_path):
    path = tmp_path / "config.gin"
    path.write_text(OLDER_CONFIG_GIN)
    ginconf.parse([str(path)])
    config = ginconf.train_config()
    assert (config.model_dir, config.train_steps) == ("/runs/old", 2)
    assert config.data.mixture_or_task_name == "demo_span_corruption"
    assert (config.batch.batch_size, config.batch.task_feature_lengths) == (4, {"inputs": 32, "targets": 8})
    assert (config.checkpoint.period, config.checkpoint.keep) == (250, 3)
    assert config.mesh == configs.MeshConfig((2, 4), fsdp=True)
    assert (config.eval.period, config.optimizer.num_microbatches) == (5, 2)
    path.write_text(
        "InferConfig.checkpoint_path = '/runs/old'\nInferConfig.mesh_shape = (4, 2)\nInferConfig.fsdp = True\n"
    )
    ginconf.parse([str(path)])
    assert ginconf.infer_config().mesh == configs.MeshConfig((4, 2), fsdp=True)
    # A binding of an old name on the command line sets the new field too.
    ginconf.parse(["tasks.gin", "runs/pretrain.gin"], ["MODEL_DIR = '/run'", "t5pod.TrainConfig.pack = False"])
    assert ginconf.train_config().batch.pack is False
