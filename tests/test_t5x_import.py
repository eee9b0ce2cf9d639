"""convert-t5x: a train state written by T5X itself (msgpack, T5X's own test data) into t5pod."""

import os
import stat

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import linen as nn
from flax import serialization

from helpers import hf_reference
from t5pod import checkpoints, cli, ginconf, models, network, optimizer, t5x_import
from t5pod.configs import T5Config

# T5X's test model: T5 1.1 (gated GELU, separate output layer), 2 + 2 layers, 4 heads of 3.
TINY_GIN = """
t5pod.T5Config.vocab_size = 32128
t5pod.T5Config.d_model = 8
t5pod.T5Config.d_kv = 3
t5pod.T5Config.d_ff = 16
t5pod.T5Config.num_heads = 4
t5pod.T5Config.num_layers = 2
t5pod.T5Config.num_decoder_layers = 2
t5pod.T5Config.feed_forward_proj = 'gated-gelu'
t5pod.T5Config.tie_word_embeddings = False
"""


@pytest.fixture
def t5x_file(shared_data):
    return str(shared_data / "t5x" / "test_t5_tiny.checkpoint_0")


def _t5x_tree(path) -> dict:
    with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())["optimizer"]


def _flat(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flat(value, prefix + (key,))
    else:
        yield prefix, np.asarray(tree)


def _convert(tmp_path, src, *flags):
    (tmp_path / "tiny.gin").write_text(TINY_GIN)
    out = tmp_path / "converted"
    status = cli.main(["convert-t5x", src, str(out), f"--gin_file={tmp_path / 'tiny.gin'}", *flags])
    return status, out


def _restored(out):
    ginconf.parse([str(out / "model.gin")])
    config = ginconf.model_config()
    abstract = nn.unbox(models.abstract_variables(config)["params"])
    state = jax.eval_shape(optimizer.adafactor(optimizer.learning_rate_schedule("rsqrt", 1.0, 1)).init, abstract)
    with ocp.CheckpointManager(str(out)) as manager:
        restored = manager.restore(
            0,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract), opt_state=ocp.args.StandardRestore(state)
            ),
        )
    return config, restored["params"], restored["opt_state"]


def _ours(tree, t5x_path):
    """t5pod's array for a T5X path: the same path without T5X's `kernel` leaf."""
    for key in t5x_path:
        if key != "kernel":
            tree = tree[key]
    return np.asarray(tree)


def test_every_parameter_and_adafactor_array_equals_the_t5x_files_bit_for_bit(tmp_path, t5x_file, capsys):
    status, out = _convert(tmp_path, t5x_file)
    assert status == 0, capsys.readouterr().err
    assert "step 0, 52 parameters and the Adafactor state" in capsys.readouterr().out
    t5x = _t5x_tree(t5x_file)
    _, params, opt_state = _restored(out)
    factored = opt_state[0]
    count = 0
    for path, theirs in _flat(t5x["target"]):
        ours = _ours(params, path)
        assert ours.dtype == theirs.dtype and np.array_equal(ours.reshape(theirs.shape), theirs), path
        count += 1
    assert count == 52
    for path, theirs in _flat(t5x["state"]["param_states"]):
        *param_path, moment = path
        if moment == "m":  # no momentum in this state, as in t5pod's Adafactor
            assert theirs.shape == (1,) and not theirs.any()
            continue
        ours = _ours(getattr(factored, moment), param_path)
        assert np.array_equal(ours.reshape(theirs.shape), theirs), path
    assert int(factored.count) == int(t5x["state"]["step"]) == int(opt_state[2].count)


@pytest.mark.slow
def test_the_converted_model_exported_gives_transformers_the_same_logits(tmp_path, t5x_file):
    import transformers

    assert _convert(tmp_path, t5x_file)[0] == 0
    assert cli.main(["export-hf", str(tmp_path / "converted"), str(tmp_path / "hf")]) == 0
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    inputs, decoder_inputs, lengths = hf_reference.batch(32128)
    theirs = hf_reference.reference_logits(model, inputs, decoder_inputs)
    config, params, _ = _restored(tmp_path / "converted")
    ours = np.asarray(network.Transformer(config).apply({"params": params}, inputs, decoder_inputs))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(theirs[row, :n], ours[row, :n], atol=1e-5, rtol=1e-5)
    assert np.abs(ours).max() > 0  # random weights, but not all zero
    # Shared storage: the folders and files take the umask's modes, not a temporary folder's 0700.
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "converted", tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~umask, (path, oct(mode))


