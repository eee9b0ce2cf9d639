"""convert-hf: reference weights give the reference's logits; bad folders give clear errors."""

import json
import os

import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from helpers import hf_reference
from t5pod import checkpoints, cli, ginconf, hf_names, layers, models, network
from t5pod.configs import T5Config


def _load_converted(out_dir):
    ginconf.parse([os.path.join(out_dir, "model.gin")])
    config = ginconf.model_config()
    abstract = nn.unbox(models.abstract_variables(config)["params"])
    return config, checkpoints.restore_params(out_dir, config, abstract)


@pytest.fixture(scope="module", params=sorted(hf_reference.CONFIGS))
def converted(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    model = hf_reference.make_checkpoint(request.param, str(base / "hf"))
    assert cli.main(["convert-hf", str(base / "hf"), str(base / "out")]) == 0
    config, params = _load_converted(str(base / "out"))
    return request.param, model, config, params


def test_logits_match_reference(converted):
    kind, hf_model, config, params = converted
    expected = hf_reference.CONFIGS[kind]
    assert config.tie_word_embeddings == expected["tie_word_embeddings"]
    assert config.decoder_layers == expected["num_decoder_layers"]
    inputs, decoder_inputs, lengths = hf_reference.batch(config.vocab_size)
    want = hf_reference.reference_logits(hf_model, inputs, decoder_inputs)
    got = np.asarray(network.Transformer(config).apply({"params": params}, inputs, decoder_inputs))
    assert got.shape == want.shape
    for row, n in enumerate(lengths):  # positions past a row's length are padding
        np.testing.assert_allclose(got[row, :n], want[row, :n], atol=1e-4, rtol=0)
    assert np.abs(want).max() > 0.5  # the comparison is not between near-zero numbers


def test_scanned_layers_give_the_same_logits(converted):
    import dataclasses

    _, _, config, params = converted
    inputs, decoder_inputs, lengths = hf_reference.batch(config.vocab_size, seed=1)
    unrolled = network.Transformer(config).apply({"params": params}, inputs, decoder_inputs)
    scanned_config = dataclasses.replace(config, scan_layers=True, remat_policy="full")
    scanned = network.Transformer(scanned_config).apply(
        {"params": network.stack_layers(params)}, inputs, decoder_inputs
    )
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(unrolled), atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 20), (8, 16)])
def test_relative_position_buckets_match_reference(bidirectional, num_buckets, max_distance):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-400, 401)
    want = T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    got = layers.relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_relative_position_buckets_by_hand():
    # Bidirectional, 32 buckets: 16 per direction, 8 exact; keys after the query add 16.
    got = layers.relative_position_bucket(np.array([0, -1, -7, -8, -12, -16, -127, -128, -1000, 1, 8, 1000]), True)
    np.testing.assert_array_equal(np.asarray(got), [0, 1, 7, 8, 9, 10, 15, 15, 15, 17, 24, 31])
    # Causal: future keys share bucket 0; 16 exact buckets; 32 -> 16 + 16*log(2)/log(8) = 21.
    got = layers.relative_position_bucket(np.array([3, 0, -1, -15, -16, -32, -1000]), False)
    np.testing.assert_array_equal(np.asarray(got), [0, 0, 1, 15, 16, 21, 31])


def test_model_gin_binds_config_and_vocabulary(tmp_path):
    hf_reference.make_checkpoint("t5_1_0", str(tmp_path / "hf"))
    (tmp_path / "hf" / "spiece.model").write_bytes(b"not a real model, only copied")
    assert cli.main(["convert-hf", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "model.gin").read_text()
    assert f"VOCABULARY_PATH = '{tmp_path / 'out' / 'spiece.model'}'" in text
    assert (tmp_path / "out" / "spiece.model").read_bytes() == b"not a real model, only copied"
    step, metadata = checkpoints.read_metadata(str(tmp_path / "out"))
    assert step == 0 and metadata["architecture"]["feed_forward_proj"] == "relu"


def _expect_error(capsys, src, out, *phrases):
    capsys.readouterr()  # drop what making the checkpoint printed
    assert cli.main(["convert-hf", str(src), str(out)]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1, message  # one line, no traceback
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_errors_name_the_problem(tmp_path, capsys):
    src, out = tmp_path / "hf", tmp_path / "out"
    src.mkdir()
    _expect_error(capsys, src, out, "no config.json")
    hf_reference.make_checkpoint("t5_1_0", str(src))

    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "gated-swish"}))
    _expect_error(capsys, src, out, "unknown feed_forward_proj 'gated-swish'")

    (src / "config.json").write_text(json.dumps({**config, "d_ff": 65}))
    _expect_error(capsys, src, out, "has shape (64, 32) but config.json implies (65, 32)")

    (src / "config.json").write_text(json.dumps(config))
    os.rename(src / "model.safetensors", src / "pytorch_model.bin")
    _expect_error(capsys, src, out, "no model.safetensors", "pytorch_model.bin", "safetensors")
    assert not out.exists()  # nothing written by a failed conversion
    os.rename(src / "pytorch_model.bin", src / "model.safetensors")

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _expect_error(capsys, src, out, "already exists and is not empty")
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".convert-")] == []


def test_restoring_into_another_model_is_refused(tmp_path):
    import dataclasses

    hf_reference.make_checkpoint("t5_1_0", str(tmp_path / "hf"))
    assert cli.main(["convert-hf", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    config, _ = _load_converted(str(tmp_path / "out"))
    other = dataclasses.replace(config, d_ff=128)
    abstract = nn.unbox(models.abstract_variables(other)["params"])
    with pytest.raises(checkpoints.CheckpointError, match="d_ff: checkpoint 64 vs config 128"):
        checkpoints.restore_params(str(tmp_path / "out"), other, abstract)


@pytest.mark.parametrize("gated", [False, True])
def test_the_name_map_covers_every_parameter_and_its_layouts_invert(gated):
    """hf_names: one entry per parameter but the untied lm_head, each at the parameter's shape, and
    to_hf/from_hf inverse; layouts checked on a hand-built kernel."""
    cfg = T5Config(
        vocab_size=40,
        d_model=8,
        d_kv=3,
        d_ff=12,
        num_heads=2,
        num_layers=2,
        num_decoder_layers=3,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=False,
    )
    params = traverse_util.flatten_dict(nn.unbox(models.abstract_variables(cfg)["params"]))
    names = hf_names.tensor_names(cfg)
    assert len({n.hf for n in names}) == len(names)
    assert {n.path: n.shape for n in names} == {
        p: tuple(v.shape) for p, v in params.items() if p != ("decoder", "logits_dense")
    }
    rng = np.random.default_rng(0)
    for name in names:
        value = rng.normal(size=name.shape)
        theirs = hf_names.to_hf(name, value)
        assert theirs.shape == hf_names.hf_shape(name)
        np.testing.assert_array_equal(hf_names.from_hf(name, theirs), value)
    query = next(n for n in names if n.path == ("encoder", "layers_0", "attention", "query"))
    kernel = np.arange(8 * 2 * 3).reshape(8, 2, 3)  # [embed, heads, kv]
    # torch's q.weight row h * d_kv + k is head h's kv unit k; its column is the embedding unit.
    assert hf_names.to_hf(query, kernel)[1 * 3 + 2, 5] == kernel[5, 1, 2]
    out = next(n for n in names if n.path == ("decoder", "layers_2", "encoder_decoder_attention", "out"))
    kernel = np.arange(2 * 3 * 8).reshape(2, 3, 8)  # [heads, kv, embed]
    assert hf_names.to_hf(out, kernel)[6, 1 * 3 + 0] == kernel[1, 0, 6]
