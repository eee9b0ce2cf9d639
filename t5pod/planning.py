"""Per-device memory of a training step and of decoding, from the programs the trainer and the
Predictor compile, without running them; and the largest batch (with the cheapest remat policy)
that fits a device's memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from t5pod import inference, partitioning, trainer
from t5pod.configs import InferConfig, StepConfig, T5Config


def _bytes_per_device(abstract_tree, shardings_tree) -> int:
    total = 0
    for leaf, sharding in zip(jax.tree_util.tree_leaves(abstract_tree), jax.tree_util.tree_leaves(shardings_tree)):
        shard = sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    return total


def plan(model_config: T5Config, step: StepConfig, decode: InferConfig | None = None) -> dict:
    """Compiles the train step for step's mesh on the available (possibly fake) devices.

    Returns bytes per device: parameters, optimizer state, and the compiled step's report
    (trainer.compile_train_step: arguments, outputs, temporaries, peak, FLOPs, compile time);
    with `decode`, also the decode program's (inference.decode_memory: decode_* keys); and
    dcn_bytes_per_step (dcn_bytes_per_step below). A multi-slice mesh is planned as the one-slice
    mesh of the same shape: each device holds and computes the same, only the links differ.
    """
    slices = int(step.mesh.dcn_shape[0])
    if slices > 1:
        step = _as_one_slice(step, slices)
        decode = decode and dataclasses.replace(decode, mesh=step.mesh)
    mesh = trainer.make_mesh(step)
    setup = trainer.create_state(model_config, step, mesh)
    with mesh, nn.logical_axis_rules(setup.rules):
        _, report = trainer.compile_train_step(step, model_config, setup, mesh)
    return {
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "params_bytes": _bytes_per_device(setup.abstract_state.params, setup.shardings.params),
        "opt_state_bytes": _bytes_per_device(setup.abstract_state.opt_state, setup.shardings.opt_state),
        **report,
        **(inference.decode_memory(model_config, decode, mesh) if decode is not None else {}),
        "dcn_slices": slices,
        "dcn_bytes_per_step": dcn_bytes_per_step(setup.abstract_state.params, slices),
    }


def _as_one_slice(step: StepConfig, slices: int) -> StepConfig:
    """step with its (MESH_SHAPE within a slice, DCN_MESH_SHAPE (slices, 1)) mesh as one (data, model)
    mesh over the same devices."""
    if jax.device_count() % slices:
        raise ValueError(
            f"DCN_MESH_SHAPE ({slices}, 1): {jax.device_count()} devices do not split into {slices} slices."
        )
    one = partitioning.make_mesh(step.mesh.shape, jax.devices()[: jax.device_count() // slices])  # checks it
    shape = (one.shape[partitioning.DATA] * slices, one.shape[partitioning.MODEL])
    return dataclasses.replace(step, mesh=dataclasses.replace(step.mesh, shape=shape, dcn_shape=(1, 1)))


def dcn_bytes_per_step(abstract_params, slices: int) -> int:
    """Bytes each slice sends over the data-centre network per train step: the gradients (the
    parameters' size and dtype) averaged across slices by a bandwidth-optimal all-reduce, a
    reduce-scatter and an all-gather of (slices - 1) / slices of them each. With FSDP the same
    bytes move as the gradients' reduce-scatter and the parameters' all-gather. 0 for one slice."""
    gradient_bytes = sum(
        int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(abstract_params)
    )
    return int(2 * (slices - 1) * gradient_bytes // slices)


def with_batch_size(step: StepConfig, batch_size: int) -> StepConfig:
    return dataclasses.replace(step, batch=dataclasses.replace(step.batch, batch_size=batch_size))


# Remat policies by recomputation, least first: the first that fits a full batch wins.
REMAT_ORDER = ("none", "save_dots", "full")


def fit_batch(
    model_config: T5Config,
    step: StepConfig,
    memory_bytes: int,
    *,
    min_rows_per_device: int = 8,
    max_rows_per_device: int = 1024,
    headroom: float = 0.9,
) -> dict:
    """The largest global batch whose compiled train step fits memory_bytes per device.

    For each remat policy in REMAT_ORDER, the batch doubles from min_rows_per_device rows per
    `data` device until the step's peak exceeds headroom * memory_bytes (or max_rows_per_device
    is reached). The first policy that fits min_rows_per_device rows is taken: recomputation
    costs time, so a policy that fits a full batch without it is better than a bigger batch with it.
    Returns {"remat_policy", "batch_size", "plan" (that step's `plan`), "tried": [[policy, batch, peak bytes]]};
    raises ValueError when no policy fits min_rows_per_device.
    """
    if memory_bytes <= 0 or not 0 < headroom <= 1 or not 0 < min_rows_per_device <= max_rows_per_device:
        raise ValueError(
            f"fit_batch needs memory_bytes > 0, 0 < headroom <= 1 and 0 < min_rows_per_device <= "
            f"max_rows_per_device; got {memory_bytes}, {headroom}, {min_rows_per_device}, "
            f"{max_rows_per_device}."
        )
    data_devices = dict(trainer.make_mesh(step).shape)["data"]
    budget, tried = headroom * memory_bytes, []
    for policy in REMAT_ORDER:
        policy_config = dataclasses.replace(model_config, remat_policy=policy)
        best, rows = None, min_rows_per_device
        while rows <= max_rows_per_device:
            batch = rows * data_devices
            result = plan(policy_config, with_batch_size(step, batch))
            tried.append([policy, batch, result["peak_bytes"]])
            if result["peak_bytes"] > budget:
                break
            best, rows = (batch, result), rows * 2
        if best is not None:
            return {"remat_policy": policy, "batch_size": best[0], "plan": best[1], "tried": tried}
    raise ValueError(
        f"The train step does not fit {memory_bytes / 2**30:.2f} GiB per device with "
        f"{min_rows_per_device} rows per device under any remat policy {REMAT_ORDER} (peaks: {tried}). "
        "Use more devices on the model axis, FSDP, or shorter sequences."
    )


def format_plan(result: dict, hbm_gib: float | None) -> str:
    gib = 2**30
    lines = [
        f"mesh {result['mesh']} over {result['devices']} devices; per device:",
        f"  parameters        {result['params_bytes'] / gib:8.3f} GiB",
        f"  optimizer state   {result['opt_state_bytes'] / gib:8.3f} GiB",
        f"  activations/temp  {result['temp_bytes'] / gib:8.3f} GiB",
        f"  peak (compiled)   {result['peak_bytes'] / gib:8.3f} GiB",
    ]
    if hbm_gib:
        fits = result["peak_bytes"] <= hbm_gib * gib
        lines.append(f"  {'fits' if fits else 'does NOT fit'} in {hbm_gib:g} GiB of HBM per device")
    if result.get("dcn_slices", 1) > 1:
        lines.append(
            f"across {result['dcn_slices']} slices: {result['dcn_bytes_per_step'] / gib:.3f} GiB sent over DCN per "
            "step by each slice (the gradient all-reduce of the data axis)"
        )
    if "decode_peak_bytes" in result:
        beams = f" x {result['decode_beam_size']} beams" if result["decode_beam_size"] > 1 else ""
        lines += [
            f"decoding {result['decode_batch_size']} rows{beams} x {result['decode_length']} tokens; per device:",
            f"  parameters        {result['decode_params_bytes'] / gib:8.3f} GiB",
            f"  cache/temp        {result['decode_temp_bytes'] / gib:8.3f} GiB",
            f"  peak (compiled)   {result['decode_peak_bytes'] / gib:8.3f} GiB",
        ]
        if hbm_gib:
            fits = result["decode_peak_bytes"] <= hbm_gib * gib
            lines.append(f"  {'fits' if fits else 'does NOT fit'} in {hbm_gib:g} GiB of HBM per device")
    return "\n".join(lines)
