"""Orbax checkpoints and the folder layout they live in.

A checkpoint directory holds one folder per step with named items: `params` (the model
parameters) and `metadata` (JSON: the model architecture, so that a directory holding another
model is refused instead of silently restored). A training run's MODEL_DIR keeps them under
MODEL_DIR/checkpoints/<step>/ (adding `opt_state`) with each process's input-stream position
under MODEL_DIR/data_positions/<step>/process_<i>; a convert-hf OUT_DIR holds the step folders
directly.
"""

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
import tensorflow as tf
from flax import traverse_util

from t5pod import metric_writers, peft
from t5pod.configs import T5Config


def _is_remote(path) -> bool:
    return metric_writers.is_remote(os.fspath(path))


def absolute(path: str) -> str:
    """Local paths made absolute; bucket paths (gs://...) kept as they are."""
    path = os.fspath(path)
    return path if _is_remote(path) else os.path.abspath(path)


CHECKPOINTS_FOLDER = "checkpoints"
DATA_POSITIONS_FOLDER = "data_positions"
BROKEN_FOLDER = "broken_checkpoints"  # checkpoints that could not be read, kept for inspection


def _isdir(path: str) -> bool:
    return tf.io.gfile.isdir(os.fspath(path))


class CheckpointError(ValueError):
    pass


class _QuietReadOnly(logging.Filter):
    """Orbax warns whenever a checkpoint folder is opened read-only, which is how t5pod restores."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Given directory is read only") or "read_only=True" in message)


logging.getLogger("absl").addFilter(_QuietReadOnly())


class _QuietAbandonedWrites(logging.Filter):
    """When a save fails (a full disk), every array's write fails alike, and Orbax's threads and
    asyncio log each failure with its traceback, a hundred or more; t5pod reports the save's
    failure itself, in one line (TrainCheckpointer._writing)."""

    _ORBAX_SAVE_FAILURES = (
        "_SignalingThread.run() raised an exception",
        "Handler Commit operations",
        "Save Finalize thread",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        first_line = record.getMessage().split("\n")[0]
        if record.name == "asyncio":
            return not (
                "exception was never retrieved" in first_line
                and any(name in record.getMessage() for name in ("orbax", "tensorstore", "OCDBT", "zarr"))
            )
        return not any(text in first_line for text in self._ORBAX_SAVE_FAILURES)


logging.getLogger("asyncio").addFilter(_QuietAbandonedWrites())
logging.getLogger("absl").addFilter(_QuietAbandonedWrites())
_unraisable_hook = sys.unraisablehook


def _quiet_closed_loops(unraisable):
    """TensorStore's writes still in flight when a failed save's event loop closed report
    "Event loop is closed" as they finish, each as an unraisable exception with its traceback."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    _unraisable_hook(unraisable)


sys.unraisablehook = _quiet_closed_loops


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, a folder that refuses writes)."""


def _manager(directory: str, max_to_keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(absolute(directory), options=options)


def named_step(path: str) -> int | None:
    """N when path is one checkpoint's folder (MODEL_DIR/checkpoints/N, or N of a converted
    checkpoint), as T5X users name a checkpoint; None for a folder of checkpoints."""
    name = os.path.basename(os.path.normpath(path))
    exists = tf.io.gfile.exists if _is_remote(path) else os.path.exists
    if name.isdigit() and exists(os.path.join(path, "_CHECKPOINT_METADATA")):
        return int(name)
    return None


def checkpoint_root(path: str) -> str:
    """A run's MODEL_DIR keeps its checkpoints under checkpoints/; a converted one holds them directly;
    a path naming one checkpoint (…/N) belongs to its parent."""
    if named_step(path) is not None:
        return os.path.dirname(os.path.normpath(path))
    nested = os.path.join(path, CHECKPOINTS_FOLDER)
    return nested if _isdir(nested) else path


def run_steps(model_dir: str) -> list[int]:
    """The steps a training run saved in MODEL_DIR/checkpoints, oldest first ([]: nothing to resume).

    Unlike all_steps, a converted checkpoint's folder (steps without checkpoints/) is not a run's.
    """
    if not _isdir(os.path.join(model_dir, CHECKPOINTS_FOLDER)):
        return []
    return all_steps(model_dir)


def save_params(
    directory: str,
    params: Any,
    config: T5Config,
    step: int = 0,
    extra_metadata: dict | None = None,
    opt_state: Any = None,
):
    """Writes params (and opt_state, when given) and the architecture metadata as checkpoint
    `step` under directory."""
    metadata = {"architecture": config.checkpoint_fields(), "step": step, **(extra_metadata or {})}
    items = {"params": ocp.args.StandardSave(params), "metadata": ocp.args.JsonSave(metadata)}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    with _manager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(**items))
        manager.wait_until_finished()


def latest_step(directory: str) -> int | None:
    """The newest checkpoint's step (the named one when directory names a checkpoint)."""
    step = named_step(directory)
    if step is not None:
        return step
    directory = checkpoint_root(directory)
    if not _isdir(directory):
        return None
    with _manager(directory, read_only=True) as manager:
        return manager.latest_step()


