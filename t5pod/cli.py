"""`python -m t5pod <command>` and the `t5pod` console script.

Commands that read tasks take gin flags in T5X conventions: --gin_file=F (repeatable),
--gin_search_paths=A,B and --gin.NAME=VALUE (a binding or macro, e.g. --gin.MIXING_TEMPERATURE=2.0).
TensorFlow's and absl's start-up lines are silenced; add --verbose to any command to see them.
"""

import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

# Only the configs (no JAX) here: JAX and TensorFlow are imported inside the commands, so that
# --help answers at once and `plan --num_devices` can set up fake devices before JAX starts.
from t5pod import configs  # noqa: E402
from t5pod.progress import Progress  # noqa: E402


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
    from t5pod import settings

    lines = [
        f"run macros (defaults from {configs.shipped_gin_dir()}; set with --gin.NAME=VALUE or "
        "--gin_bindings='NAME = VALUE'):"
    ]
    return "\n".join(lines + settings.help_text(*gin_files) + ["", "example:", "  " + example])


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


def _parse_gin(args, base_files=("tasks.gin",), read_directly=(), unneeded=()):
    from t5pod import ginconf

    search_paths = [p for p in args.gin_search_paths.split(",") if p]
    bindings = list(args.gin_bindings)
    cache_dirs = [d for d in args.seqio_additional_cache_dirs.split(",") if d]
    if cache_dirs:
        bindings.append(f"CACHE_DIRS = {cache_dirs!r}")
    if args.tfds_data_dir:
        bindings.append(f"TFDS_DATA_DIR = {args.tfds_data_dir!r}")
    ginconf.parse([*base_files, *args.gin_file], bindings, search_paths, read_directly, unneeded)
    return ginconf


def _convert_hf(args) -> int:
    from t5pod import hf_import

    config = hf_import.convert(args.src_dir, args.out_dir, Progress(None, what="tensors", prefix="reading: ").update)
    print(f"Converted {args.src_dir} -> {args.out_dir}")
    print(
        f"  model: d_model={config.d_model} layers={config.num_layers}/{config.decoder_layers} "
        f"heads={config.num_heads} feed_forward_proj={config.feed_forward_proj} "
        f"tie_word_embeddings={config.tie_word_embeddings}"
    )
    print(f"  use it with: --gin_file={args.out_dir}/model.gin --gin.CHECKPOINT_PATH=\"'{args.out_dir}'\"")
    return 0


def _export_hf(args) -> int:
    from t5pod import checkpoints, hf_export

    # The model's gin: a converted checkpoint's model.gin, or a training run's operative config.gin.
    folder = os.path.normpath(args.checkpoint_dir)
    if checkpoints.named_step(folder) is not None:
        folder = os.path.dirname(folder)
    if os.path.basename(folder) == checkpoints.CHECKPOINTS_FOLDER:
        folder = os.path.dirname(folder)
    found = [p for p in (os.path.join(folder, "model.gin"), os.path.join(folder, "config.gin")) if os.path.isfile(p)]
    if not args.gin_file and not found:
        raise FileNotFoundError(
            f"No model.gin or config.gin next to {args.checkpoint_dir}; pass the model's gin file with --gin_file=..."
        )
    args.gin_file = args.gin_file or found[:1]
    ginconf = _parse_gin(args, base_files=())
    config = ginconf.model_config()
    try:
        vocabulary = ginconf.macro("VOCABULARY_PATH")
    except ValueError:
        vocabulary = None
    if vocabulary == "demo":
        from t5pod.data import demo_corpus

        vocabulary = demo_corpus.vocabulary_path()
    step = hf_export.export(args.checkpoint_dir, args.out_dir, config, vocabulary)
    print(f"Exported step {step} of {args.checkpoint_dir} -> {args.out_dir}")
    print(f"  load it with: transformers.T5ForConditionalGeneration.from_pretrained({args.out_dir!r})")
    return 0


def _data(args) -> int:
    if args.num_examples <= 0:
        raise ValueError(f"--num_examples must be positive, got {args.num_examples}.")
    if args.stats < 0:
        raise ValueError(f"--stats must be a positive number of examples (0: show examples), got {args.stats}.")
    from t5pod import ginconf as gin_layer

    ginconf = _parse_gin(args, read_directly=gin_layer.DATA_COMMAND_MACROS)
    ginconf.register_tasks()
    import seqio

    from t5pod.data import inspection

    if args.list:
        for name in sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names()):
            print(name)
        return 0
    if not args.task:
        raise ValueError("data needs --task=NAME (a task or mixture; --list shows them).")
    lengths, use_cached = ginconf.macro("TASK_FEATURE_LENGTHS"), ginconf.macro("USE_CACHED_TASKS")
    model_features = args.features == "model"
    if args.stats:
        # Progress goes to stderr: stdout is the JSON line.
        progress = Progress(args.stats, what="examples", stream=sys.stderr)
        stats = inspection.statistics(
            args.task,
            lengths,
            args.split,
            args.stats,
            model_features,
            args.seed,
            use_cached,
            on_example=progress.update,
        )
        print(json.dumps(stats))
        return 0
    for row in inspection.examples(
        args.task, lengths, args.split, args.num_examples, model_features, args.seed, use_cached
    ):
        print(json.dumps(row, ensure_ascii=False))
    return 0


