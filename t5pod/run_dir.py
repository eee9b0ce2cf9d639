"""A training run's folder, MODEL_DIR: what may be in it, whether a run may start there, and
the checkpoint it resumes from. Everything here reads (but for an empty folder made and removed
to see that MODEL_DIR can be written); the only write is the operative config, made after every
check has passed."""

import os
import tempfile

import jax
import tensorflow as tf

from t5pod import checkpoints, distributed, metric_writers, run_lock
from t5pod.configs import T5Config, TrainConfig


class RunDirError(ValueError):
    """A MODEL_DIR a run may not start in, or resume from with these settings."""


# What a MODEL_DIR of a t5pod run may hold; anything else there means it is not one.
_RUN_DIR_ENTRIES = {
    checkpoints.CHECKPOINTS_FOLDER,
    checkpoints.DATA_POSITIONS_FOLDER,
    checkpoints.BROKEN_FOLDER,
    "config.gin",
    "metrics.jsonl",
    metric_writers.REMOTE_PARTS_FOLDER,
    "train",
    "eval",
    "inference_eval",
    "eval_metrics.jsonl",
    run_lock.LEASE_FILE,
}
# Settings that decide the input stream, by the name each checkpoint saves them under: a resume
# that changes one cannot continue it. {name: (the setting to change, its value in a TrainConfig)}
_STREAM_SETTINGS = {
    "batch_size": ("BATCH_SIZE", lambda config: config.batch.batch_size),
    "task_feature_lengths": ("TASK_FEATURE_LENGTHS", lambda config: config.batch.task_feature_lengths),
    "mixture_or_task_name": ("MIXTURE_OR_TASK_NAME", lambda config: config.data.mixture_or_task_name),
    "pack": ("t5pod.BatchConfig.pack", lambda config: config.batch.pack),
    "random_seed": ("RANDOM_SEED", lambda config: config.random_seed),
}


def check_model_dir(config: TrainConfig):
    """Refuses a MODEL_DIR that is a file, another tool's folder, or in use by a live run.

    Process 0 looks (it alone writes there, so the others could see its first writes) and every
    process follows its answer, so that all of them stop together.
    """
    problem = _model_dir_problem(config) if jax.process_index() == 0 else None
    if distributed.agree(problem is not None):
        error = run_lock.RunLockError if problem and "in use by another run" in problem else RunDirError
        raise error(problem or f"MODEL_DIR {config.model_dir} was refused by process 0 (see its message).")


def _model_dir_problem(config: TrainConfig) -> str | None:
    model_dir = config.model_dir
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        return f"MODEL_DIR {model_dir} is a file, not a folder; choose a new MODEL_DIR."
    parent = os.path.dirname(os.path.normpath(model_dir))
    while parent and parent != os.path.dirname(parent) and not tf.io.gfile.exists(parent):
        parent = os.path.dirname(parent)
    if parent and tf.io.gfile.exists(parent) and not tf.io.gfile.isdir(parent):
        return f"MODEL_DIR {model_dir} is below {parent}, which is a file; choose a MODEL_DIR in a folder."
    unwritable = _unwritable(model_dir if tf.io.gfile.isdir(model_dir) else parent)
    if unwritable:
        return f"MODEL_DIR {model_dir} cannot be written ({unwritable}); choose a writable folder."
    if not tf.io.gfile.isdir(model_dir):
        return None
    entries = {name.rstrip("/") for name in tf.io.gfile.listdir(model_dir)}
    if "model.gin" in entries or any(name.isdigit() for name in entries):
        return (
            f"MODEL_DIR {model_dir} holds a converted checkpoint (convert-hf output), not a training run; "
            f"training there would hide it. Start from it with --gin.INITIAL_CHECKPOINT_PATH=\"'{model_dir}'\" "
            "and a new MODEL_DIR, or evaluate it with --gin.CHECKPOINT_PATH."
        )
    foreign = sorted(
        name
        for name in entries - _RUN_DIR_ENTRIES
        if not (name.startswith("config-") and name.endswith(".gin"))
        and not name.startswith(".")
        and not (name.startswith(run_lock.LEASE_FILE + ".") and name.endswith(".tmp"))  # a lease write cut short
    )
    if foreign:
        return (
            f"MODEL_DIR {model_dir} is not empty and is not a t5pod run folder (it holds "
            f"{', '.join(foreign[:5])}); choose a new or empty MODEL_DIR."
        )
    return run_lock.refusal(model_dir, config.lease_timeout_s)


