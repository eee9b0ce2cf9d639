"""The settings table: one source (the gin files' comments), complete, current in docs/, and the
code's own macro names agree with the gin files' bindings."""

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
    assert "| `1.0` | `1e-3` |" in learning_rate  # pre-training's and fine-tuning's defaults


def test_help_prints_each_macro_with_its_meaning():
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for line in (GIN / "runs" / "pretrain.gin").read_text().splitlines():
        match = re.match(r"([A-Z][A-Z0-9_]*) = (.*?)\s+# (.*)$", line)
        if match:
            assert f"  {match[1]} = {match[2]}  # {match[3]}" in text, match[1]


def test_the_code_spells_macros_as_the_gin_files_bind_them():
    train = settings.field_macros("runs/pretrain.gin", "t5pod.TrainConfig")
    infer = settings.field_macros("runs/infer.gin", "t5pod.InferConfig")
    assert train["train_steps"] == "TRAIN_STEPS" and infer["batch_size"] == "INFER_BATCH_SIZE"
    for field, named in configs._MACROS.items():
        bound = {train.get(field), infer.get(field)} - {None}
        assert bound and named.split(" ")[0] in bound, (field, named, bound)
    evaluate = settings.field_macros("runs/eval.gin", "t5pod.EvalConfig")
    assert evaluate == {
        "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
        "split": "EVAL_SPLIT",
        "output_dir": "EVAL_OUTPUT_DIR",
        "use_cached": "USE_CACHED_TASKS",
    }
    for field, named in run_dir._STREAM_SETTINGS.items():
        assert named == train.get(field, f"t5pod.TrainConfig.{field}"), (field, named)


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
