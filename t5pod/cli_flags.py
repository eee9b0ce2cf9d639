"""The command line of `python -m t5pod`: every command and its flags (argparse), with the run
macros of the shipped gin files in each command's --help. cli.py runs the commands."""

import argparse

from t5pod import configs, settings

DESCRIPTION = """`python -m t5pod <command>` and the `t5pod` console script.

Commands that read tasks take gin flags in T5X conventions: --gin_file=F (repeatable),
--gin_search_paths=A,B and --gin.NAME=VALUE (a binding or macro, e.g. --gin.MIXING_TEMPERATURE=2.0).
TensorFlow's and absl's start-up lines are silenced; add --verbose to any command to see them.
"""


def _add_gin_flags(parser: argparse.ArgumentParser):
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument(
        "--gin_bindings",
        action="append",
        default=[],
        metavar="BINDING",
        help="a gin binding or macro, T5X style (repeatable): --gin_bindings='TRAIN_STEPS = 100'; "
        "the same as --gin.TRAIN_STEPS=100",
    )
    parser.add_argument("--gin_search_paths", default="", help="comma-separated folders for gin includes")
    parser.add_argument(
        "--tfds_data_dir", metavar="DIR", help="TensorFlow Datasets folder (sets TFDS_DATA_DIR), as in T5X"
    )
    parser.add_argument(
        "--seqio_additional_cache_dirs",
        default="",
        metavar="DIR[,DIR]",
        help="folders with seqio task caches (`t5pod cache-tasks`), read when USE_CACHED_TASKS=True",
    )


def _macro_help(*gin_files: str, example: str) -> str:
    """The run macros of gin files (gin/…) with their defaults and meanings, for --help."""
    lines = [
        f"run macros (defaults from {configs.shipped_gin_dir()}; set with --gin.NAME=VALUE or "
        "--gin_bindings='NAME = VALUE'):"
    ]
    return "\n".join(lines + settings.help_text(*gin_files) + ["", "example:", "  " + example])


def _run_command(commands, name: str, help: str, gin_files: tuple, example: str) -> argparse.ArgumentParser:
    """A command that reads run macros: its --help lists those of gin_files; it takes the gin flags."""
    parser = commands.add_parser(
        name,
        help=help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_macro_help(*gin_files, example=example),
    )
    _add_gin_flags(parser)
    return parser


