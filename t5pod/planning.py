"""Per-device memory of a training step and of decoding, from the programs the trainer and the
Predictor compile, without running them."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from t5pod import inference, trainer
from t5pod.configs import InferConfig, T5Config, TrainConfig


def _bytes_per_device(abstract_tree, shardings_tree) -> int:
    total = 0
    for leaf, sharding in zip(jax.tree_util.tree_leaves(abstract_tree), jax.tree_util.tree_leaves(shardings_tree)):
        shard = sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    return total


def plan(model_config: T5Config, config: TrainConfig, decode: InferConfig | None = None) -> dict:
    """Compiles the train step for config's mesh on the available (possibly fake) devices.

    Returns bytes per device: parameters, optimizer state, and the compiled step's report
    (trainer.compile_train_step: arguments, outputs, temporaries, peak, FLOPs, compile time);
    with `decode`, also the decode program's (inference.decode_memory: decode_* keys).
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
        **(inference.decode_memory(model_config, decode, mesh) if decode is not None else {}),
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
    if "decode_peak_bytes" in result:
        beams = f" x {result['decode_beam_size']} beams" if result["decode_beam_size"] > 1 else ""
        lines += [f"decoding {result['decode_batch_size']} rows{beams} x {result['decode_length']} tokens; per device:",
                  f"  parameters        {result['decode_params_bytes'] / gib:8.3f} GiB",
                  f"  cache/temp        {result['decode_temp_bytes'] / gib:8.3f} GiB",
                  f"  peak (compiled)   {result['decode_peak_bytes'] / gib:8.3f} GiB"]
        if hbm_gib:
            fits = result["decode_peak_bytes"] <= hbm_gib * gib
            lines.append(f"  {'fits' if fits else 'does NOT fit'} in {hbm_gib:g} GiB of HBM per device")
    return "\n".join(lines)
