"""The model on its own: packing, the decoding cache, parameter counts, shipped gin files."""

import dataclasses
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from conftest import REPO
from t5pod import ginconf, models, network
from t5pod.configs import T5Config

TINY = T5Config(
    vocab_size=96,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=24,
)


def _init(config, seed=0):
    return nn.unbox(
        network.Transformer(config).init(
            jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32)
        )["params"]
    )


@pytest.mark.parametrize("tied", [False, True])
def test_packed_row_equals_examples_run_alone(tied):
    config = dataclasses.replace(TINY, tie_word_embeddings=tied, feed_forward_proj="relu" if tied else "gated-gelu")
    model, params = network.Transformer(config), _init(config)
    # Two examples, each longer than 8 tokens so relative positions reach the log buckets.
    a_in, a_out = np.arange(2, 14), np.array([0, 40, 41, 42, 43, 44, 45, 46, 47, 48])
    b_in, b_out = np.arange(50, 59), np.array([0, 70, 71, 72, 73, 74, 75])
    packed = dict(
        encoder_input_tokens=np.concatenate([a_in, b_in, [0, 0, 0]])[None],
        encoder_segment_ids=np.array([1] * 12 + [2] * 9 + [0] * 3)[None],
        encoder_positions=np.concatenate([np.arange(12), np.arange(9), [0, 0, 0]])[None],
        decoder_input_tokens=np.concatenate([a_out, b_out, [0]])[None],
        decoder_segment_ids=np.array([1] * 10 + [2] * 7 + [0])[None],
        decoder_positions=np.concatenate([np.arange(10), np.arange(7), [0]])[None],
    )
    logits = np.asarray(model.apply({"params": params}, **packed))
    alone_a = np.asarray(model.apply({"params": params}, a_in[None], a_out[None]))[0]
    alone_b = np.asarray(model.apply({"params": params}, b_in[None], b_out[None]))[0]
    np.testing.assert_allclose(logits[0, :10], alone_a, atol=1e-5)
    np.testing.assert_allclose(logits[0, 10:17], alone_b, atol=1e-5)
    # Without segment ids the examples would see each other: the check above can fail.
    leaky = np.asarray(model.apply({"params": params}, packed["encoder_input_tokens"], packed["decoder_input_tokens"]))
    assert np.abs(leaky[0, 10:17] - alone_b).max() > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_equals_full_forward(scan):
    config = dataclasses.replace(TINY, scan_layers=scan)
    model, params = network.Transformer(config), _init(config, seed=1)
    if scan:
        params = network.stack_layers(_init(dataclasses.replace(config, scan_layers=False), seed=1))
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, 96, size=(2, 11))
    inputs[1, 6:] = 0
    targets = rng.integers(2, 96, size=(2, 30))
    targets[:, 0] = 0  # 30 > max_distance: log buckets
    full = np.asarray(model.apply({"params": params}, inputs, targets))

    cache = models.init_decode_cache(model, params, inputs, 30)
    encoded = model.apply({"params": params}, inputs, method=network.Transformer.encode)

    @jax.jit
    def step(cache, token):
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            encoded,
            inputs,
            token,
            decode=True,
            mutable=["cache"],
            method=network.Transformer.decode,
        )
        return variables["cache"], logits[:, 0]

    stepwise = []
    for i in range(targets.shape[1]):
        cache, logits = step(cache, targets[:, i : i + 1])
        stepwise.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(stepwise, axis=1), full, atol=1e-5)