def all_steps(directory: str) -> list[int]:
    step = named_step(directory)
    if step is not None:
        return [step]
    directory = checkpoint_root(directory)
    if not _isdir(directory):
        return []
    with _manager(directory, read_only=True) as manager:
        return sorted(manager.all_steps())


def read_metadata(directory: str, step: int | None = None) -> tuple[int, dict]:
    """(step, metadata) of the given, named (…/N) or newest complete checkpoint in directory."""
    step = named_step(directory) if step is None else step
    directory = checkpoint_root(directory)
    step = _resolve_step(directory, step)
    with _manager(directory, read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return step, restored["metadata"]


def check_architecture(metadata: dict, config: T5Config, directory: str):
    saved = metadata.get("architecture", {})
    wanted = config.checkpoint_fields()
    saved = {**T5Config.ARCHITECTURE_DEFAULTS, **saved}
    differences = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if differences:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(differences.items()))
        raise CheckpointError(
            f"The checkpoint in {directory} was written for a different model ({detail}). "
            "Pass the model.gin that matches it, or point at a checkpoint of this model."
        )


def restore_params(directory: str, config: T5Config, abstract_params: Any, step: int | None = None) -> Any:
    """Restores params of the given (default newest) step, laid out as abstract_params says.

    abstract_params: a pytree of jax.ShapeDtypeStruct (with .sharding for a sharded restore).
    """
    step, metadata = read_metadata(directory, step)  # a path naming one checkpoint gives its step
    check_architecture(metadata, config, directory)
    with _manager(checkpoint_root(directory), read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"]


def _resolve_step(directory: str, step: int | None) -> int:
    if not _isdir(directory):
        raise CheckpointError(f"No checkpoint directory {directory}: check the path (CHECKPOINT_PATH).")
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise CheckpointError(f"{directory} holds no complete checkpoint (no step directory).")
    return step


def data_position_path(model_dir: str, step: int, process_index: int) -> str:
    """Where a process's input-stream position at `step` is saved (a tf.train.Checkpoint prefix)."""
    return os.path.join(model_dir, DATA_POSITIONS_FOLDER, str(step), f"process_{process_index}")


def restore_train_state(model_dir: str, step: int, abstract_state) -> tuple:
    """(params, opt_state, metadata) of a run's checkpoint, laid out as abstract_state says. Reads only."""
    with _manager(os.path.join(absolute(model_dir), CHECKPOINTS_FOLDER), read_only=True) as manager:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
                metadata=ocp.args.JsonRestore(),
            ),
        )
    return restored["params"], restored["opt_state"], restored["metadata"]


def restore_data_position(model_dir: str, step: int, data_iterator, process_index: int = 0):
    """Moves data_iterator to where this process's stream was when `step` was saved."""
    data_iterator.restore(data_position_path(absolute(model_dir), step, process_index))


def data_position_error(model_dir: str, step: int, process_count: int) -> str | None:
    """Why the input positions saved with `step` cannot be restored (every process's, so that all
    processes decide alike), or None when each one reads back whole."""
    for process_index in range(process_count):
        prefix = data_position_path(absolute(model_dir), step, process_index)
        try:
            dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
            names = sorted(dtypes)
            # Reading every tensor (the iterator's state is a variant, which only RestoreV2 reads)
            # checks the data file, whose truncation the index alone does not show.
            tf.raw_ops.RestoreV2(
                prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), dtypes=[dtypes[n] for n in names]
            )
        except (IndexError, ValueError, tf.errors.OpError) as error:  # IndexError: "Read less bytes than requested"
            return f"{prefix}: {describe_read_error(error)[:150]}"
    return None


