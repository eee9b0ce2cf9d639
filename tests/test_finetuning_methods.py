"""The paper's §3.5.1 fine-tuning methods: adapter layers and gradual unfreezing, as optax
parameter groups (frozen parameters get no updates, and never-trained ones no optimizer state)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import linen as nn

from t5pod import tasks  # noqa: F401  (registers the demo tasks)
from t5pod import checkpoints, ginconf, models, optimizer, partitioning, train_loop, trainer
from helpers import step_config, train_config
from t5pod.configs import CheckpointConfig, T5Config, TrainConfig

MODEL = T5Config(
    vocab_size=2176,
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


def _batch(rows=8, inputs=24, targets=8):
    rng = np.random.default_rng(0)
    b = {
        "encoder_input_tokens": rng.integers(2, 2000, (rows, inputs)),
        "decoder_target_tokens": rng.integers(2, 2000, (rows, targets)),
    }
    b["decoder_input_tokens"] = np.pad(b["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
    b["decoder_loss_weights"] = np.ones_like(b["decoder_target_tokens"])
    return {k: v.astype(np.int32) for k, v in b.items()}


def _train(model_config, steps, mesh_shape=(4, 2), **overrides):
    """Parameters after each of `steps` optimizer steps (index 0: the initial ones), and the state."""
    config = step_config(
        task_feature_lengths={"inputs": 24, "targets": 8},
        train_steps=steps,
        batch_size=8,
        learning_rate=1e-2,
        schedule="constant",
        mesh_shape=mesh_shape,
        **overrides,
    )
    mesh = partitioning.make_mesh(mesh_shape)
    setup = trainer.create_state(model_config, config, mesh)
    with mesh, nn.logical_axis_rules(setup.rules):
        state = setup.init(jax.random.PRNGKey(0))
        step = trainer.make_train_step(config, setup, mesh)
        batch = jax.device_put(_batch(), train_loop.batch_sharding(mesh))
        history = [jax.device_get(state.params)]
        for i in range(steps):
            state, _ = step(state, batch, jax.random.PRNGKey(i))
            history.append(jax.device_get(state.params))
    return history, state


def _moved(before, after) -> set[str]:
    """'/'-joined paths of the parameters that changed."""
    moved = set()
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves(after)):
        if not np.array_equal(a, b):
            moved.add("/".join(str(k.key) for k in path))
    return moved


def _all_paths(params) -> set[str]:
    return {"/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.slow
def test_adapters_train_only_adapters_and_layer_norms():
    config = dataclasses.replace(MODEL, adapter_dim=8)
    history, state = _train(config, 2, trainable="adapters")
    moved = _moved(history[0], history[2])
    expected = {p for p in _all_paths(history[0]) if "/adapter/" in p or p.rsplit("/", 1)[0].endswith("_norm")}
    assert moved == expected
    assert len([p for p in expected if "/adapter/" in p]) == 2 * 2 * 2  # 2 stacks x 2 layers x (wi, wo)
    # The frozen group keeps no optimizer state: only the trained parameters have moments.
    assert not jax.tree_util.tree_leaves(state.opt_state.inner_states["frozen"])
    sizes = {
        "/".join(str(k.key) for k in path): np.size(x) for path, x in jax.tree_util.tree_leaves_with_path(history[0])
    }
    state_size = sum(np.size(x) for x in jax.tree_util.tree_leaves(state.opt_state))
    assert 0 < state_size <= sum(sizes[p] for p in expected) + 100


def test_adapter_shapes_and_residual_placement():
    config = dataclasses.replace(MODEL, adapter_dim=8)
    params = nn.unbox(models.abstract_variables(config)["params"])
    adapter = params["decoder"]["layers_1"]["adapter"]
    assert (adapter["wi"].shape, adapter["wo"].shape) == ((32, 8), (8, 32))  # dense-ReLU-dense, d_model in and out
    assert models.count_parameters(config) - models.count_parameters(MODEL) == 4 * 2 * 32 * 8


@pytest.mark.slow
def test_gradual_unfreezing_moves_one_more_layer_each_episode():
    history, _ = _train(MODEL, 4, gradual_unfreezing=True)  # 2 layers per stack: episodes of 2 steps
    paths = _all_paths(history[0])
    bottom = {p for p in paths if "/layers_0/" in p or "relpos_bias" in p}
    first_episode = _moved(history[0], history[2])
    assert first_episode == paths - bottom  # top layers, final norms, embedding and output layer
    assert _moved(history[2], history[3]) == paths  # the next episode unfreezes the bottom layers too
    assert any("encoder/layers_0/" in p for p in bottom) and any("decoder/layers_0/" in p for p in bottom)


def test_layer_depth_of_each_parameter():
    def depth(*names):
        return optimizer.layer_from_top([jax.tree_util.DictKey(n) for n in names], {"encoder": 12, "decoder": 12})

    assert depth("encoder", "layers_11", "mlp", "wi") == 0
    assert depth("decoder", "layers_0", "self_attention", "query") == 11
    assert depth("encoder", "encoder_norm", "scale") == 0
    assert depth("encoder", "relpos_bias", "rel_embedding") == 11
    assert depth("token_embedder", "embedding") is None


def test_fine_tuning_method_errors():
    params = nn.unbox(models.abstract_variables(MODEL)["params"])
    with pytest.raises(ValueError, match="no adapters.*adapter_dim"):
        optimizer.fine_tuning_optimizer(lambda: optimizer.adafactor(1e-3), params, trainable="adapters")
    with pytest.raises(ValueError, match="Unknown TRAINABLE 'adapter'"):
        optimizer.fine_tuning_optimizer(lambda: optimizer.adafactor(1e-3), params, trainable="adapter")
    scanned = nn.unbox(models.abstract_variables(dataclasses.replace(MODEL, scan_layers=True))["params"])
    with pytest.raises(ValueError, match="scan_layers = False"):
        optimizer.fine_tuning_optimizer(
            lambda: optimizer.adafactor(1e-3), scanned, unfreeze_every=5, num_layers={"encoder": 2, "decoder": 2}
        )


def test_fine_tuning_gin_files():
    ginconf.parse(
        ["tasks.gin", "runs/finetune.gin", "models/tiny.gin", "finetuning/adapters.gin"],
        ["MODEL_DIR='/run'", "INITIAL_CHECKPOINT_PATH='/ckpt'", "ADAPTER_DIM=32"],
    )
    assert ginconf.model_config().adapter_dim == 32 and ginconf.train_config().optimizer.trainable == "adapters"
    ginconf.parse(
        ["tasks.gin", "runs/finetune.gin", "models/tiny.gin", "finetuning/gradual_unfreezing.gin"],
        ["MODEL_DIR='/run'", "INITIAL_CHECKPOINT_PATH='/ckpt'"],
    )
    assert ginconf.train_config().optimizer.gradual_unfreezing and ginconf.model_config().adapter_dim == 0


def _saved_checkpoint(tmp_path, seed: int = 7) -> dict:
    """MODEL's parameters initialised from seed, saved as the checkpoint tmp_path/pretrained."""
    pretrained = nn.unbox(models.build(MODEL).init(jax.random.PRNGKey(seed), **models.dummy_features(MODEL))["params"])
    checkpoints.save_params(str(tmp_path / "pretrained"), pretrained, MODEL)
    return pretrained


