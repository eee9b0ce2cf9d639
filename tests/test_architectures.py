"""The paper's §3.2 architectures: Figure 3's masks, decoder-only caching, parameter sharing, and
each architecture through the same training, checkpoint and inference paths."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import linen as nn

from t5pod import tasks  # noqa: F401  (registers the demo tasks)
from t5pod import checkpoints, decoder_only, decoding, ginconf, inference, models, network, trainer
from helpers import train_config
from t5pod.configs import InferConfig, MeshConfig, T5Config
from t5pod.data import demo_corpus
from t5pod.layers import make_attention_mask

SMALL = T5Config(
    vocab_size=64,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_heads=4,
    num_layers=2,
    dropout_rate=0.0,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
)


def _params(config, seed=0, scale=1.0):
    model = models.build(config)
    params = nn.unbox(model.init(jax.random.PRNGKey(seed), **models.dummy_features(config, 1, 8, 8))["params"])
    return model, jax.tree_util.tree_map(lambda x: x * scale, params)


def test_figure_3_masks_by_hand():
    positions, ones = np.arange(4)[None], np.ones((1, 4), np.int32)
    fully_visible = np.asarray(make_attention_mask(ones, ones))[0, 0]
    causal = np.asarray(decoder_only.attention_mask(positions, ones))[0, 0]
    prefix = np.asarray(decoder_only.attention_mask(positions, ones, np.array([[1, 1, 0, 0]])))[0, 0]
    assert fully_visible.astype(int).tolist() == [[1, 1, 1, 1]] * 4
    assert causal.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert prefix.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # Packed: two examples in one row never see each other; each has its own prefix.
    packed = decoder_only.attention_mask(
        np.array([[0, 1, 2, 0, 1]]), np.array([[1, 1, 1, 2, 2]]), np.array([[1, 1, 0, 1, 0]])
    )
    assert np.asarray(packed)[0, 0].astype(int).tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]


@pytest.mark.parametrize("architecture", ["decoder_only", "prefix_lm"])
def test_only_the_prefix_lm_looks_ahead_within_the_inputs(architecture):
    config = dataclasses.replace(SMALL, architecture=architecture)
    model, params = _params(config)
    tokens = np.array([[0, 5, 6, 7, 1, 9, 10, 11]])
    changed = tokens.copy()
    changed[0, 3] = 8  # a later input token
    prefix = np.array([[1, 1, 1, 1, 1, 0, 0, 0]])
    before = model.apply({"params": params}, tokens, decoder_causal_attention=prefix)
    after = model.apply({"params": params}, changed, decoder_causal_attention=prefix)
    moved = np.abs(np.asarray(after - before)).max(axis=-1)[0]
    assert moved[3:].min() > 0  # the changed position and everything after it
    if architecture == "prefix_lm":
        assert moved[:3].min() > 0  # the prefix is fully visible
    else:
        assert moved[:3].max() == 0  # causal


def _naive_greedy(model, params, inputs, length):
    """Greedy decoding by re-running the whole concatenation for every new token."""
    # Every sequence is padded at the end to one length, so the model compiles once: under causal
    # attention no position sees the padding after it.
    total = 1 + inputs.shape[1] + length
    forward = jax.jit(lambda p, tokens, causal: model.apply({"params": p}, tokens, decoder_causal_attention=causal))
    out = []
    for row in inputs:
        prompt = [int(t) for t in row if t > 0]
        generated = []
        for _ in range(length):
            sequence = [0] + prompt + generated
            tokens, causal = np.zeros((1, total), np.int32), np.zeros((1, total), np.int32)
            tokens[0, : len(sequence)] = sequence
            causal[0, : len(prompt) + 1] = 1
            logits = forward(params, tokens, causal)
            generated.append(int(np.argmax(logits[0, len(sequence) - 1])))
        out.append(generated)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("architecture,scan", [("decoder_only", False), ("prefix_lm", False), ("prefix_lm", True)])
def test_cached_decoding_equals_rerunning_the_model(architecture, scan):
    config = dataclasses.replace(SMALL, architecture=architecture, scan_layers=scan)
    model, params = _params(config, scale=3.0)  # larger weights: less repetitive output
    inputs = np.array([[5, 6, 7, 8, 9, 1, 0, 0], [10, 11, 1, 0, 0, 0, 0, 0]], np.int32)  # different lengths
    tokens, _ = jax.jit(lambda p, x: decoding.sample_decode(model, p, x, 6))(params, inputs)
    expected = _naive_greedy(model, params, inputs, 6)
    for got, want in zip(np.asarray(tokens).tolist(), expected):
        stop = want.index(1) + 1 if 1 in want else len(want)  # decoding stops a row at EOS
        assert got[:stop] == want[:stop]
    beams, _ = jax.jit(lambda p, x: decoding.beam_search(model, p, x, 6, beam_size=1))(params, inputs)
    assert np.asarray(beams)[:, 0].tolist() == np.asarray(tokens).tolist()


def test_score_of_the_decoder_only_model_sums_target_log_probs():
    config = dataclasses.replace(SMALL, architecture="prefix_lm")
    model, params = _params(config, seed=3)
    features = models.scoring_features(config, np.array([[5, 6, 1, 0]]), np.array([[7, 8, 1]]))
    assert features["decoder_input_tokens"].tolist() == [[0, 5, 6, 1, 7, 8, 0]]
    assert features["decoder_loss_weights"].tolist() == [[0, 0, 0, 1, 1, 1, 0]]
    assert features["decoder_causal_attention"].tolist() == [[1, 1, 1, 1, 0, 0, 0]]
    logits = model.apply(
        {"params": params},
        features["decoder_input_tokens"],
        decoder_causal_attention=features["decoder_causal_attention"],
    )
    log_probs = jax.nn.log_softmax(logits[0])
    want = float(log_probs[3, 7] + log_probs[4, 8] + log_probs[5, 1])
    assert float(decoding.score(model, params, features)[0]) == pytest.approx(want, rel=1e-5)


def test_shared_encoder_decoder_has_one_set_of_layers():
    shared = dataclasses.replace(SMALL, architecture="shared_encoder_decoder")
    model, params = _params(shared, seed=1)
    assert set(params["decoder"]["layers_0"]) == {"pre_cross_attention_layer_norm", "encoder_decoder_attention"}
    assert "layers_0" not in params["encoder"]
    d, h, k, f = 32, 4, 8, 48
    self_attention_and_mlp = 4 * d * h * k + 2 * d * f + 2 * d  # attention, relu MLP, two norms
    assert models.count_parameters(shared) == models.count_parameters(SMALL) - 2 * self_attention_and_mlp
    # The decoder really uses the shared weights: changing them moves the decoder's output even
    # with the encoder's output held fixed.
    inputs, targets = np.array([[5, 6, 7, 1]]), np.array([[0, 9, 10]])
    encoded = model.apply({"params": params}, inputs, method=network.Transformer.encode)
    changed = jax.tree_util.tree_map(lambda x: x, params)
    changed["shared_layers_1"]["mlp"]["wo"] = params["shared_layers_1"]["mlp"]["wo"] * 2

    def decode(p):
        return model.apply({"params": p}, encoded, inputs, targets, method=network.Transformer.decode)

    assert np.abs(np.asarray(decode(changed) - decode(params))).max() > 1e-4


def test_architecture_gin_files():
    ginconf.parse(["models/t5_1_0/base.gin", "models/architectures/half_layers.gin"])
    half = ginconf.model_config()
    ginconf.parse(["models/t5_1_0/base.gin"])
    base = ginconf.model_config()
    assert (half.num_layers, half.decoder_layers, base.num_layers) == (6, 6, 12)
    for name in ("shared_encoder_decoder", "decoder_only", "prefix_lm"):
        ginconf.parse(["models/t5_1_0/base.gin", f"models/architectures/{name}.gin"])
        assert ginconf.model_config().architecture == name
    # Table 2: "P" parameters for the shared, half-layer and decoder-only models, 2P for the baseline.
    ginconf.parse(["models/t5_1_0/base.gin", "models/architectures/decoder_only.gin"])
    lm = models.count_parameters(ginconf.model_config())
    assert models.count_parameters(half) / lm == pytest.approx(1.0, abs=0.15)
    assert models.count_parameters(base) / lm == pytest.approx(2.0, abs=0.1)


def test_bad_architecture_settings_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown architecture 'decoder'"):
        T5Config(architecture="decoder")
    with pytest.raises(ValueError, match="num_decoder_layers .3. must equal num_layers .2."):
        T5Config(architecture="shared_encoder_decoder", num_layers=2, num_decoder_layers=3)
    with pytest.raises(ValueError, match="scan_layers=False"):
        T5Config(architecture="shared_encoder_decoder", scan_layers=True)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["shared_encoder_decoder", "decoder_only", "prefix_lm"])
def test_each_architecture_trains_sharded_resumes_and_decodes(tmp_path, architecture):
    model_config = T5Config(
        vocab_size=2176,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        dropout_rate=0.0,
        architecture=architecture,
    )
    config = train_config(
        tmp_path / "run",
        task_feature_lengths={"inputs": 64, "targets": 16},
        train_steps=2,
        checkpoint_period=1,
        mesh_shape=(4, 2),
    )
    straight = trainer.train(
        dataclasses.replace(config, model_dir=str(tmp_path / "straight"), train_steps=3), model_config
    )
    first = trainer.train(config, model_config)
    resumed = trainer.train(dataclasses.replace(config, train_steps=3), model_config)
    assert first["step"] == 2 and resumed["step"] == straight["step"] == 3
    assert resumed["loss"] == straight["loss"]  # the resumed step 3 is the uninterrupted run's, bit for bit
    predictor = inference.Predictor(
        model_config,
        InferConfig(
            checkpoint_path=str(tmp_path / "run"),
            batch_size=2,
            task_feature_lengths={"inputs": 16, "targets": 128},
            max_decode_length=4,
            mesh=MeshConfig((2, 4)),
        ),
        demo_corpus.vocabulary(),
    )
    predictions = predictor.predict_ids([[5, 6, 7], [8, 9]])
    assert len(predictions) == 2 and all(len(p) <= 4 for p in predictions)
    assert predictor.score_ids([[5, 6, 7]], [[10, 11]])[0] < 0
    other = dataclasses.replace(model_config, architecture="encoder_decoder")
    with pytest.raises(checkpoints.CheckpointError, match="architecture"):
        trainer.train(dataclasses.replace(config, train_steps=4), other)
