"""Decoding on the device mesh (8 fake CPU devices): the same ids and scores as one device, with
the parameters restored straight into their shardings."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import linen as nn

from t5pod import checkpoints, decoding, inference, models, partitioning
from t5pod.configs import InferConfig, MeshConfig, T5Config

BASE = T5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=8, d_ff=64, num_layers=2, dropout_rate=0.0)
MODELS = {
    "t5_1_0": dataclasses.replace(BASE, feed_forward_proj="relu", tie_word_embeddings=True),
    "t5_1_1": dataclasses.replace(BASE, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "decoder_only": dataclasses.replace(
        BASE, feed_forward_proj="gated-gelu", tie_word_embeddings=False, architecture="decoder_only"
    ),
}
MESHES = {
    1: [((1, 8), False), ((2, 4), False), ((2, 4), True), ((8, 1), True)],  # by beam size
    4: [((1, 8), False), ((2, 4), True)],
}
LENGTHS = {"inputs": 16, "targets": 8}


def _inputs(rows: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [rng.randint(2, 128, rng.randint(2, 12)).tolist() for _ in range(rows)]


def _random_params(config: T5Config):
    """Normal(0, 0.5) everywhere: unlike a fresh init, the tiny models then predict varied tokens."""
    shapes = nn.unbox(models.abstract_variables(config)["params"])
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape) * 0.5 for k, x in zip(keys, leaves)])


def _one_device(config: T5Config, params, rows: list[list[int]], beam_size: int):
    """The reference: the decoding functions jitted on one device, with no mesh and no shardings."""
    model, device = models.build(config), jax.devices()[0]
    params = jax.device_put(params, device)
    inputs = np.zeros((len(rows), LENGTHS["inputs"]), np.int32)
    for i, row in enumerate(rows):
        inputs[i, : len(row) + 1] = row + [decoding.EOS]
    if beam_size > 1:
        tokens, scores = jax.jit(lambda p, x: decoding.beam_search(model, p, x, LENGTHS["targets"], beam_size))(
            params, inputs
        )
        tokens, scores = tokens[:, 0], scores[:, 0]
    else:
        tokens, scores = jax.jit(lambda p, x: decoding.sample_decode(model, p, x, LENGTHS["targets"]))(params, inputs)
    return [decoding.strip_after_eos(t) for t in np.asarray(tokens)], np.asarray(scores)


@pytest.fixture(scope="module", params=sorted(MODELS))
def saved_model(request, tmp_path_factory):
    config = MODELS[request.param]
    params = _random_params(config)
    path = str(tmp_path_factory.mktemp(request.param))
    checkpoints.save_params(path, params, config)
    return config, params, path


@pytest.mark.parametrize("beam_size", [1, 4])
def test_decoding_on_meshes_equals_one_device(saved_model, beam_size):
    config, params, path = saved_model
    rows = _inputs(12)  # two batches of 8, the second padded
    want_ids, want_scores = _one_device(config, params, rows, beam_size)
    assert len({tuple(ids) for ids in want_ids}) > 6  # varied predictions, not one repeated token
    for mesh_shape, fsdp in MESHES[beam_size]:
        infer_config = InferConfig(
            checkpoint_path=path,
            task_feature_lengths=LENGTHS,
            batch_size=8,
            beam_size=beam_size,
            mesh=MeshConfig(mesh_shape, fsdp),
        )
        predictor = inference.Predictor(config, infer_config, vocabulary=None)
        ids, scores = [], []
        for start in (0, 8):
            batch_ids, batch_scores = predictor.decode_batch(rows[start : start + 8], start // 8)
            ids, scores = ids + batch_ids, scores + batch_scores
        where = f"mesh {mesh_shape} fsdp {fsdp}"
        assert ids == want_ids, where
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, err_msg=where)  # sums of 8 log-probs
        # Restored into the training layout: every array spans all 8 devices, none is whole on one
        # unless the rules replicate it, and the split ones hold only their share per device.
        layout = inference.mesh_layout(config, partitioning.make_mesh(mesh_shape), fsdp)
        for array, sharding in zip(
            jax.tree_util.tree_leaves(predictor.params), jax.tree_util.tree_leaves(layout.param_shardings)
        ):
            assert array.sharding.is_equivalent_to(sharding, array.ndim) and len(array.sharding.device_set) == 8
        split = [a for a in jax.tree_util.tree_leaves(predictor.params) if a.addressable_shards[0].data.size < a.size]
        assert split, where  # some parameters really are split (model axis or FSDP)


def test_scores_on_a_mesh_equal_one_device(saved_model):
    config, params, path = saved_model
    rows, targets = _inputs(8, seed=1), _inputs(8, seed=2)
    targets = [t[: LENGTHS["targets"] - 1] for t in targets]
    predictor = inference.Predictor(
        config,
        InferConfig(
            checkpoint_path=path, task_feature_lengths=LENGTHS, batch_size=8, mesh=MeshConfig((2, 4), fsdp=True)
        ),
        vocabulary=None,
    )
    features = models.scoring_features(
        config, predictor._local(rows, LENGTHS["inputs"]), predictor._local(targets, LENGTHS["targets"])
    )
    model = models.build(config)
    want = jax.jit(lambda p, b: decoding.score(model, p, b))(jax.device_put(params, jax.devices()[0]), features)
    np.testing.assert_allclose(predictor.score_ids(rows, targets), np.asarray(want), rtol=1e-5)


def test_prefix_lm_decodes_on_a_mesh_as_on_one_device(tmp_path):
    config = dataclasses.replace(MODELS["decoder_only"], architecture="prefix_lm")
    params = _random_params(config)
    checkpoints.save_params(str(tmp_path), params, config)
    rows = _inputs(8, seed=3)
    want_ids, want_scores = _one_device(config, params, rows, 1)
    predictor = inference.Predictor(
        config,
        InferConfig(
            checkpoint_path=str(tmp_path),
            task_feature_lengths=LENGTHS,
            batch_size=8,
            mesh=MeshConfig((2, 4), fsdp=True),
        ),
        vocabulary=None,
    )
    ids, scores = predictor.decode_batch(rows)
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_a_mesh_that_does_not_divide_the_model_or_the_batch_is_refused():
    config = dataclasses.replace(BASE, num_heads=6, d_ff=60)
    mesh = partitioning.make_mesh((1, 4), jax.devices()[:4])
    with pytest.raises(ValueError, match=r"the 4-way `model` axis does not divide parameter .*\(a dimension of 6"):
        inference.mesh_layout(config, mesh, fsdp=False)
    infer_config = InferConfig(checkpoint_path="", task_feature_lengths=LENGTHS, batch_size=6, mesh=MeshConfig((4, 2)))
    with pytest.raises(ValueError, match="INFER_BATCH_SIZE 6 is not divisible by the data-parallel mesh size 4"):
        inference.Predictor(BASE, infer_config, vocabulary=None)
