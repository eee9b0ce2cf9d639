"""Per-device memory of a training step, from the step the trainer compiles, without running it."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from t5pod import trainer
from t5pod.configs import T5Config, TrainConfig


def _bytes_per_device(abstract_tree, shardings_tree) -> int:
    total = 0
    for leaf, sharding in zip(jax.tree_util.tree_leaves(abstract_tree), jax.tree_util.tree_leaves(shardings_tree)):
        shard = sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    return total


def plan(model_config: T5Config, config: TrainConfig) -> dict:
    """Compiles the train step for config's mesh on the available (possibly fake) devices.

    Returns bytes per device: parameters, optimizer state, and the compiled step's report
    (trainer.compile_train_step: arguments, outputs, temporaries, peak, FLOPs, compile time).
    """
    mesh = trainer.validate(config)
    setup = trainer.create_state(model_config, config, mesh)
    with mesh, nn.logical_axis_rules(setup.rules):
        _, report = trainer.compile_train_step(config, model_config, setup, mesh)
    return {
        "devices": jax.device_count(), "mesh": dict(mesh.shape),
        "params_bytes": _bytes_per_device(setup.abstract_state.params, setup.shardings.params),
        "opt_state_bytes": _bytes_per_device(setup.abstract_state.opt_state, setup.shardings.opt_state),
        **report,
    }


def format_plan(result: dict, hbm_gib: float | None) -> str:
    gib = 2 ** 30
    lines = [f"mesh {result['mesh']} over {result['devices']} devices; per device:",
             f"  parameters        {result['params_bytes'] / gib:8.3f} GiB",
             f"  optimizer state   {result['opt_state_bytes'] / gib:8.3f} GiB",
             f"  activations/temp  {result['temp_bytes'] / gib:8.3f} GiB",
             f"  peak (compiled)   {result['peak_bytes'] / gib:8.3f} GiB"]
    if hbm_gib:
        fits = result["peak_bytes"] <= hbm_gib * gib
        lines.append(f"  {'fits' if fits else 'does NOT fit'} in {hbm_gib:g} GiB of HBM per device")
    return "\n".join(lines)
