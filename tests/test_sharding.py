"""Logical-axis sharding on 8 fake CPU devices (set in conftest before JAX starts)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from t5pod import configs, network, partitioning
from t5pod.configs import T5Config

CONFIG = T5Config(
    vocab_size=128,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
)

# What the standard rules give on a (data, model) mesh: model-parallel vocab, mlp and heads.
EXPECTED = {
    ("token_embedder", "embedding"): P("model", None),
    ("encoder", "layers_0", "attention", "query"): P(None, "model", None),
    ("encoder", "layers_0", "attention", "out"): P("model", None, None),
    ("encoder", "layers_1", "mlp", "wi_0"): P(None, "model"),
    ("encoder", "layers_1", "mlp", "wo"): P("model", None),
    ("encoder", "relpos_bias", "rel_embedding"): P("model", None),
    ("encoder", "encoder_norm", "scale"): P(None),
    ("decoder", "layers_1", "encoder_decoder_attention", "key"): P(None, "model", None),
    ("decoder", "logits_dense"): P(None, "model"),
}


def _flat(tree):
    return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _sharded_init(config, mesh, rules):
    model = network.Transformer(config)
    tokens = jnp.ones((8, 16), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]
    shardings = partitioning.param_shardings(abstract, mesh, rules)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, tokens, tokens)["params"]), out_shardings=nn.unbox(shardings))
    return model, init(jax.random.PRNGKey(0)), nn.unbox(shardings)


def test_eight_fake_devices():
    assert jax.device_count() == 8


def test_parameter_shardings_follow_the_rules():
    mesh = partitioning.make_mesh((4, 2))
    _, params, shardings = _sharded_init(CONFIG, mesh, partitioning.STANDARD_RULES)
    flat = _flat(params)
    for path, spec in EXPECTED.items():
        assert flat[path].sharding.spec == spec, path
        assert flat[path].sharding.mesh.shape == {"data": 4, "model": 2}
    wi = flat[("encoder", "layers_1", "mlp", "wi_0")]
    assert {s.data.shape for s in wi.addressable_shards} == {(32, 32)}  # 64 columns split over model=2


def test_fsdp_rules_shard_embed_over_data():
    mesh = partitioning.make_mesh((4, 2))
    _, params, _ = _sharded_init(CONFIG, mesh, partitioning.FSDP_RULES)
    flat = _flat(params)
    assert flat[("encoder", "layers_0", "mlp", "wi_0")].sharding.spec == P("data", "model")
    assert flat[("token_embedder", "embedding")].sharding.spec == P("model", "data")


def test_scanned_layers_get_an_unsharded_layer_axis():
    mesh = partitioning.make_mesh((4, 2))
    config = dataclasses.replace(CONFIG, scan_layers=True)
    _, params, _ = _sharded_init(config, mesh, partitioning.STANDARD_RULES)
    wi = _flat(params)[("encoder", "layers", "mlp", "wi_0")]
    assert wi.shape == (2, 32, 64) and wi.sharding.spec == P(None, None, "model")


@pytest.mark.parametrize("mesh_shape", [(4, 2), (8, 1), (2, 4)])
def test_sharded_forward_equals_single_device(mesh_shape):
    mesh = partitioning.make_mesh(mesh_shape)
    model, params, shardings = _sharded_init(CONFIG, mesh, partitioning.STANDARD_RULES)
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, 128, size=(8, 16))
    inputs[3, 9:] = 0
    targets = rng.integers(2, 128, size=(8, 16))
    targets[:, 0] = 0

    single = model.apply({"params": jax.device_get(params)}, inputs, targets)
    batch_sharding = NamedSharding(mesh, P("data", None))

    @jax.jit
    def forward(params, inputs, targets):
        with nn.logical_axis_rules(partitioning.STANDARD_RULES):
            return model.apply({"params": params}, inputs, targets)

    with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else mesh:
        sharded = forward(params, jax.device_put(inputs, batch_sharding), jax.device_put(targets, batch_sharding))
    assert sharded.sharding.spec[0] == "data" if mesh_shape[0] > 1 else True
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-5)


def test_mesh_that_does_not_divide_the_devices_is_a_clear_error():
    with pytest.raises(ValueError, match=r"MESH_SHAPE \(3, 2\) does not divide the 8 available devices"):
        partitioning.make_mesh((3, 2))
    assert partitioning.make_mesh((-1, 2)).shape == {"data": 4, "model": 2}


def test_a_multi_slice_mesh_is_refused_when_it_does_not_match_the_slices_or_puts_model_across_them():
    with pytest.raises(ValueError, match=r"DCN_MESH_SHAPE \(1, 2\) puts the model axis across slices"):
        partitioning.make_mesh((4, 1), dcn_shape=(1, 2))
    # One test process: its 8 devices name no slice, and they are one process, so one granule.
    with pytest.raises(
        ValueError, match=r"asks for 2 slices, and the devices are in 1 processes .* set it to \(1, 1\)"
    ):
        partitioning.make_mesh((4, 1), dcn_shape=(2, 1))
    with pytest.raises(ValueError, match="8 devices do not split into 3 slices"):
        partitioning.make_mesh((4, 1), dcn_shape=(3, 1))
    with pytest.raises(ValueError, match=r"does not divide the 4 devices of each of 2 slices"):
        partitioning.make_mesh((3, 1), dcn_shape=(2, 1))
    with pytest.raises(ValueError, match="DCN_MESH_SHAPE must be"):
        configs.MeshConfig(dcn_shape=(0, 1))
