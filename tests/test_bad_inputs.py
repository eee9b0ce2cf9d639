"""The bad-input catalogue: every mistake a user can make on the command line is one line on
stderr (exit status 2, no traceback), and nothing already written changes.

The commands run in this process (`t5pod.cli.main`), which is what `python -m t5pod` calls;
tests/test_training.py and others run the same commands as real subprocesses.
"""

import hashlib
import json
import os
import pathlib
import shutil
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from helpers import hf_reference
from t5pod import cli, run_lock
from t5pod.data import demo_corpus

TINY = ["--gin_file=models/tiny.gin", "--gin.t5pod.T5Config.vocab_size=2176", "--gin.VOCABULARY_PATH='demo'"]
TRAIN = [
    "--gin_file=demo.gin",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=8",  # 8 fake devices in tests
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    "--gin.EVAL_PERIOD=0",
]


def _tree_hash(path) -> str:
    """Names and bytes of everything under path (or of the file)."""
    digest = hashlib.sha256()
    if not os.path.exists(path):
        return "absent"
    if os.path.isfile(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            digest.update(open(full, "rb").read())
        digest.update(os.path.relpath(root, path).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory, pretrained_demo_run):
    """Folders the cases point at: a copy of a finished run, a converted checkpoint, inputs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    shutil.copytree(pretrained_demo_run, root / "run")
    hf_reference.make_checkpoint("t5_1_0", str(root / "hf"))
    assert cli.main(["convert-hf", str(root / "hf"), str(root / "converted")]) == 0
    (root / "a_file").write_text("not a folder\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("someone else's\n")
    (root / "outputs").mkdir()
    (root / "outputs" / "kept.jsonl").write_text("earlier results\n")
    (root / "inputs.jsonl").write_text(json.dumps({"inputs": "Return a list.", "targets": "yes"}) + "\n")
    (root / "empty.jsonl").write_text("")
    (root / "text_field.jsonl").write_text(json.dumps({"text": "no inputs"}) + "\n")
    (root / "number.jsonl").write_text(json.dumps({"inputs": 7}) + "\n")
    (root / "broken.jsonl").write_text('{"inputs": "fine"}\n{"inputs": \n')
    (root / "no_targets.jsonl").write_text(json.dumps({"inputs": "fine"}) + "\n")
    (root / "long_target.jsonl").write_text(json.dumps({"inputs": "a", "targets": "word " * 40}) + "\n")
    (root / "bad_syntax.gin").write_text("t5pod.T5Config.d_model = = 3\n")
    (root / "not_sentencepiece.model").write_bytes(b"not a SentencePiece model at all")
    (root / "t5x_garbage").mkdir()
    (root / "t5x_garbage" / "checkpoint").write_bytes(bytes(range(256)) * 8)
    (root / "hf_bad_json").mkdir()
    (root / "hf_bad_json" / "config.json").write_text('{"d_model": 32,')
    shutil.copytree(root / "hf", root / "hf_truncated")
    tensors = root / "hf_truncated" / "model.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:5000])
    shutil.copytree(root / "run", root / "run_truncated")
    params = root / "run_truncated" / "checkpoints" / "2" / "params"
    for dirpath, _, files in os.walk(params):  # cut every array file of the newest checkpoint
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.getsize(full) > 64 and "ocdbt" not in name and not name.endswith(("json", "_METADATA")):
                open(full, "r+b").truncate(32)
    shutil.copytree(root / "run", root / "run_position_cut")
    for data_file in (root / "run_position_cut" / "data_positions").glob("*/process_0.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:100])
    shutil.copytree(root / "run", root / "run_position_gone")
    shutil.rmtree(root / "run_position_gone" / "data_positions")
    shutil.copytree(root / "run", root / "run_leased")
    lease = {
        "owner": "other",
        "host": "elsewhere",
        "pid": 1,
        "started": time.time(),
        "heartbeat": time.time(),
        "timeout_s": 3600,  # live for the whole test session
    }
    (root / "run_leased" / run_lock.LEASE_FILE).write_text(json.dumps(lease))
    return root


def _infer(world, *flags):
    return [
        "infer",
        *TINY,
        f"--gin.CHECKPOINT_PATH='{world / 'run'}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        *flags,
    ]


# (name, argv built from the world folder, text the one line must hold, paths that must not change)
CASES = [
    # train
    (
        "keep_checkpoints_zero",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'run'}'", "--gin.KEEP_CHECKPOINTS=0"],
        "KEEP_CHECKPOINTS must be at least 1",
        ["run"],
    ),
    (
        "keep_period_zero",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'run'}'", "--gin.KEEP_PERIOD=0"],
        "KEEP_PERIOD must be at least 1",
        ["run"],
    ),
    (
        "lower_case_macro",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.train_steps=1"],
        "Unknown gin macro train_steps",
        ["new"],
    ),
    (
        "misspelt_macro",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.TRAIN_STEPZ=1"],
        "Did you mean TRAIN_STEPS",
        ["new"],
    ),
    (
        "unknown_parameter",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.t5pod.TrainConfig.bogus=1"],
        "bogus",
        ["new"],
    ),
    (
        "unknown_configurable",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.t5pod.NoSuchThing.x=1"],
        "NoSuchThing",
        ["new"],
    ),
    (
        "missing_gin_file",
        lambda w: ["train", *TRAIN, "--gin_file=nope.gin", f"--gin.MODEL_DIR='{w / 'new'}'"],
        "gin file 'nope.gin' not found",
        ["new"],
    ),
    (
        "batch_size_zero",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.BATCH_SIZE=0"],
        "BATCH_SIZE must be a positive finite number, got 0",
        ["new"],
    ),
    (
        "negative_train_steps",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.TRAIN_STEPS=-3"],
        "TRAIN_STEPS must be a positive finite number",
        ["new"],
    ),
    (
        "zero_learning_rate",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.LEARNING_RATE=0"],
        "LEARNING_RATE must be a positive finite number",
        ["new"],
    ),
    (
        "model_dir_below_a_file",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'a_file' / 'run'}'"],
        "is below",
        ["a_file"],
    ),
    (
        "model_dir_read_only",  # sysfs refuses new folders even to root, who passes permission checks
        lambda w: ["train", *TRAIN, "--gin.MODEL_DIR='/sys/t5pod-run'"],
        "MODEL_DIR /sys/t5pod-run cannot be written (Operation not permitted); choose a writable folder.",
        [],
    ),
    *[
        (
            f"resume_{name}",
            lambda w, name=name: [
                "train",
                "--gin_file=demo.gin",
                f"--gin.MODEL_DIR='{w / f'run_{name}'}'",
                "--gin.TRAIN_STEPS=3",
                "--gin.BATCH_SIZE=4",
                "--gin.MESH_SHAPE=(4, 2)",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
            ],
            "input position cannot be read",  # no older checkpoint has one: RESTART_DATA_STREAM=True, or a copy
            [f"run_{name}"],
        )
        for name in ("position_cut", "position_gone")
    ],
    (
        "vocabulary_not_sentencepiece",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'new'}'",
            f"--gin.VOCABULARY_PATH='{w / 'not_sentencepiece.model'}'",
        ],
        "is not a SentencePiece model",
        ["new", "not_sentencepiece.model"],
    ),
    (
        "gin_syntax_error",
        lambda w: ["data", "--list", f"--gin_file={w / 'bad_syntax.gin'}"],
        "gin syntax error in",
        ["bad_syntax.gin"],
    ),
    (
        "infinite_learning_rate",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.LEARNING_RATE=1e999"],
        "LEARNING_RATE must be a positive finite number, got inf",
        ["new"],
    ),
    (
        "vocab_output_exists",
        lambda w: ["train-vocab", f"--input={w / 'inputs.jsonl'}", f"--output={w / 'a_file'}"],
        "already exists; choose a new path (a vocabulary is never replaced)",
        ["a_file"],
    ),
    (
        "infer_output_is_the_input",
        lambda w: _infer(w, f"--input_file={w / 'inputs.jsonl'}", f"--output_file={w / 'inputs.jsonl'}"),
        "is the input file; name another file for the output",
        ["inputs.jsonl"],
    ),
    (
        "negative_warmup",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.WARMUP_STEPS=-1"],
        "WARMUP_STEPS must be a finite number, not negative",
        ["new"],
    ),
    (
        "zero_microbatches",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.NUM_MICROBATCHES=0"],
        "NUM_MICROBATCHES must be a positive finite number",
        ["new"],
    ),
    (
        "label_smoothing_one",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.LABEL_SMOOTHING=1.0"],
        "LABEL_SMOOTHING must be in [0, 1)",
        ["new"],
    ),
    (
        "zero_eval_steps",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.EVAL_STEPS=0"],
        "EVAL_STEPS must be a positive finite number",
        ["new"],
    ),
    (
        "lengths_without_targets",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32}"],
        "TASK_FEATURE_LENGTHS needs a 'targets' length",
        ["new"],
    ),
    (
        "zero_length",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'new'}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}",
        ],
        "TASK_FEATURE_LENGTHS['inputs'] must be a positive integer",
        ["new"],
    ),
    (
        "misspelt_task",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'new'}'",
            "--gin.MIXTURE_OR_TASK_NAME='demo_span_corruptoin'",
        ],
        "Did you mean demo_span_corruption",
        ["new"],
    ),
    (
        "mesh_not_dividing",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.MESH_SHAPE=(3, 2)"],
        "does not divide the 8 available devices",
        ["new"],
    ),
    (
        "batch_not_dividing_mesh",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.MESH_SHAPE=(4, 2)", "--gin.BATCH_SIZE=6"],
        "BATCH_SIZE 6 is not divisible by the data-parallel mesh size 4",
        ["new"],
    ),
    (
        "unknown_trainable",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.TRAINABLE='adapter'"],
        "Unknown TRAINABLE 'adapter'",
        ["new"],
    ),
    (
        "model_dir_is_a_file",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'a_file'}'"],
        "is a file, not a folder",
        ["a_file"],
    ),
    (
        "model_dir_is_converted",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'converted'}'"],
        "holds a converted checkpoint",
        ["converted"],
    ),
    (
        "model_dir_is_foreign",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'foreign'}'"],
        "is not a t5pod run folder (it holds notes.txt)",
        ["foreign"],
    ),
    (
        "model_dir_of_another_model",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'run'}'",
            "--gin.t5pod.T5Config.d_ff=128",
            "--gin.TRAIN_STEPS=4",
        ],
        "holds checkpoints of another model",
        ["run"],
    ),
    (
        "resume_with_another_batch_size",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'run'}'", "--gin.TRAIN_STEPS=4"],
        "BATCH_SIZE 4 -> 8",
        ["run"],
    ),
    (
        "run_in_use",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'run_leased'}'", "--gin.TRAIN_STEPS=4"],
        "is in use by another run (host elsewhere, pid 1",
        ["run_leased"],
    ),
    (
        "missing_initial_checkpoint",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'new'}'",
            "--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/run'",
        ],
        "/nonexistent/run",
        ["new"],
    ),
    (
        "initial_checkpoint_of_another_model",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'new'}'",
            f"--gin.INITIAL_CHECKPOINT_PATH='{w / 'converted'}'",
        ],
        "different model",
        ["new", "converted"],
    ),
    (
        "missing_vocabulary",
        lambda w: [
            "train",
            *TRAIN,
            f"--gin.MODEL_DIR='{w / 'new'}'",
            "--gin.VOCABULARY_PATH='/nonexistent/spiece.model'",
        ],
        "Vocabulary file /nonexistent/spiece.model not found",
        ["new"],
    ),
    (
        "retired_macro",
        lambda w: ["train", *TRAIN, f"--gin.MODEL_DIR='{w / 'new'}'", "--gin.INPUT_LENGTH=32"],
        "INPUT_LENGTH was retired",
        ["new"],
    ),
    # infer
    (
        "infer_without_input",
        lambda w: _infer(w, f"--output_file={w / 'outputs' / 'kept.jsonl'}"),
        "needs either --input_file=IN or --task=NAME",
        ["outputs"],
    ),
    (
        "infer_without_output",
        lambda w: _infer(w, f"--input_file={w / 'inputs.jsonl'}"),
        "needs --output_file=OUT",
        ["outputs"],
    ),
    (
        "infer_missing_input_file",
        lambda w: _infer(w, f"--input_file={w / 'nope.jsonl'}", f"--output_file={w / 'outputs' / 'new.jsonl'}"),
        "nope.jsonl not found",
        ["outputs"],
    ),
    (
        "infer_output_is_a_directory",
        lambda w: _infer(w, f"--input_file={w / 'inputs.jsonl'}", f"--output_file={w / 'outputs'}"),
        "is a directory",
        ["outputs"],
    ),
    (
        "infer_non_string_inputs",
        lambda w: _infer(w, f"--input_file={w / 'number.jsonl'}", f"--output_file={w / 'outputs' / 'kept.jsonl'}"),
        "`inputs` must be a string, got int 7",
        ["outputs"],
    ),
    (
        "infer_invalid_json",
        lambda w: _infer(w, f"--input_file={w / 'broken.jsonl'}", f"--output_file={w / 'outputs' / 'kept.jsonl'}"),
        "broken.jsonl:2: not valid JSON",
        ["outputs"],
    ),
    (
        "infer_empty_input_file",
        lambda w: _infer(w, f"--input_file={w / 'empty.jsonl'}", f"--output_file={w / 'outputs' / 'kept.jsonl'}"),
        "is empty: nothing to predict",
        ["outputs"],
    ),
    (
        "infer_rows_without_inputs",
        lambda w: _infer(w, f"--input_file={w / 'text_field.jsonl'}", f"--output_file={w / 'outputs' / 'kept.jsonl'}"),
        "a JSON object with an `inputs` field is needed",
        ["outputs"],
    ),
    (
        "infer_with_another_models_gin",
        lambda w: _infer(
            w,
            "--gin.t5pod.T5Config.d_ff=40",
            f"--input_file={w / 'inputs.jsonl'}",
            f"--output_file={w / 'outputs' / 'kept.jsonl'}",
        ),
        "different model (d_ff: checkpoint 256 vs config 40)",
        ["outputs", "run"],
    ),
    (
        "score_without_targets",
        lambda w: _infer(
            w, f"--input_file={w / 'no_targets.jsonl'}", "--mode=score", f"--output_file={w / 'outputs' / 'kept.jsonl'}"
        ),
        "needs a `targets` field",
        ["outputs"],
    ),
    (
        "score_target_too_long",
        lambda w: _infer(
            w,
            f"--input_file={w / 'long_target.jsonl'}",
            "--mode=score",
            f"--output_file={w / 'outputs' / 'kept.jsonl'}",
        ),
        "more than TASK_FEATURE_LENGTHS['targets'] = 8",
        ["outputs"],
    ),
    (
        "infer_missing_checkpoint",
        lambda w: [
            "infer",
            *TINY,
            "--gin.CHECKPOINT_PATH='/nonexistent/run'",
            f"--input_file={w / 'inputs.jsonl'}",
            f"--output_file={w / 'outputs' / 'x.jsonl'}",
        ],
        "/nonexistent/run",
        ["outputs"],
    ),
    (
        "infer_truncated_checkpoint",
        lambda w: [
            "infer",
            *TINY,
            f"--gin.CHECKPOINT_PATH='{w / 'run_truncated'}'",
            f"--input_file={w / 'inputs.jsonl'}",
            f"--output_file={w / 'outputs' / 'kept.jsonl'}",
        ],
        "cannot be read",
        ["outputs", "run_truncated"],
    ),
    (
        "infer_training_batch_macro",
        lambda w: _infer(
            w,
            "--gin.BATCH_SIZE=3",
            f"--input_file={w / 'inputs.jsonl'}",
            f"--output_file={w / 'outputs' / 'kept.jsonl'}",
        ),
        "INFER_BATCH_SIZE",
        ["outputs"],
    ),
    (
        "infer_zero_beam",
        lambda w: _infer(
            w,
            "--gin.BEAM_SIZE=0",
            f"--input_file={w / 'inputs.jsonl'}",
            f"--output_file={w / 'outputs' / 'kept.jsonl'}",
        ),
        "BEAM_SIZE must be a positive finite number",
        ["outputs"],
    ),
    (
        "infer_negative_temperature",
        lambda w: _infer(
            w,
            "--gin.TEMPERATURE=-1.0",
            f"--input_file={w / 'inputs.jsonl'}",
            f"--output_file={w / 'outputs' / 'kept.jsonl'}",
        ),
        "TEMPERATURE must be a finite number, not negative",
        ["outputs"],
    ),
    # eval
    (
        "eval_misspelt_task",
        lambda w: ["eval", *TINY, f"--gin.CHECKPOINT_PATH='{w / 'run'}'", "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_v02'"],
        "Did you mean glue_sst2_v002",
        ["run"],
    ),
    (
        "eval_task_without_metrics",
        lambda w: [
            "eval",
            *TINY,
            f"--gin.CHECKPOINT_PATH='{w / 'run'}'",
            "--gin.MIXTURE_OR_TASK_NAME='demo_span_corruption'",
        ],
        "has no task with metrics",
        ["run"],
    ),
    (
        "eval_output_not_writable",  # refused before the model is compiled or anything decoded
        lambda w: [
            "eval",
            *TINY,
            f"--gin.CHECKPOINT_PATH='{w / 'run'}'",
            f"--gin.GLUE_DIR='{pathlib.Path(__file__).parent / 'data' / 'benchmarks' / 'glue'}'",
            "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_v002'",
            f"--gin.EVAL_OUTPUT_DIR='{w / 'a_file' / 'eval'}'",
        ],
        "eval output folder (EVAL_OUTPUT_DIR, default CHECKPOINT_PATH)",
        ["run", "a_file"],
    ),
    # data
    (
        "data_negative_examples",
        lambda w: ["data", "--task=demo_span_corruption", "--num_examples=-1"],
        "--num_examples must be positive",
        [],
    ),
    (
        "data_negative_stats",
        lambda w: ["data", "--task=demo_span_corruption", "--stats=-5"],
        "--stats must be a positive number",
        [],
    ),
    ("data_without_task", lambda w: ["data"], "data needs --task=NAME", []),
    ("data_misspelt_task", lambda w: ["data", "--task=demo_span_corruptoin"], "Did you mean demo_span_corruption", []),
    # convert-hf
    (
        "convert_without_config",
        lambda w: ["convert-hf", str(w / "foreign"), str(w / "out_a")],
        "has no config.json",
        ["foreign", "out_a"],
    ),
    (
        "convert_malformed_config",
        lambda w: ["convert-hf", str(w / "hf_bad_json"), str(w / "out_b")],
        "config.json is not valid JSON",
        ["hf_bad_json", "out_b"],
    ),
    (
        "convert_truncated_safetensors",
        lambda w: ["convert-hf", str(w / "hf_truncated"), str(w / "out_c")],
        "model.safetensors cannot be read as safetensors",
        ["hf_truncated", "out_c"],
    ),
    (
        "convert_into_existing_folder",
        lambda w: ["convert-hf", str(w / "hf"), str(w / "outputs")],
        "already exists and is not empty",
        ["outputs"],
    ),
    # convert-t5x
    (
        "t5x_missing_source",
        lambda w: ["convert-t5x", str(w / "nope"), str(w / "out_t"), "--gin_file=models/tiny.gin"],
        "does not exist; pass a T5X checkpoint_N folder",
        [],
    ),
    (
        "t5x_not_a_checkpoint",
        lambda w: ["convert-t5x", str(w / "foreign"), str(w / "out_t"), "--gin_file=models/tiny.gin"],
        "has no T5X msgpack `checkpoint` file and is not an Orbax checkpoint",
        ["foreign"],
    ),
    (
        "t5x_corrupt_msgpack",
        lambda w: ["convert-t5x", str(w / "t5x_garbage"), str(w / "out_t"), "--gin_file=models/tiny.gin"],
        "is not a T5X msgpack checkpoint",
        ["t5x_garbage"],
    ),
    (
        "t5x_into_existing_folder",
        lambda w: ["convert-t5x", str(w / "t5x_garbage"), str(w / "outputs"), "--gin_file=models/tiny.gin"],
        "already exists and is not empty",
        ["outputs"],
    ),
    # plan
    (
        "plan_mesh_not_dividing",
        lambda w: [
            "plan",
            *TINY[:2],
            "--gin_file=runs/pretrain.gin",
            "--gin.MESH_SHAPE=(3, 3)",
        ],
        "does not divide the 8 available devices",
        [],
    ),
    (
        "plan_zero_batch",
        lambda w: [
            "plan",
            *TINY[:2],
            "--gin_file=runs/pretrain.gin",
            "--gin.BATCH_SIZE=0",
        ],
        "BATCH_SIZE must be a positive finite number",
        [],
    ),
    *[
        (
            f"plan_{flag}_{value}",
            lambda w, flag=flag, value=value: ["plan", *TINY[:2], f"--{flag}={value}"],
            message,
            [],
        )
        for flag, value, message in [
            ("num_devices", -1, "plan --num_devices must be a positive number, got -1."),
            ("num_devices", 0, "plan --num_devices must be a positive number, got 0."),
            ("hbm_gib", -3, "plan --hbm_gib must be a positive number, got -3.0."),
            ("beam_size", 0, "plan --beam_size must be a positive number, got 0."),
        ]
    ],
    (
        "mixing_temperature_zero",
        lambda w: ["data", "--task=glue_v002_proportional", "--num_examples=1", "--gin.MIXING_TEMPERATURE=0"],
        "MIXING_TEMPERATURE must be positive, got 0.",
        [],
    ),
    (
        "mixing_rate_limit_negative",
        lambda w: ["data", "--task=glue_v002_proportional", "--num_examples=1", "--gin.MIXING_RATE_LIMIT=-5"],
        "MIXING_RATE_LIMIT must be positive (or None: no limit), got -5.",
        [],
    ),
    (
        "noise_density_above_one",
        lambda w: ["data", "--task=demo_span_corruption", "--num_examples=1", "--gin.NOISE_DENSITY=1.5"],
        "NOISE_DENSITY must be between 0 and 1 (the paper's 0.15), got 1.5.",
        [],
    ),
    (
        "mean_noise_span_zero",
        lambda w: ["data", "--task=demo_span_corruption", "--num_examples=1", "--gin.MEAN_NOISE_SPAN_LENGTH=0"],
        "MEAN_NOISE_SPAN_LENGTH must be at least 1 (the paper's 3), got 0.",
        [],
    ),
    (
        "goodput_not_a_run",
        lambda w: ["goodput", str(w / "foreign")],
        "holds no metrics.jsonl: it is not a t5pod training run",
        ["foreign"],
    ),
    # train-vocab
    (
        "vocab_input_matches_nothing",
        lambda w: ["train-vocab", f"--input={w / 'none*.txt'}", f"--output={w / 'v' / 'spiece.model'}"],
        "matches no file",
        ["v"],
    ),
    (
        "vocab_output_not_model",
        lambda w: ["train-vocab", f"--input={w / 'inputs.jsonl'}", f"--output={w / 'v.txt'}"],
        "must end in .model",
        ["v.txt"],
    ),
    (
        "vocab_size_zero",
        lambda w: ["train-vocab", f"--input={w / 'inputs.jsonl'}", f"--output={w / 'v' / 'a.model'}", "--vocab_size=0"],
        "--vocab_size must be positive",
        ["v"],
    ),
]


def test_the_catalogue_is_large_and_covers_every_command():
    assert len(CASES) >= 40 and len({name for name, *_ in CASES}) == len(CASES)
    commands = {argv(pathlib.Path("/w"))[0] for _, argv, _, _ in CASES}
    assert commands == {"train", "infer", "eval", "data", "convert-hf", "convert-t5x", "plan", "train-vocab", "goodput"}


@pytest.mark.slow
@pytest.mark.parametrize("name,argv,message,untouched", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, capsys, name, argv, message, untouched):
    before = {path: _tree_hash(world / path) for path in untouched}
    status = cli.main(argv(world))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, captured.err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("t5pod ") and ": error: " in lines[0], lines
    assert "Traceback" not in captured.err and message in lines[0], lines[0]
    assert "<function" not in lines[0]  # gin's "In call to configurable" suffix is dropped
    assert {path: _tree_hash(world / path) for path in untouched} == before


def test_an_unwritable_demo_cache_is_one_line_naming_t5pod_cache(world, monkeypatch, capsys):
    monkeypatch.setenv("T5POD_CACHE", str(world / "a_file" / "cache"))  # below a file: never writable
    assert cli.main(["data", "--task=demo_span_corruption", "--num_examples=1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot be written" in lines[0] and "set T5POD_CACHE to a writable folder" in lines[0]


@pytest.mark.slow
def test_a_damaged_cached_demo_vocabulary_is_built_again(tmp_path, monkeypatch, capsys):
    """A model file cut short (a kill while it was copied in) is rebuilt from the cached corpus,
    and the rebuilt vocabulary is the one every other run has: SentencePiece training is seeded."""
    original = Path(demo_corpus.vocabulary_path())
    monkeypatch.setenv("T5POD_CACHE", str(tmp_path))
    cache = demo_corpus.cache_dir()
    cache.mkdir(parents=True)
    shutil.copy(original.parent / "corpus.txt", cache / "corpus.txt")
    (cache / "spiece.model").write_bytes(original.read_bytes()[:1000])
    assert demo_corpus.vocabulary_path() == str(cache / "spiece.model")
    assert "does not load; building it again" in capsys.readouterr().err
    # The same pieces with the same scores (the files' bytes differ only in the temporary paths that
    # SentencePiece records in its trainer settings).
    pieces = [spm.SentencePieceProcessor(model_file=str(path)) for path in (original, cache / "spiece.model")]
    assert [[(p.id_to_piece(i), p.get_score(i)) for i in range(p.get_piece_size())] for p in pieces] == [
        [(pieces[0].id_to_piece(i), pieces[0].get_score(i)) for i in range(2000)]
    ] * 2