def _add_multihost_flags(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("multi-host (jax.distributed)")
    group.add_argument(
        "--multihost",
        action="store_true",
        help="join a multi-host job found by JAX itself (Cloud TPU VM slices, SLURM)",
    )
    group.add_argument("--coordinator_address", help="HOST:PORT of process 0 (GPU clusters, CPU processes)")
    group.add_argument("--num_processes", type=int)
    group.add_argument("--process_id", type=int)
    group.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=configs.DEFAULT_HEARTBEAT_TIMEOUT_S,
        help="seconds after which a silent process is declared dead and the others stop",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5pod", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert-hf", help="Import a Hugging Face T5 checkpoint folder (config.json + safetensors)."
    )
    convert.add_argument("src_dir", metavar="SRC_DIR", help="folder with config.json and model.safetensors")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the Orbax checkpoint and model.gin")

    t5x = commands.add_parser(
        "convert-t5x",
        help="Import a T5X checkpoint (checkpoint_N: msgpack, tensorstore arrays or Orbax) with its Adafactor state.",
    )
    _add_gin_flags(t5x)
    t5x.add_argument("src", metavar="SRC", help="a T5X checkpoint_N folder (local or gs://) or its `checkpoint` file")
    t5x.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the Orbax checkpoint and model.gin")
    t5x.add_argument("--no_optimizer_state", action="store_true", help="convert the parameters only")

    usage = commands.add_parser(
        "goodput", help="Where a training run's wall time went, over all its attempts (restarts)."
    )
    usage.add_argument("model_dir", metavar="MODEL_DIR", help="the run's folder (local or gs://)")
    usage.add_argument("--json", action="store_true", help="also print the summary as one JSON line")

    export = commands.add_parser(
        "export-hf",
        help="Write a Hugging Face T5 folder (config.json, model.safetensors, spiece.model) from a checkpoint.",
    )
    _add_gin_flags(export)
    export.add_argument(
        "checkpoint_dir",
        metavar="CHECKPOINT_DIR",
        help="a run's MODEL_DIR, a converted checkpoint, or one checkpoint (…/checkpoints/N)",
    )
    export.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the Hugging Face files")

    data = commands.add_parser("data", help="Show what a task or mixture produces, or its statistics.")
    _add_gin_flags(data)
    data.add_argument("--task", help="task or mixture name")
    data.add_argument("--split", default="train")
    data.add_argument("--num_examples", type=int, default=3)
    data.add_argument(
        "--features",
        choices=("task", "model"),
        default="task",
        help="task: preprocessed examples; model: after feature conversion and packing",
    )
    data.add_argument("--stats", type=int, default=0, metavar="N", help="print statistics over N examples")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--list", action="store_true", help="list the registered tasks and mixtures")

    cache = commands.add_parser(
        "cache-tasks",
        help="Preprocess tasks once into seqio caches with Apache Beam (DirectRunner here; "
        "Beam's flags, e.g. --runner=DataflowRunner --project=P, pass through).",
    )
    _add_gin_flags(cache)
    cache.add_argument("--tasks", required=True, help="comma-separated tasks or mixtures")
    cache.add_argument("--output_cache_dir", required=True, help="folder for the caches (gs:// works)")

    train = _run_command(
        commands,
        "train",
        "Train (pretrain or fine-tune) with gin-configured settings.",
        (
            "runs/pretrain.gin",
            "tasks.gin",
        ),
        example="python -m t5pod train --gin_file=runs/pretrain.gin "
        "--gin_file=models/t5_1_1/base.gin --gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=1000",
    )
    _add_multihost_flags(train)

    plan = commands.add_parser("plan", help="Per-device memory of the train step for a mesh, without running it.")
    _add_gin_flags(plan)
    plan.add_argument("--num_devices", type=int, help="fake this many CPU devices (e.g. the pod slice's chips)")
    plan.add_argument("--hbm_gib", type=float, help="memory per device to check against (TPU v3: 16)")
    plan.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    plan.add_argument("--beam_size", type=int, default=1, help="decoding: beams per row (BATCH_SIZE rows)")
    plan.add_argument("--max_decode_length", type=int, help="decoding: tokens per row (default: the targets length)")
    plan.add_argument(
        "--fit_batch",
        action="store_true",
        help="find the largest batch (doubling) and cheapest remat policy whose step fits --hbm_gib",
    )
    plan.add_argument(
        "--min_rows_per_device",
        type=int,
        default=8,
        help="--fit_batch: the fewest rows per data device worth running without remat",
    )

    infer = _run_command(
        commands,
        "infer",
        "Predict or score inputs from a file or a task split.",
        ("runs/infer.gin",),
        example="python -m t5pod infer --gin_file=/tmp/run/config.gin "
        "--gin.CHECKPOINT_PATH=\"'/tmp/run'\" --input_file=in.jsonl --output_file=out.jsonl",
    )
    infer.add_argument("--input_file", help="JSONL with `inputs` (and `targets` for score), or text lines")
    infer.add_argument("--task", help="read the inputs from this task instead")
    infer.add_argument("--split", default="validation")
    infer.add_argument("--output_file", help="JSONL, one object per input, in input order")
    infer.add_argument("--mode", choices=("predict", "score"), default="predict")
    _add_multihost_flags(infer)

    evaluate = _run_command(
        commands,
        "eval",
        "Evaluate a checkpoint on a task or mixture (seqio metrics).",
        (
            "runs/eval.gin",
            "runs/infer.gin",
        ),
        example="python -m t5pod eval --gin_file=/tmp/run/config.gin "
        "--gin.CHECKPOINT_PATH=\"'/tmp/run'\" --gin.MIXTURE_OR_TASK_NAME=\"'glue_sst2_v002'\"",
    )
    evaluate.add_argument(
        "--all_checkpoints",
        action="store_true",
        help="evaluate every checkpoint in CHECKPOINT_PATH and report the best per task",
    )
    _add_multihost_flags(evaluate)

    probe_parser = _run_command(
        commands,
        "probe",
        "Linear probe of a frozen encoder (a checkpoint's or random weights) on a task.",
        ("runs/infer.gin",),
        example="python -m t5pod probe --gin_file=/tmp/run/config.gin "
        "--gin.CHECKPOINT_PATH=\"'/tmp/run'\" --task=glue_sst2_1k_v002",
    )
    probe_parser.add_argument(
        "--task", required=True, help="a classification task or STS-B (its train split is fitted)"
    )
    probe_parser.add_argument(
        "--random_init_seed",
        type=int,
        metavar="SEED",
        help="probe freshly initialised weights instead of CHECKPOINT_PATH's",
    )
    probe_parser.add_argument("--train_split", default="train")
    probe_parser.add_argument("--eval_split", default="validation")
    probe_parser.add_argument(
        "--eval_task",
        help="score on this task's eval split (default: the benchmark task "
        "a transfer subset was cut from, i.e. its dev set)",
    )
    probe_parser.add_argument(
        "--features",
        choices=("encoder", "embeddings"),
        default="encoder",
        help="pool the encoder's outputs, or the token embeddings it reads",
    )
    probe_parser.add_argument("--output_file", help="append the result to this JSONL file")
    _add_multihost_flags(probe_parser)

    train_vocab = commands.add_parser("train-vocab", help="Train a SentencePiece vocabulary (T5 conventions).")
    train_vocab.add_argument("--input", required=True, help="file pattern: text, .jsonl, .tfrecord, optionally .gz")
    train_vocab.add_argument("--output", required=True, help="path of the new .model file")
    train_vocab.add_argument("--vocab_size", type=int, default=32000)
    train_vocab.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
    train_vocab.add_argument("--paragraphs", action="store_true", help="documents are blank-line-separated blocks")
    train_vocab.add_argument("--max_sentences", type=int, default=2_000_000)
    return parser