def test_a_model_that_does_not_fit_is_one_line_and_writes_nothing(tmp_path, t5x_file, capsys):
    (tmp_path / "tiny.gin").write_text(
        TINY_GIN.replace("num_heads = 4", "num_heads = 2").replace("d_kv = 3", "d_kv = 6")
    )
    status = cli.main(["convert-t5x", t5x_file, str(tmp_path / "out"), f"--gin_file={tmp_path / 'tiny.gin'}"])
    err = capsys.readouterr().err
    # heads x kv is 12 either way; the relative position bias [heads, buckets] tells them apart.
    assert status == 2 and "relpos_bias/rel_embedding is [4, 32] in the checkpoint, [2, 32] in the model" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert cli.main(["convert-t5x", t5x_file, str(tmp_path / "out")]) == 2
    assert "needs the model's gin file" in capsys.readouterr().err


def test_arrays_t5x_wrote_with_tensorstore_beside_the_file_are_read(tmp_path, t5x_file):
    """Large arrays are zarr folders beside `checkpoint`, named relatively in the msgpack tree."""
    import tensorstore as ts

    tree = _t5x_tree(t5x_file)
    embedding = tree["target"]["token_embedder"]["embedding"]
    folder = tmp_path / "checkpoint_0"
    folder.mkdir()
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": "target.token_embedder.embedding"},
        "metadata": {"shape": list(embedding.shape), "dtype": "<f4", "chunks": [4096, 8]},
    }
    written = dict(spec, kvstore={"driver": "file", "path": str(folder / "target.token_embedder.embedding")})
    ts.open(written, create=True, open=True).result().write(embedding).result()
    tree["target"]["token_embedder"]["embedding"] = spec
    (folder / "checkpoint").write_bytes(serialization.msgpack_serialize({"version": 3, "optimizer": tree}))
    read = t5x_import.read_checkpoint(str(folder))
    assert np.array_equal(read["target"]["token_embedder"]["embedding"], embedding)


def test_a_factored_second_moment_is_rebuilt_as_the_estimate_adafactor_uses():
    # For a rank-one second moment the factored estimate is exact: v = a b^T, v_row = a mean(b),
    # v_col = b mean(a), and v_row v_col / mean(v_row) = a b^T.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 1, 256), rng.uniform(0.1, 1, 384)
    v = np.outer(a, b)
    moments = {"v_row": v.mean(axis=1), "v_col": v.mean(axis=0)}
    np.testing.assert_allclose(t5x_import._factored_estimate(moments, v.shape), v, rtol=1e-12)


def test_momentum_in_the_t5x_state_is_refused():
    config = T5Config(vocab_size=16, d_model=4, d_kv=2, d_ff=8, num_heads=2, num_layers=1, dropout_rate=0.0)
    params = nn.unbox(models.build(config).init(jax.random.PRNGKey(0), **models.dummy_features(config))["params"])
    target = jax.tree_util.tree_map(np.asarray, params)
    states = jax.tree_util.tree_map(
        lambda p: {"m": np.ones_like(p), "v": np.zeros_like(p), "v_row": np.zeros(1), "v_col": np.zeros(1)}, target
    )
    with pytest.raises(t5x_import.ConversionError, match="has momentum.*--no_optimizer_state"):
        t5x_import.convert_optimizer_state({"step": 3, "param_states": states}, params, target)


def test_checkpoints_of_converted_runs_are_read_as_initial_weights(tmp_path, t5x_file):
    assert _convert(tmp_path, t5x_file)[0] == 0
    ginconf.parse([str(tmp_path / "converted" / "model.gin")])
    config = ginconf.model_config()
    abstract = nn.unbox(models.abstract_variables(config)["params"])
    params = checkpoints.restore_params(str(tmp_path / "converted"), config, abstract)
    t5x = _t5x_tree(t5x_file)["target"]
    assert np.array_equal(params["decoder"]["logits_dense"], t5x["decoder"]["logits_dense"]["kernel"])