def _cache_tasks(args) -> int:
    ginconf = _parse_gin(args)
    ginconf.register_tasks()
    import functools

    from t5pod import tasks
    from t5pod.data import caching

    names = [n for n in args.tasks.split(",") if n]
    if not names:
        raise ValueError("cache-tasks needs --tasks=NAME[,NAME] (tasks or mixtures; `t5pod data --list` shows them).")
    setup = functools.partial(tasks.register_all, **ginconf.task_settings())
    folders = caching.cache_tasks(names, args.output_cache_dir, args.beam_args, setup)
    for folder in folders:
        print(f"Cached {folder}")
    print(f"  use it with: --gin.USE_CACHED_TASKS=True --seqio_additional_cache_dirs={args.output_cache_dir}")
    return 0


def _train(args) -> int:
    from t5pod import distributed

    distributed.initialize(
        args.coordinator_address, args.num_processes, args.process_id, args.multihost, args.heartbeat_timeout_s
    )
    ginconf = _parse_gin(args)
    model_config, train_config = ginconf.model_config(), ginconf.train_config()
    import gin

    from t5pod import trainer

    ginconf.register_tasks()
    trainer.train(train_config, model_config, operative_config=gin.config_str())
    return 0


def _join(args):
    from t5pod import distributed

    distributed.initialize(
        args.coordinator_address, args.num_processes, args.process_id, args.multihost, args.heartbeat_timeout_s
    )


def _infer(args) -> int:
    from t5pod import infer_io

    total = infer_io.check_request(args.input_file, args.task, args.output_file, args.mode)
    _join(args)
    ginconf = _parse_gin(args, ("tasks.gin", "runs/infer.gin"))
    ginconf.register_tasks()
    infer_io.infer(
        ginconf.model_config(),
        ginconf.infer_config(),
        ginconf.vocabulary(),
        args.output_file,
        args.mode,
        args.input_file,
        args.task,
        args.split,
        total,
    )
    return 0


def _eval(args) -> int:
    _join(args)
    ginconf = _parse_gin(args, ("tasks.gin", "runs/eval.gin"))
    ginconf.register_tasks()
    from t5pod import evaluation

    evaluation.evaluate_checkpoints(
        ginconf.model_config(),
        ginconf.infer_config(),
        ginconf.vocabulary(),
        ginconf.eval_config(),
        args.all_checkpoints,
    )
    return 0


def _probe(args) -> int:
    from t5pod import ginconf as gin_layer

    _join(args)
    if args.random_init_seed is not None:  # random weights: no checkpoint to name
        if any(b.split("=", 1)[0].strip() == "CHECKPOINT_PATH" for b in args.gin_bindings):
            raise ValueError("probe takes CHECKPOINT_PATH or --random_init_seed, not both.")
        args.gin_bindings = ["CHECKPOINT_PATH = ''", *args.gin_bindings]
    ginconf = _parse_gin(args, ("tasks.gin", "runs/infer.gin"), gin_layer.DATA_COMMAND_MACROS)
    ginconf.register_tasks()
    from t5pod import probe

    probe.run(
        ginconf.model_config(),
        ginconf.infer_config(),
        ginconf.vocabulary(),
        args.task,
        args.random_init_seed,
        args.train_split,
        args.eval_split,
        args.eval_task,
        args.features,
        args.output_file,
    )
    return 0