# Published sizes (T5 paper and model cards). T5 1.0 large is quoted as 770M; its real count with
# the 32128 vocabulary is 738M, hence 5%.
PUBLISHED = {
    "t5_1_0/small": 60e6,
    "t5_1_0/base": 220e6,
    "t5_1_0/large": 770e6,
    "t5_1_0/3B": 2.8e9,
    "t5_1_0/11B": 11e9,
    "t5_1_1/small": 77e6,
    "t5_1_1/base": 248e6,
    "t5_1_1/large": 783e6,
    "t5_1_1/xl": 2.85e9,
    "t5_1_1/xxl": 11.1e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    ginconf.parse([f"models/{name}.gin"])
    count = models.count_parameters(ginconf.model_config())
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.05, count


def _readme_size_rows():
    """(gin file, d_model, d_ff, heads, d_kv, enc layers, dec layers, stated count) from docs/training.md."""
    text = (REPO / "docs" / "training.md").read_text()
    rows = re.findall(
        r"^\| `models/([\w/]+)\.gin`[^|]*\| (\d+) \| (\d+) \| (\d+) × (\d+) \| (\d+)/(\d+) \| ([\d.]+[MB]) \|$",
        text,
        flags=re.M,
    )
    return [(name, *map(int, numbers), stated) for name, *numbers, stated in rows]


def test_parameter_counts_are_exactly_the_readme_table():
    rows = _readme_size_rows()
    assert len(rows) == 11
    for name, d, f, heads, kv, enc, dec, stated in rows:
        v, inner = 32128, heads * kv
        if name.startswith("t5_1_0"):  # ReLU feed-forward (wi, wo), output layer tied to the embedding
            embeddings, mlp = v * d, 2 * d * f
        else:  # gated GELU (wi_0, wi_1, wo), a separate output layer
            embeddings, mlp = 2 * v * d, 3 * d * f
        # q,k,v,o and norms per layer (the decoder has cross-attention and a third norm), one
        # relative-position table (32 buckets x heads) per stack, two final norms.
        expected = (
            embeddings
            + enc * (4 * d * inner + mlp + 2 * d)
            + dec * (8 * d * inner + mlp + 3 * d)
            + 2 * 32 * heads
            + 2 * d
        )
        ginconf.parse([f"models/{name}.gin"])
        assert models.count_parameters(ginconf.model_config()) == expected, name
        shown = f"{expected / 1e9:.2f}B" if expected >= 1e9 else f"{expected / 1e6:.1f}M"
        assert stated == shown, (name, stated, shown)


def test_exact_parameter_counts():
    # Hand count for T5 1.0 small: embedding 32128*512, 6 encoder layers of q,k,v,o (4*512*512)
    # + wi,wo (2*512*2048) + 2 norms, 6 decoder layers with a second attention and a third norm,
    # two relative-bias tables 8*32, two final norms.
    d, f, v = 512, 2048, 32128
    encoder_layer = 4 * d * d + 2 * d * f + 2 * d
    decoder_layer = 8 * d * d + 2 * d * f + 3 * d
    expected = v * d + 6 * encoder_layer + 6 * decoder_layer + 2 * 8 * 32 + 2 * d
    ginconf.parse(["models/t5_1_0/small.gin"])
    assert models.count_parameters(ginconf.model_config()) == expected == 60_506_624


SHIPPED_GIN = sorted(glob.glob(os.path.join(ginconf.GIN_DIR, "**", "*.gin"), recursive=True))


@pytest.mark.parametrize("path", SHIPPED_GIN, ids=lambda p: os.path.relpath(p, ginconf.GIN_DIR))
def test_every_shipped_gin_file_parses(path):
    import re

    # Run files leave some macros to the user (%gin.REQUIRED); supply exactly those.
    # Overlay files (the paper-study folders) are parsed after the run and model files they amend.
    folder = os.path.relpath(path, ginconf.GIN_DIR).split(os.sep)[0]
    base = {
        "finetuning": ["runs/finetune.gin", "models/tiny.gin"],
        "mixing": ["runs/pretrain.gin", "models/tiny.gin"],
    }.get(folder, [])
    bindings = []
    for _ in range(5):
        try:
            ginconf.parse(
                ["tasks.gin", *base, path],
                bindings,
                read_directly=ginconf.DATA_COMMAND_MACROS,
            )
            break
        except ValueError as error:
            match = re.search(r"The gin macro (\w+) has no value", str(error))
            if not match:
                raise
            bindings.append(f"{match.group(1)} = 'required-value'")
    config = ginconf.model_config()
    assert config.vocab_size % 128 == 0  # padded embedding
    text = open(path).read()
    if base or "t5pod.TrainConfig" in text or re.search(r"include 'runs/(pretrain|finetune)", text):
        assert ginconf.train_config().train_steps > 0
    if "include 'runs/infer.gin'" in text or "t5pod.InferConfig" in text:
        assert ginconf.infer_config().max_decode_length > 0


def test_unknown_gin_parameter_is_an_error():
    with pytest.raises(ValueError, match="d_modle"):
        ginconf.parse(["models/tiny.gin"], ["t5pod.T5Config.d_modle = 3"])
    with pytest.raises(FileNotFoundError, match="models/huge.gin"):
        ginconf.parse(["models/huge.gin"])


def test_bad_config_values_are_errors():
    with pytest.raises(ValueError, match="feed_forward_proj 'swiglu'"):
        T5Config(feed_forward_proj="swiglu")
    with pytest.raises(ValueError, match="remat_policy"):
        T5Config(remat_policy="some")


@pytest.mark.slow
def test_bfloat16_activations_keep_float32_params_and_logits():
    config = dataclasses.replace(TINY, dtype="bfloat16")
    params = _init(config)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    inputs = np.arange(2, 12)[None]
    targets = np.arange(0, 6)[None]
    low = network.Transformer(config).apply({"params": params}, inputs, targets)
    high = network.Transformer(TINY).apply({"params": params}, inputs, targets)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(low), np.asarray(high), atol=0.1)
    assert np.abs(np.asarray(low) - np.asarray(high)).max() > 0  # bf16 really was used
