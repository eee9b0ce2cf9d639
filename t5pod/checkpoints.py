"""Orbax checkpoints: one step directory per save, holding named items.

Items: `params` (the model parameters), `metadata` (JSON: the model architecture, so that a
directory holding another model is refused instead of silently restored). Training adds
`opt_state` and the data position under the same step.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from t5pod.config import T5Config


class CheckpointError(ValueError):
    pass


def _manager(directory: str, max_to_keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_params(directory: str, params: Any, config: T5Config, step: int = 0, extra_metadata: dict | None = None):
    """Writes params and the architecture metadata as checkpoint `step` under directory."""
    metadata = {"architecture": config.architecture(), "step": step, **(extra_metadata or {})}
    with _manager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), metadata=ocp.args.JsonSave(metadata)))
        manager.wait_until_finished()


def latest_step(directory: str) -> int | None:
    if not os.path.isdir(directory):
        return None
    with _manager(directory, read_only=True) as manager:
        return manager.latest_step()


def read_metadata(directory: str, step: int | None = None) -> tuple[int, dict]:
    """(step, metadata) of the given or newest complete checkpoint in directory."""
    step = _resolve_step(directory, step)
    with _manager(directory, read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return step, restored["metadata"]


def check_architecture(metadata: dict, config: T5Config, directory: str):
    saved = metadata.get("architecture", {})
    wanted = config.architecture()
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
    step, metadata = read_metadata(directory, step)
    check_architecture(metadata, config, directory)
    with _manager(directory, read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"]


def _resolve_step(directory: str, step: int | None) -> int:
    if not os.path.isdir(directory):
        raise CheckpointError(f"No checkpoint directory {directory}: check the path (CHECKPOINT_PATH).")
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise CheckpointError(f"{directory} holds no complete checkpoint (no step directory).")
    return step


def abstract_like(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