def describe_read_error(error: BaseException) -> str:
    """One line about why a checkpoint could not be read, naming the file when the error does."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def move_to_broken(model_dir: str, step: int) -> str:
    """Moves an unreadable checkpoint (and its data position) out of the run's way; never deletes it."""
    model_dir = absolute(model_dir)
    target = os.path.join(model_dir, BROKEN_FOLDER, str(step))
    if tf.io.gfile.exists(target):
        target = f"{target}-{int(time.time())}"
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.rename(os.path.join(model_dir, CHECKPOINTS_FOLDER, str(step)), target)
    positions = os.path.join(model_dir, DATA_POSITIONS_FOLDER, str(step))
    if _isdir(positions):
        tf.io.gfile.rename(positions, os.path.join(target, DATA_POSITIONS_FOLDER))
    return target


def _write_failure(error: BaseException) -> str:
    """The operating system's reason for a failed write ("No space left on device"), which
    TensorStore buries after long file paths; else the error's first words."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    code = re.search(r"os_error_code='(\d+)'", str(error))
    return os.strerror(int(code.group(1))) if code else describe_read_error(error)[:200]


def free_bytes(path: str) -> int:
    """Free bytes on the local disk that holds path."""
    return shutil.disk_usage(path).free


class TrainCheckpointer:
    """Train-state checkpoints of a run: MODEL_DIR/checkpoints/<step>/ plus the data position.

    Each process first writes its data-stream position (MODEL_DIR/data_positions/<step>/), then
    Orbax writes params, optimizer state and metadata into a temporary folder that it renames
    when complete; a checkpoint killed half-way is therefore never listed, and every listed one
    has its data position.
    """

    def __init__(
        self, model_dir: str, keep: int | None = None, async_save: bool = True, keep_period: int | None = None
    ):
        self.model_dir = absolute(model_dir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(os.path.join(self.model_dir, CHECKPOINTS_FOLDER), options=options)
        self._step, self._failed = None, False

    def _data_position(self, step: int, process_index: int) -> str:
        return data_position_path(self.model_dir, step, process_index)

    def save(self, step: int, state, metadata: dict, data_iterator=None, process_index: int = 0):
        with self._writing():  # an earlier asynchronous save's failure surfaces here too
            self.manager.wait_until_finished()
        self._step = step
        self._check_space(step, state)
        with self._writing():
            if data_iterator is not None:
                data_iterator.save(self._data_position(step, process_index))
            # Every process takes part; Orbax writes each array shard from the process that holds it.
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(state.params),
                    opt_state=ocp.args.StandardSave(state.opt_state),
                    metadata=ocp.args.JsonSave({**metadata, "step": step}),
                ),
                force=True,
            )
            if process_index == 0:
                self._prune_data_positions(keep={step})

    def _check_space(self, step: int, state):
        """Refuses a save that cannot fit on MODEL_DIR's local disk before writing any of it (a save
        cut off by a full disk fails in every array's write at once)."""
        if _is_remote(self.model_dir):
            return
        # The shards this process writes (each array's replica 0), plus room for the input position.
        need = 16 * 2**20 + sum(
            shard.data.nbytes
            for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state))
            for shard in getattr(leaf, "addressable_shards", [])
            if shard.replica_id == 0
        )
        free = free_bytes(self.model_dir)
        if free < need:
            self._failed = True
            raise CheckpointWriteError(
                f"Checkpoint {step} needs about {need / 2**30:.2f} GiB and the disk of {self.model_dir} has "
                f"{free / 2**30:.2f} GiB free; nothing of it was written. Free space and run the same command to "
                "resume from the newest checkpoint written before it."
            )

    @contextlib.contextmanager
    def _writing(self):
        """Turns a failed write of checkpoint self._step into one CheckpointWriteError naming the
        fix; after one, nothing more is attempted (the other arrays' writes fail alike)."""
        if self._failed:
            raise CheckpointWriteError("an earlier checkpoint write failed")
        try:
            yield
        except (OSError, ValueError, tf.errors.OpError) as error:  # TensorStore reports I/O as ValueError
            self._failed = True
            intact = [s for s in self.manager.all_steps() if s != self._step]
            raise CheckpointWriteError(
                f"Checkpoint {self._step} could not be written to {self.model_dir} ({_write_failure(error)}). "
                + (f"The checkpoints before it are intact (newest: {max(intact)}): " if intact else "")
                + "Free space, or make the folder writable, and run the same command to resume."
            ) from None

    def restore(self, step: int, abstract_state) -> tuple:
        return restore_train_state(self.model_dir, step, abstract_state)

    def _prune_data_positions(self, keep: set):
        root = os.path.join(self.model_dir, DATA_POSITIONS_FOLDER)
        wanted = set(self.manager.all_steps()) | keep
        for name in tf.io.gfile.listdir(root) if _isdir(root) else []:
            name = name.rstrip("/")
            if name.isdigit() and int(name) not in wanted:
                tf.io.gfile.rmtree(os.path.join(root, name))

    def wait(self):
        with self._writing():
            self.manager.wait_until_finished()

    def close(self):
        """Waits for the last save; after a failed one, only lets go of the manager."""
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except (OSError, ValueError, tf.errors.OpError):
                if not self._failed:
                    raise