def _plan(args) -> int:
    if args.num_devices:
        # Fake CPU devices stand in for the pod's; set before JAX starts.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.num_devices}"
        )
        os.environ["JAX_PLATFORMS"] = "cpu"
    # plan compiles the step and writes nothing: the run's folder and initial weights are not needed.
    ginconf = _parse_gin(args, unneeded=("MODEL_DIR", "INITIAL_CHECKPOINT_PATH"))
    from t5pod import planning

    step, model_config = ginconf.step_config(), ginconf.model_config()
    if args.fit_batch:
        if not args.hbm_gib or args.hbm_gib <= 0:
            raise ValueError("plan --fit_batch needs the memory per device: add --hbm_gib (e.g. 16 for a TPU v3 core).")
        fit = planning.fit_batch(
            model_config, step, int(args.hbm_gib * 2**30), min_rows_per_device=args.min_rows_per_device
        )
        model_config = dataclasses.replace(model_config, remat_policy=fit["remat_policy"])
        step = planning.with_batch_size(step, fit["batch_size"])
        print(
            f"largest batch within 90% of {args.hbm_gib:g} GiB per device: {fit['batch_size']} with remat "
            f"'{fit['remat_policy']}' (--gin.BATCH_SIZE={fit['batch_size']} "
            f"--gin.t5pod.T5Config.remat_policy=\"'{fit['remat_policy']}'\")"
        )
    decode = configs.InferConfig(
        checkpoint_path="",
        task_feature_lengths=step.batch.task_feature_lengths,
        batch_size=step.batch.batch_size,
        max_decode_length=args.max_decode_length,
        beam_size=args.beam_size,
        mesh=step.mesh,
    )
    result = planning.plan(model_config, step, decode)
    if args.fit_batch:
        result["fit_tried"] = fit["tried"]  # [remat policy, batch, peak bytes] in the order compiled
    print(planning.format_plan(result, args.hbm_gib))
    print(
        f"  step FLOPs        {result['model_flops_per_step'] / 1e12:8.3f} TFLOP "
        f"(compiled in {result['compile_s']:.1f} s)"
    )
    if args.json:
        print(json.dumps(result))
    return 0