def _unwritable(folder: str) -> str | None:
    """Why nothing can be made in a local folder (read-only, no permission), found by making and
    removing an empty folder there; None for buckets, which are not probed."""
    if not folder or metric_writers.is_remote(folder):
        return None
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".t5pod-write-check-"))
    except OSError as error:
        return error.strerror or str(error)
    return None


def resume_point(config: TrainConfig, model_config: T5Config, abstract, writer) -> tuple:
    """(step, params, opt_state, metadata, broken steps) of the newest readable checkpoint, or
    (None, ...) for a new run. Reads only; refuses another model's checkpoints. A checkpoint whose
    saved input position cannot be read is passed over for an older one that is whole, because an
    exact resume needs both; when none is, the run stops naming the two ways on."""
    broken, unpositioned = [], []
    for step in reversed(checkpoints.run_steps(config.model_dir)):
        try:
            _, metadata = checkpoints.read_metadata(config.model_dir, step)
        except Exception as error:  # noqa: BLE001 - any read failure of a saved step means "broken"
            broken.append((step, checkpoints.describe_read_error(error)))
            continue
        try:
            checkpoints.check_architecture(metadata, model_config, config.model_dir)
        except checkpoints.CheckpointError as error:
            raise checkpoints.CheckpointError(
                f"MODEL_DIR {config.model_dir} holds checkpoints of another model; refusing to overwrite or "
                f"restore them. Use a new MODEL_DIR or the model.gin that matches. ({error})"
            ) from None
        if not config.data.restart_data_stream and metadata.get("process_count", 1) == jax.process_count():
            reason = checkpoints.data_position_error(config.model_dir, step, jax.process_count())
            if reason:
                unpositioned.append((step, f"its input position cannot be read: {reason}"))
                continue
        try:
            params, opt_state, metadata = checkpoints.restore_train_state(config.model_dir, step, abstract)
        except Exception as error:  # noqa: BLE001
            broken.append((step, checkpoints.describe_read_error(error)))
            continue
        broken = sorted(broken + unpositioned, reverse=True)
        for saved_step, reason in broken:
            writer.print(
                f"Warning: checkpoint {saved_step} in {config.model_dir}/{checkpoints.CHECKPOINTS_FOLDER} "
                f"cannot be read ({reason}); it will be kept in {checkpoints.BROKEN_FOLDER}/ and the run "
                f"resumes from step {step}."
            )
        return step, params, opt_state, metadata, broken
    if unpositioned:
        step, reason = unpositioned[0]
        raise checkpoints.CheckpointError(
            f"Checkpoint {step} in {config.model_dir} is readable but {reason}, and no older checkpoint has "
            "both. Resume with --gin.RESTART_DATA_STREAM=True (the input stream restarts from its seed), or "
            "restore the data_positions folder from a copy."
        )
    if broken:
        raise checkpoints.CheckpointError(
            f"No checkpoint in {config.model_dir}/{checkpoints.CHECKPOINTS_FOLDER} can be read (step {broken[0][0]}: "
            f"{broken[0][1]}). Move the folder away to start afresh, or restore it from a copy."
        )
    return None, None, None, None, []


def check_stream_settings(config: TrainConfig, saved: dict, step: int):
    """Refuses to continue a saved input position under settings that change the stream."""
    if config.data.restart_data_stream:
        return
    saved, now = saved.get("data_settings", {}), stream_settings(config)
    changed = [
        f"{_STREAM_SETTINGS[name][0]} {saved[name]!r} -> {now[name]!r}"
        for name in _STREAM_SETTINGS
        if name in saved and saved[name] != now[name]
    ]
    if changed:
        raise RunDirError(
            f"Checkpoint {step} in {config.model_dir} was written with other input settings ({'; '.join(changed)}), "
            "so its saved input position does not apply. Restore the old settings, or pass "
            "--gin.RESTART_DATA_STREAM=True to continue from the checkpoint with the input stream restarted from "
            "its seed."
        )


def write_operative_config(model_dir: str, operative_config: str, resume_step: int | None):
    """MODEL_DIR/config.gin; a resumed run keeps the previous one as config-<step>.gin."""
    path = os.path.join(model_dir, "config.gin")
    if resume_step is not None and tf.io.gfile.exists(path):
        tf.io.gfile.rename(path, os.path.join(model_dir, f"config-{resume_step}.gin"), overwrite=True)
    if operative_config:
        metric_writers.write_text(path, operative_config)


def stream_settings(config: TrainConfig) -> dict:
    """The settings saved with each checkpoint that decide its input stream."""
    return {name: value(config) for name, (_, value) in _STREAM_SETTINGS.items()}
