"""Logical axis names, the one table that maps them to mesh axes, and mesh construction.

Model code names only the logical axes below. Which mesh axis (if any) shards each of them is
decided here and nowhere else.
"""

from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axes of parameters and activations.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
RELPOS_BUCKETS = "relpos_buckets"
LAYERS = "layers"  # the stacked-layer axis added by scan over layers
LORA_RANK = "lora_rank"  # the inner axis of a LoRA update (t5pod.peft)
PROMPT = "prompt"  # the positions of prompt tuning's learned prompt (t5pod.peft)

# Mesh axes.
DATA = "data"
MODEL = "model"

# Logical -> mesh rules (Megatron-style model parallelism over `model`, data parallelism over
# `data`). An axis listed twice falls back to the second rule when the first mesh axis is
# already used by another dimension of the same array.
STANDARD_RULES: tuple[tuple[str, str | None], ...] = (
    (BATCH, DATA),
    (VOCAB, MODEL),
    (MLP, MODEL),
    (HEADS, MODEL),
    (KV, None),
    (EMBED, None),
    (LENGTH, None),
    (RELPOS_BUCKETS, None),
    (LAYERS, None),
    (LORA_RANK, None),
    (PROMPT, None),
)

# FSDP additionally splits parameters (and so optimizer state) over `data` along `embed`.
# Activations keep `batch` on `data`: that rule comes first, so `embed` falls back to None.
FSDP_RULES: tuple[tuple[str, str | None], ...] = tuple(
    rule
    for logical, mesh_axis in STANDARD_RULES
    for rule in ([(EMBED, DATA), (EMBED, None)] if logical == EMBED else [(logical, mesh_axis)])
)


LOGICAL_AXES = (BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB, RELPOS_BUCKETS, LAYERS, LORA_RANK, PROMPT)


def logical_rules(fsdp: bool = False, overrides: Sequence = ()) -> tuple[tuple[str, str | None], ...]:
    """The table for a run: the standard (or FSDP) rules, with the rules of each logical axis that
    `overrides` names (LOGICAL_AXIS_RULES: [(logical axis, mesh axis or None)]) replaced by its."""
    rules = FSDP_RULES if fsdp else STANDARD_RULES
    replaced: dict[str, list] = {}
    for rule in overrides:
        if len(rule) != 2:
            raise ValueError(
                f"LOGICAL_AXIS_RULES holds (logical axis, mesh axis) pairs, e.g. ('mlp', 'model'); got {rule!r}."
            )
        logical, mesh_axis = rule
        if logical not in LOGICAL_AXES:
            raise ValueError(
                f"LOGICAL_AXIS_RULES names {logical!r}, not a logical axis of t5pod ({', '.join(LOGICAL_AXES)})."
            )
        if mesh_axis not in (DATA, MODEL, None):
            raise ValueError(
                f"LOGICAL_AXIS_RULES maps {logical!r} to {mesh_axis!r}; the mesh axes are 'data', 'model' or None."
            )
        replaced.setdefault(logical, []).append((logical, mesh_axis))
    out, placed = [], set()
    for logical, mesh_axis in rules:
        if logical not in replaced:
            out.append((logical, mesh_axis))
        elif logical not in placed:
            out += replaced[logical]
            placed.add(logical)
    return tuple(out)


def make_mesh(
    mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None, dcn_shape: Sequence[int] = (1, 1)
) -> Mesh:
    """A (data, model) mesh over `devices` (all devices by default).

    mesh_shape is the mesh within one slice (a -1 takes whatever the other axis leaves, as in T5X);
    dcn_shape is the mesh of slices joined by the data-centre network: with (slices, 1) the data
    axis spans slices (the devices of slice s hold data rows s * data ... (s + 1) * data - 1), so only
    the gradient all-reduce crosses DCN. Slices are the devices' slice_index (TPU) or, where
    devices have none (GPU nodes, CPU test processes), the processes.
    """
    # Ordered by process, then id: the model axis stays within a host (its collectives use local
    # links) and the data axis runs across hosts.
    devices = sorted(jax.devices() if devices is None else devices, key=lambda d: (d.process_index, d.id))
    dcn_data, dcn_model = (int(n) for n in dcn_shape)
    if dcn_model != 1:
        raise ValueError(
            f"DCN_MESH_SHAPE ({dcn_data}, {dcn_model}) puts the model axis across slices: its collectives run in "
            "every layer and would wait on the data-centre network. Use DCN_MESH_SHAPE=(slices, 1) and keep model "
            "parallelism within a slice (MESH_SHAPE)."
        )
    if len(devices) % dcn_data:
        raise ValueError(f"DCN_MESH_SHAPE ({dcn_data}, 1): {len(devices)} devices do not split into {dcn_data} slices.")
    per_slice = len(devices) // dcn_data
    data, model = (int(n) for n in mesh_shape)
    if data == -1 and model > 0 and per_slice % model == 0:
        data = per_slice // model
    if model == -1 and data > 0 and per_slice % data == 0:
        model = per_slice // data
    if data <= 0 or model <= 0 or data * model != per_slice:
        where = f"the {per_slice} devices of each of {dcn_data} slices" if dcn_data > 1 else f"the {per_slice}"
        raise ValueError(
            f"MESH_SHAPE ({mesh_shape[0]}, {mesh_shape[1]}) does not divide {where} available devices: "
            f"data * model must equal {per_slice}. "
            f'Fix it with e.g. --gin.MESH_SHAPE="({per_slice}, 1)".'
        )
    if dcn_data == 1:
        return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))
    # A multi-slice TPU's devices name their slice; devices in one slice (or with none: GPU nodes,
    # CPU test processes) are grouped by process instead.
    slices = {getattr(d, "slice_index", None) for d in devices}
    by_slice = None not in slices and len(slices) > 1
    granules = slices if by_slice else {d.process_index for d in devices}
    if len(granules) != dcn_data:
        raise ValueError(
            f"DCN_MESH_SHAPE ({dcn_data}, 1) asks for {dcn_data} slices, and the devices are in {len(granules)} "
            f"{'slices' if by_slice else 'processes (the devices name no more than one slice)'}; set it to "
            f"({len(granules)}, 1)."
        )
    grid = mesh_utils.create_hybrid_device_mesh((data, model), (dcn_data, 1), devices, process_is_granule=not by_slice)
    return Mesh(grid, (DATA, MODEL))