def _train_vocab(args) -> int:
    if args.vocab_size <= 0 or args.max_sentences <= 0:
        raise ValueError(
            f"--vocab_size must be positive (got {args.vocab_size}), and so must --max_sentences "
            f"(got {args.max_sentences})."
        )
    from t5pod.data import text_sources, vocabularies

    progress = Progress(args.max_sentences, what="documents", prefix="reading: ")

    def texts():
        for path in text_sources.match_files(args.input):
            for x in text_sources.text_dataset([path], args.paragraphs).as_numpy_iterator():
                progress.update()
                yield x["text"].decode("utf-8")
        progress.done("Training the SentencePiece model ...")

    path = vocabularies.train_vocabulary(
        texts(), args.output, vocab_size=args.vocab_size, model_type=args.model_type, max_sentences=args.max_sentences
    )
    vocabulary = vocabularies.get_vocabulary(path)
    print(
        f"Wrote {path}: {vocabulary.vocab_size} ids with 100 extra ids "
        f"(<extra_id_0> = {vocabulary.vocab_size - 1}); "
        f"model embedding size {vocabularies.padded_vocab_size(vocabulary)}."
    )
    print(f"  use it with: --gin.VOCABULARY_PATH=\"'{path}'\"")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5pod", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert-hf", help="Import a Hugging Face T5 checkpoint folder (config.json + safetensors)."
    )
    convert.add_argument("src_dir", metavar="SRC_DIR", help="folder with config.json and model.safetensors")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the Orbax checkpoint and model.gin")
    convert.set_defaults(run=_convert_hf)

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
    export.set_defaults(run=_export_hf)

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
    data.set_defaults(run=_data)

    cache = commands.add_parser(
        "cache-tasks",
        help="Preprocess tasks once into seqio caches with Apache Beam (DirectRunner here; "
        "Beam's flags, e.g. --runner=DataflowRunner --project=P, pass through).",
    )
    _add_gin_flags(cache)
    cache.add_argument("--tasks", required=True, help="comma-separated tasks or mixtures")
    cache.add_argument("--output_cache_dir", required=True, help="folder for the caches (gs:// works)")
    cache.set_defaults(run=_cache_tasks)

    train = commands.add_parser(
        "train",
        help="Train (pretrain or fine-tune) with gin-configured settings.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_macro_help(
            "runs/pretrain.gin",
            "tasks.gin",
            example="python -m t5pod train --gin_file=runs/pretrain.gin "
            "--gin_file=models/t5_1_1/base.gin --gin.MODEL_DIR=\"'/tmp/run'\" --gin.TRAIN_STEPS=1000",
        ),
    )
    _add_gin_flags(train)
    _add_multihost_flags(train)
    train.set_defaults(run=_train)

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
    plan.set_defaults(run=_plan)

    infer = commands.add_parser(
        "infer",
        help="Predict or score inputs from a file or a task split.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_macro_help(
            "runs/infer.gin",
            example="python -m t5pod infer --gin_file=/tmp/run/config.gin "
            "--gin.CHECKPOINT_PATH=\"'/tmp/run'\" --input_file=in.jsonl --output_file=out.jsonl",
        ),
    )
    _add_gin_flags(infer)
    infer.add_argument("--input_file", help="JSONL with `inputs` (and `targets` for score), or text lines")
    infer.add_argument("--task", help="read the inputs from this task instead")
    infer.add_argument("--split", default="validation")
    infer.add_argument("--output_file", help="JSONL, one object per input, in input order")
    infer.add_argument("--mode", choices=("predict", "score"), default="predict")
    _add_multihost_flags(infer)
    infer.set_defaults(run=_infer)

    evaluate = commands.add_parser(
        "eval",
        help="Evaluate a checkpoint on a task or mixture (seqio metrics).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_macro_help(
            "runs/eval.gin",
            "runs/infer.gin",
            example="python -m t5pod eval --gin_file=/tmp/run/config.gin "
            "--gin.CHECKPOINT_PATH=\"'/tmp/run'\" --gin.MIXTURE_OR_TASK_NAME=\"'glue_sst2_v002'\"",
        ),
    )
    _add_gin_flags(evaluate)
    evaluate.add_argument(
        "--all_checkpoints",
        action="store_true",
        help="evaluate every checkpoint in CHECKPOINT_PATH and report the best per task",
    )
    _add_multihost_flags(evaluate)
    evaluate.set_defaults(run=_eval)

    probe_parser = commands.add_parser(
        "probe",
        help="Linear probe of a frozen encoder (a checkpoint's or random weights) on a task.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_macro_help(
            "runs/infer.gin",
            example="python -m t5pod probe --gin_file=/tmp/run/config.gin "
            "--gin.CHECKPOINT_PATH=\"'/tmp/run'\" --task=glue_sst2_1k_v002",
        ),
    )
    _add_gin_flags(probe_parser)
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
    probe_parser.set_defaults(run=_probe)

    train_vocab = commands.add_parser("train-vocab", help="Train a SentencePiece vocabulary (T5 conventions).")
    train_vocab.add_argument("--input", required=True, help="file pattern: text, .jsonl, .tfrecord, optionally .gz")
    train_vocab.add_argument("--output", required=True, help="path of the new .model file")
    train_vocab.add_argument("--vocab_size", type=int, default=32000)
    train_vocab.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
    train_vocab.add_argument("--paragraphs", action="store_true", help="documents are blank-line-separated blocks")
    train_vocab.add_argument("--max_sentences", type=int, default=2_000_000)
    train_vocab.set_defaults(run=_train_vocab)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix from the message alone: printed as one line, no traceback."""
    from t5pod.checkpoints import CheckpointError
    from t5pod.hf_import import ConversionError
    from t5pod.inference import InferenceError
    from t5pod.run_lock import RunLockError
    from t5pod.trainer import TrainingError

    return (
        ConversionError,
        CheckpointError,
        TrainingError,
        InferenceError,
        RunLockError,
        FileNotFoundError,
        ValueError,
    )


def import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 caught: its C++ start-up lines (oneDNN, CUDA
    probing on machines without a GPU, absl's "All log messages before absl::InitializeLog()")
    come before any setting can stop them. They are shown only if the import fails."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()  # probes CUDA (a line on a machine without one)
        except BaseException:
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --verbose (anywhere): TensorFlow's and absl's start-up lines are shown, not silenced.
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    # --gin.NAME=VALUE flags become gin bindings; argparse sees the rest.
    bindings = [a[len("--gin.") :] for a in argv if a.startswith("--gin.")]
    parser = build_parser()
    args, unknown = parser.parse_known_args([a for a in argv if not a.startswith("--gin.")])
    if unknown and args.command != "cache-tasks":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.beam_args = unknown  # cache-tasks hands Beam's own flags to Beam
    if bindings and not hasattr(args, "gin_file"):
        parser.error(f"{args.command} takes no gin flags")
    args.gin_bindings = [*(getattr(args, "gin_bindings", None) or []), *bindings]
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    elif "tensorflow" not in sys.modules:
        import_tensorflow_quietly()
    try:
        return args.run(args)
    except _user_errors() as error:
        message = " ".join(str(error).split("\n")[:3])
        print(f"t5pod {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        from t5pod import distributed

        if (
            getattr(args, "num_processes", None)
            or getattr(args, "multihost", False)
            or os.environ.get("JAX_COORDINATOR_ADDRESS")
        ):
            if distributed.is_peer_failure(error):
                first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
                print(
                    f"t5pod {args.command}: error: another process of this multi-host job stopped or became "
                    f"unreachable ({first_line}); stopping too. Restart all processes: the run resumes from "
                    "the newest checkpoint.",
                    file=sys.stderr,
                )
                os._exit(3)  # the distributed runtime may block a normal exit
        raise


if __name__ == "__main__":
    sys.exit(main())
