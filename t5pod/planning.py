"""Per-device memory of a training step, from the compiled step, without running it."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from t5pod import partitioning, trainer
from t5pod.config import T5Config


def _bytes_per_device(abstract_tree, shardings_tree) -> int:
    total = 0
    for leaf, sharding in zip(jax.tree_util.tree_leaves(abstract_tree), jax.tree_util.tree_leaves(shardings_tree)):
        shard = sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    return total


def plan(model_config: T5Config, config: trainer.TrainConfig) -> dict:
    """Compiles the train step for config's mesh on the available (possibly fake) devices.

    Returns bytes per device: parameters, optimizer state, the compiled step's temporaries
    (activations and workspace) and its peak, with the step's FLOPs and the compile time.
    """
    import time

    mesh = trainer.validate(config)
    model, tx, schedule, rules, abstract, shardings, _ = trainer.create_state_fns(model_config, config, mesh)
    lengths = config.task_feature_lengths
    batch = {name: jax.ShapeDtypeStruct((config.batch_size, lengths["targets" if name.startswith("decoder") else "inputs"]),
                                        jnp.int32)
             for name in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                          "decoder_loss_weights", "encoder_segment_ids", "decoder_segment_ids",
                          "encoder_positions", "decoder_positions")}
    with mesh, nn.logical_axis_rules(rules):
        step = trainer.make_train_step(config, model, tx, schedule, shardings, mesh)
        start = time.time()
        compiled = step.lower(abstract, batch, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
        compile_s = time.time() - start
    memory = compiled.memory_analysis()
    params = _bytes_per_device(abstract.params, shardings.params)
    opt_state = _bytes_per_device(abstract.opt_state, shardings.opt_state)
    temp = int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else 0
    arguments = int(getattr(memory, "argument_size_in_bytes", 0)) if memory is not None else 0
    outputs = int(getattr(memory, "output_size_in_bytes", 0)) if memory is not None else 0
    aliased = int(getattr(memory, "alias_size_in_bytes", 0)) if memory is not None else 0
    return {
        "devices": jax.device_count(), "mesh": dict(mesh.shape), "params_bytes": params,
        "opt_state_bytes": opt_state, "activation_temp_bytes": temp,
        "peak_bytes": arguments + outputs - aliased + temp, "compile_s": compile_s,
    }


def format_plan(result: dict, hbm_gib: float | None) -> str:
    gib = 2 ** 30
    lines = [f"mesh {result['mesh']} over {result['devices']} devices; per device:",
             f"  parameters        {result['params_bytes'] / gib:8.3f} GiB",
             f"  optimizer state   {result['opt_state_bytes'] / gib:8.3f} GiB",
             f"  activations/temp  {result['activation_temp_bytes'] / gib:8.3f} GiB",
             f"  peak (compiled)   {result['peak_bytes'] / gib:8.3f} GiB"]
    if hbm_gib:
        fits = result["peak_bytes"] <= hbm_gib * gib
        lines.append(f"  {'fits' if fits else 'does NOT fit'} in {hbm_gib:g} GiB of HBM per device")
    return "\n".join(lines)