def _one_step_from_checkpoint(tmp_path, learning_rate: float, **overrides) -> TrainConfig:
    """One fine-tuning step from tmp_path/pretrained into tmp_path/run, checkpointed."""
    return train_config(
        tmp_path / "run",
        task_feature_lengths={"inputs": 64, "targets": 16},
        train_steps=1,
        checkpoint_period=1,
        schedule="constant",
        learning_rate=learning_rate,
        initial_checkpoint_path=str(tmp_path / "pretrained"),
        **overrides,
    )


@pytest.mark.slow
def test_adapters_fine_tune_from_a_checkpoint_without_adapters(tmp_path):
    pretrained = _saved_checkpoint(tmp_path)
    config = _one_step_from_checkpoint(tmp_path, 1e-3, trainable="adapters")
    with_adapters = dataclasses.replace(MODEL, adapter_dim=8)
    trainer.train(config, with_adapters)
    tuned = checkpoints.restore_params(
        str(tmp_path / "run"), with_adapters, nn.unbox(models.abstract_variables(with_adapters)["params"])
    )
    # Frozen weights are the pretrained ones, exactly; the adapters exist and were trained.
    np.testing.assert_array_equal(
        tuned["encoder"]["layers_0"]["attention"]["query"], pretrained["encoder"]["layers_0"]["attention"]["query"]
    )
    np.testing.assert_array_equal(tuned["token_embedder"]["embedding"], pretrained["token_embedder"]["embedding"])
    assert tuned["decoder"]["layers_1"]["adapter"]["wo"].shape == (8, 32)


