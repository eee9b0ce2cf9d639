"""Logical axis names, the one table that maps them to mesh axes, and mesh construction.

Model code names only the logical axes below. Which mesh axis (if any) shards each of them is
decided here and nowhere else.
"""

from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
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
)

# FSDP additionally splits parameters (and so optimizer state) over `data` along `embed`.
# Activations keep `batch` on `data`: that rule comes first, so `embed` falls back to None.
FSDP_RULES: tuple[tuple[str, str | None], ...] = (
    (BATCH, DATA),
    (VOCAB, MODEL),
    (MLP, MODEL),
    (HEADS, MODEL),
    (KV, None),
    (EMBED, DATA),
    (EMBED, None),
    (LENGTH, None),
    (RELPOS_BUCKETS, None),
    (LAYERS, None),
)


def logical_rules(fsdp: bool = False) -> tuple[tuple[str, str | None], ...]:
    return FSDP_RULES if fsdp else STANDARD_RULES


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh over `devices` (all devices by default).

    A -1 in mesh_shape takes whatever the other axis leaves, as in T5X.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, model = (int(n) for n in mesh_shape)
    if data == -1 and model > 0 and len(devices) % model == 0:
        data = len(devices) // model
    if model == -1 and data > 0 and len(devices) % data == 0:
        model = len(devices) // data
    if data <= 0 or model <= 0 or data * model != len(devices):
        raise ValueError(
            f"MESH_SHAPE ({mesh_shape[0]}, {mesh_shape[1]}) does not divide the {len(devices)} "
            f"available devices: data * model must equal {len(devices)}. "
            f"Fix it with e.g. --gin.MESH_SHAPE=\"({len(devices)}, 1)\"."
        )
    return Mesh(np.asarray(devices).reshape(data, model), (DATA, MODEL))


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> object:
    """Maps a pytree of logical PartitionSpecs (from nn.get_partition_spec) to NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_shardings(abstract_variables, mesh: Mesh, rules):
    """NamedShardings for a variables pytree whose leaves carry nn.LogicallyPartitioned boxes."""
    return logical_to_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