def read_initial_params(path: str, model_config: T5Config, params, abstract_params):
    """INITIAL_CHECKPOINT_PATH's parameters, in abstract_params' shardings. Parameters a fine-tuning
    method adds (adapters, LoRA updates, a tuned prompt: peft.ADDED_PARAMETERS) that the checkpoint
    lacks keep their value in params (their fresh initialisation), except a prompt, which starts
    from the checkpoint's token embeddings as Lester et al. do."""
    try:
        return _read_initial_params(path, model_config, params, abstract_params)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds for a bad folder
        raise CheckpointError(
            f"INITIAL_CHECKPOINT_PATH {path} cannot be read ({describe_read_error(error)}); point it at a "
            "run's MODEL_DIR or a convert-hf OUT_DIR."
        ) from None


def read_initial_optimizer_state(path: str, abstract_opt_state):
    """The optimizer state saved with INITIAL_CHECKPOINT_PATH's newest (or named) checkpoint, in
    abstract_opt_state's shardings (INITIAL_OPTIMIZER_STATE=True)."""
    step = _resolve_step(path, named_step(path))
    try:
        with _manager(checkpoint_root(path), read_only=True) as manager:
            items = set(manager.item_metadata(step).keys())
            if "opt_state" not in items:
                raise CheckpointError(
                    f"INITIAL_CHECKPOINT_PATH {path} holds no optimizer state (a convert-hf folder, or "
                    "convert-t5x --no_optimizer_state); set --gin.INITIAL_OPTIMIZER_STATE=False."
                )
            restored = manager.restore(
                step, args=ocp.args.Composite(opt_state=ocp.args.StandardRestore(abstract_opt_state))
            )
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - Orbax raises many kinds for a state of another shape
        raise CheckpointError(
            f"The optimizer state in {path} does not fit this run's ({describe_read_error(error)}); restore it "
            "only into the same model trained with TRAINABLE='all', or set --gin.INITIAL_OPTIMIZER_STATE=False."
        ) from None
    return restored["opt_state"]


def _read_initial_params(path: str, model_config: T5Config, params, abstract_params):
    _, metadata = read_metadata(path)
    saved = {**T5Config.ARCHITECTURE_DEFAULTS, **metadata.get("architecture", {})}
    added = [field for field in peft.ADDED_PARAMETERS if getattr(model_config, field) and not saved.get(field)]
    if not added:
        return restore_params(path, model_config, abstract_params)
    without, abstract_without = model_config, abstract_params
    for field in added:
        fields_without, is_added = peft.ADDED_PARAMETERS[field]
        without = dataclasses.replace(without, **fields_without)
        abstract_without = peft.without_added(abstract_without, is_added)
    restored = _overlay(params, restore_params(path, without, abstract_without))
    if "prompt_length" in added:
        restored["encoder"]["prompt"] = peft.prompt_from_embeddings(
            restored["token_embedder"]["embedding"],
            model_config.prompt_length,
            getattr(abstract_params["encoder"]["prompt"], "sharding", None),
        )
    return restored


def keep_fresh(initial, fresh, patterns: tuple):
    """initial's parameters, except those whose path ('decoder/layers_0/self_attention/query/kernel')
    fully matches one of patterns: those keep their value in fresh."""
    if not patterns:
        return initial
    paths = traverse_util.flatten_dict(fresh, sep="/")
    for pattern in patterns:
        if not any(re.fullmatch(pattern, path) for path in paths):
            examples = ", ".join(sorted(paths)[:3])
            raise ValueError(
                f"INITIAL_CHECKPOINT_SKIP pattern {pattern!r} matches no parameter; paths look like "
                f"{examples}, e.g. 'decoder/.*' for the whole decoder."
            )
    kept = traverse_util.flatten_dict(initial, sep="/")
    chosen = {
        path: value if any(re.fullmatch(p, path) for p in patterns) else kept[path] for path, value in paths.items()
    }
    return traverse_util.unflatten_dict(chosen, sep="/")


def _overlay(base, update):
    if not isinstance(base, dict):
        return update
    return {k: _overlay(v, update[k]) if k in update else v for k, v in base.items()}
