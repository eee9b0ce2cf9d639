"""`python -m t5pod <command>` and the `t5pod` console script: each command parses its gin files
into configs and calls the library (trainer, infer_io, evaluation, probe, planning, ...). The
commands' flags are in cli_flags.py."""

import dataclasses
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

# Only the configs (no JAX) here: JAX and TensorFlow are imported inside the commands, so that
# --help answers at once and `plan --num_devices` can set up fake devices before JAX starts.
from t5pod import configs  # noqa: E402
from t5pod.cli_flags import build_parser  # noqa: E402
from t5pod.progress import Progress  # noqa: E402


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


def _convert_t5x(args) -> int:
    from t5pod import t5x_import

    if not args.gin_file:
        raise ValueError(
            "convert-t5x needs the model's gin file: a T5X checkpoint holds no architecture (e.g. "
            "--gin_file=models/t5_1_1/base.gin for T5X's t5_1_1/base.gin)."
        )
    ginconf = _parse_gin(args, base_files=())
    result = t5x_import.convert(
        args.src, args.out_dir, ginconf.model_config(), optimizer_state=not args.no_optimizer_state
    )
    state = "and the Adafactor state" if result["optimizer_state"] else "(no optimizer state)"
    print(f"Converted {args.src} -> {args.out_dir}: step {result['step']}, {result['parameters']} parameters {state}.")
    if result["refactored"]:
        print(
            f"  {len(result['refactored'])} factored second moments were re-factored for t5pod's attention "
            "kernels: they hold the estimate T5X's update used, not T5X's bits."
        )
    print(
        f"  fine-tune from it: --gin_file={args.out_dir}/model.gin --gin.INITIAL_CHECKPOINT_PATH=\"'{args.out_dir}'\""
    )
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
    step, no_tokenizer = hf_export.export(args.checkpoint_dir, args.out_dir, config, vocabulary)
    print(f"Exported step {step} of {args.checkpoint_dir} -> {args.out_dir}")
    if no_tokenizer:
        print(f"  no tokenizer written: {no_tokenizer}; copy the SentencePiece model in as spiece.model.")
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

    from t5pod.data import caching

    names = [n for n in args.tasks.split(",") if n]
    if not names:
        raise ValueError("cache-tasks needs --tasks=NAME[,NAME] (tasks or mixtures; `t5pod data --list` shows them).")
    setup = functools.partial(ginconf.register_all_tasks, **ginconf.task_settings())
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
    operative = gin.config_str()
    used = ginconf.task_vocabulary(train_config.data.mixture_or_task_name)
    if used and used != ginconf.macro("VOCABULARY_PATH"):
        # The demo tasks (and any with their own vocabulary) ignore VOCABULARY_PATH: config.gin
        # records the one the run used, so that infer and eval from it decode with the same.
        operative += f"\n# The vocabulary {train_config.data.mixture_or_task_name} used:\nVOCABULARY_PATH = {used!r}\n"
    trainer.train(train_config, model_config, operative_config=operative)
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
    for flag in ("num_devices", "hbm_gib", "beam_size", "max_decode_length", "min_rows_per_device"):
        value = getattr(args, flag)
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"plan --{flag} must be a positive number, got {value}.")
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

    # Before any reading or training: an existing vocabulary is never replaced (runs trained with it
    # would change meaning), and the folder must take the new one.
    if os.path.exists(args.output):
        raise FileExistsError(
            f"--output {args.output} already exists; choose a new path (a vocabulary is never replaced)."
        )
    folder = os.path.dirname(os.path.abspath(args.output))
    existing = folder
    while not os.path.exists(existing):  # the folder is made only once the vocabulary is trained
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output {args.output} cannot be written ({existing} is not a writable folder).")
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


# Each command's function, by the name build_parser gives it.
def _goodput(args) -> int:
    import tensorflow as tf

    from t5pod import goodput, metric_writers

    if not tf.io.gfile.exists(os.path.join(args.model_dir, "metrics.jsonl")) and not tf.io.gfile.glob(
        os.path.join(args.model_dir, metric_writers.REMOTE_PARTS_FOLDER, "part-*.jsonl")
    ):
        raise FileNotFoundError(f"{args.model_dir} holds no metrics.jsonl: it is not a t5pod training run.")
    summary = goodput.summarize(metric_writers.read_metrics(args.model_dir))
    for number, attempt in enumerate(summary["attempts"], 1):
        lost = f"; {attempt['lost_steps']} steps redone by the next" if attempt["lost_steps"] else ""
        print(
            f"attempt {number}: steps {attempt['first_step']}-{attempt['step']}{lost}; {goodput.format_line(attempt)}"
        )
    print(f"all {len(summary['attempts'])} attempts: {goodput.format_line(summary)}")
    if args.json:
        print(json.dumps(summary))
    return 0


COMMANDS = {
    "convert-hf": _convert_hf,
    "convert-t5x": _convert_t5x,
    "export-hf": _export_hf,
    "goodput": _goodput,
    "data": _data,
    "cache-tasks": _cache_tasks,
    "train": _train,
    "plan": _plan,
    "infer": _infer,
    "eval": _eval,
    "probe": _probe,
    "train-vocab": _train_vocab,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix from the message alone: printed as one line, no traceback. TensorFlow's
    file errors among them: a path that is missing, refused or unreachable (a bucket offline)."""
    import tensorflow as tf

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
        FileExistsError,
        PermissionError,
        ValueError,
        tf.errors.NotFoundError,
        tf.errors.PermissionDeniedError,
        tf.errors.FailedPreconditionError,
        tf.errors.UnavailableError,
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
        return COMMANDS[args.command](args)
    except _user_errors() as error:
        # gin appends "In call to configurable 'f' (<function f at 0x...>)": the message says enough.
        message = re.sub(r"\s*In call to configurable '[^']*' \(<[^>]*>\)", "", str(error))
        message = " ".join(message.split("\n")[:3]).strip()
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