def test_keep_fresh_takes_the_matched_parameters_from_the_fresh_initialisation():
    def init(seed):
        return nn.unbox(models.build(MODEL).init(jax.random.PRNGKey(seed), **models.dummy_features(MODEL))["params"])

    pretrained, fresh = init(7), init(8)
    mixed = checkpoints.keep_fresh(pretrained, fresh, ("decoder/.*",))
    np.testing.assert_array_equal(mixed["decoder"]["layers_1"]["mlp"]["wo"], fresh["decoder"]["layers_1"]["mlp"]["wo"])
    np.testing.assert_array_equal(
        mixed["encoder"]["layers_0"]["attention"]["query"], pretrained["encoder"]["layers_0"]["attention"]["query"]
    )
    np.testing.assert_array_equal(mixed["token_embedder"]["embedding"], pretrained["token_embedder"]["embedding"])
    assert checkpoints.keep_fresh(pretrained, fresh, ()) is pretrained
    # A pattern matches whole paths: 'decoder' alone names no parameter.
    with pytest.raises(ValueError, match="'decoder' matches no parameter.*'decoder/.\\*'"):
        checkpoints.keep_fresh(pretrained, fresh, ("decoder",))


def test_initial_checkpoint_skip_settings_are_checked():
    with pytest.raises(ValueError, match="list of patterns.*not the string 'decoder/.\\*'"):
        CheckpointConfig(initial_path="/ckpt", initial_skip="decoder/.*")
    with pytest.raises(ValueError, match="INITIAL_CHECKPOINT_PATH, which is not set"):
        CheckpointConfig(initial_skip=("decoder/.*",))
    with pytest.raises(ValueError, match="'decoder/\\(' is not a regular expression"):
        CheckpointConfig(initial_path="/ckpt", initial_skip=("decoder/(",))


@pytest.mark.slow
def test_fine_tuning_with_a_fresh_decoder(tmp_path):
    """INITIAL_CHECKPOINT_SKIP=['decoder/.*']: the encoder and embeddings start from the checkpoint,
    the decoder from random weights (a learning rate of 1e-9 keeps one step's changes negligible)."""
    pretrained = _saved_checkpoint(tmp_path)
    config = _one_step_from_checkpoint(tmp_path, 1e-9, initial_checkpoint_skip=("decoder/.*",))
    trainer.train(config, MODEL)
    tuned = checkpoints.restore_params(
        str(tmp_path / "run"), MODEL, nn.unbox(models.abstract_variables(MODEL)["params"])
    )
    np.testing.assert_allclose(
        tuned["encoder"]["layers_1"]["mlp"]["wi_0"], pretrained["encoder"]["layers_1"]["mlp"]["wi_0"], atol=1e-6
    )
    np.testing.assert_allclose(
        tuned["token_embedder"]["embedding"], pretrained["token_embedder"]["embedding"], atol=1e-6
    )
    for path in (("layers_0", "self_attention", "query"), ("logits_dense",)):
        before, after = pretrained["decoder"], tuned["decoder"]
        for key in path:
            before, after = before[key], after[key]
        assert np.abs(np.asarray(after) - np.asarray(before)).max() > 0.01, path