def mesh_of(config) -> Mesh:
    """The mesh a MeshConfig describes, on all devices."""
    return make_mesh(config.shape, dcn_shape=config.dcn_shape)


def check_batch(batch_size: int, mesh: Mesh, macro: str):
    """Refuses a batch of batch_size rows that the data axis of mesh cannot split evenly (macro
    names the setting, BATCH_SIZE or INFER_BATCH_SIZE)."""
    data = mesh.shape[DATA]
    if batch_size % data:
        raise ValueError(
            f"{macro} {batch_size} is not divisible by the data-parallel mesh size {data} "
            f"(MESH_SHAPE {tuple(mesh.shape.values())}); use a multiple of {data}."
        )


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> object:
    """Maps a pytree of logical PartitionSpecs (from nn.get_partition_spec) to NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_shardings(abstract_variables, mesh: Mesh, rules):
    """NamedShardings for a variables pytree whose leaves carry nn.LogicallyPartitioned boxes."""
    return logical_to_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _dict_names(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _attr_names(path) -> set:
    return {k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)}


def optimizer_state_shardings(abstract_opt_state, abstract_params, param_shardings_tree, mesh: Mesh):
    """Shardings for optimizer state that mirrors the parameters.

    A leaf shaped like its parameter is sharded like it; Adafactor's factored moments (the
    parameter's shape less one axis) keep the sharding of the remaining axes; counters and
    placeholders are replicated.
    """
    params = {}
    for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree_util.tree_leaves(param_shardings_tree)
    ):
        params[_dict_names(path)] = (
            tuple(leaf.shape),
            tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec)),
        )

    def lookup(names):
        # Grouped optimizers (optax.multi_transform) key their states by group label first.
        for start in range(len(names)):
            if names[start:] in params:
                return params[names[start:]]
        return None, None

    def sharding_for(path, leaf):
        shape, spec = lookup(_dict_names(path))
        if shape is None or not leaf.shape:
            return replicated(mesh)
        if tuple(leaf.shape) == shape:
            return NamedSharding(mesh, PartitionSpec(*spec))
        if len(leaf.shape) == len(shape) - 1 and len(shape) >= 2:
            # optax factors over the two largest axes: v_row drops the largest, v_col the next.
            order = np.argsort(shape, kind="stable")
            dropped = {"v_row": order[-1], "v_col": order[-2]}
            for name, axis in dropped.items():
                if name in _attr_names(path):
                    kept = spec[:axis] + spec[axis + 1 :]
                    if shape[:axis] + shape[axis + 1 :] == tuple(leaf.shape):
                        return NamedSharding(mesh, PartitionSpec(*kept))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(sharding_for, abstract_opt_state)


def check_divisible(abstract_tree, shardings_tree, mesh: Mesh, what: str = "parameter"):
    """A clear error when a mesh axis does not divide the array dimension it shards."""
    leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
    for (path, leaf), sharding in zip(leaves, jax.tree_util.tree_leaves(shardings_tree)):
        for size, axes in zip(leaf.shape, sharding.spec):
            for axis in (axes,) if isinstance(axes, str) else (axes or ()):
                if size % mesh.shape[axis]:
                    name = "/".join(str(getattr(k, "key", k)) for k in path)
                    raise ValueError(
                        f"MESH_SHAPE {tuple(mesh.shape.values())}: the {mesh.shape[axis]}-way `{axis}` axis does not "
                        f"divide {what} {name} (a dimension of {size}, shape {tuple(leaf.shape)}). Choose a `{axis}` "
                        f"size that divides {size}."
                    )
