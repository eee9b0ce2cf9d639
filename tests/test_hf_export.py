"""export-hf: t5pod checkpoints out to Hugging Face folders that transformers loads."""

import json
import os

import numpy as np
import pytest
from flax import linen as nn
from safetensors.numpy import load_file

from helpers import hf_reference
from t5pod import checkpoints, cli, ginconf, models, network


def _t5pod_logits(checkpoint_dir, gin_file, inputs, decoder_inputs):
    ginconf.parse([gin_file])
    config = ginconf.model_config()
    params = checkpoints.restore_params(checkpoint_dir, config, nn.unbox(models.abstract_variables(config)["params"]))
    return np.asarray(network.Transformer(config).apply({"params": params}, inputs, decoder_inputs))


@pytest.mark.parametrize("kind", sorted(hf_reference.CONFIGS))
def test_convert_then_export_round_trips_and_transformers_loads_it(kind, tmp_path, capsys):
    import transformers

    hf_reference.make_checkpoint(kind, str(tmp_path / "hf"))
    (tmp_path / "hf" / "spiece.model").write_bytes(b"a SentencePiece model, only copied")
    assert cli.main(["convert-hf", str(tmp_path / "hf"), str(tmp_path / "converted")]) == 0
    assert cli.main(["export-hf", str(tmp_path / "converted"), str(tmp_path / "exported")]) == 0
    assert "Exported step 0" in capsys.readouterr().out

    original, exported = (
        load_file(str(tmp_path / "hf" / "model.safetensors")),
        load_file(str(tmp_path / "exported" / "model.safetensors")),
    )
    duplicates = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if hf_reference.CONFIGS[kind]["tie_word_embeddings"]:
        duplicates.add("lm_head.weight")  # the tied output layer is shared.weight
    assert sorted(exported) == sorted(set(original) - duplicates)
    for name, value in exported.items():  # bit for bit
        assert value.dtype == original[name].dtype and np.array_equal(value, original[name]), name
    assert (tmp_path / "exported" / "spiece.model").read_bytes() == b"a SentencePiece model, only copied"

    model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "exported")).eval()
    inputs, decoder_inputs, lengths = hf_reference.batch(hf_reference.CONFIGS[kind]["vocab_size"])
    theirs = hf_reference.reference_logits(model, inputs, decoder_inputs)
    ours = _t5pod_logits(str(tmp_path / "converted"), str(tmp_path / "converted" / "model.gin"), inputs, decoder_inputs)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(theirs[row, :n], ours[row, :n], atol=1e-4, rtol=0)
    assert np.abs(ours).max() > 0.5

    again = cli.main(["export-hf", str(tmp_path / "converted"), str(tmp_path / "exported")])
    assert again == 2 and "already exists and is not empty" in capsys.readouterr().err


def test_export_a_training_runs_checkpoint_by_step(pretrained_demo_run, tmp_path, capsys):
    import transformers

    step = checkpoints.latest_step(str(pretrained_demo_run))
    one = os.path.join(str(pretrained_demo_run), "checkpoints", str(step))
    assert cli.main(["export-hf", one, str(tmp_path / "exported")]) == 0  # finds the run's config.gin
    assert f"Exported step {step}" in capsys.readouterr().out
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    ginconf.parse([os.path.join(str(pretrained_demo_run), "config.gin")])
    model_config = ginconf.model_config()
    assert (config["vocab_size"], config["d_model"], config["num_layers"]) == (
        2176,
        model_config.d_model,
        model_config.num_layers,
    )
    # The demo run recorded the demo vocabulary: its SentencePiece model is the tokenizer.
    from t5pod.data import demo_corpus

    exported = (tmp_path / "exported" / "spiece.model").read_bytes()
    assert exported == open(demo_corpus.vocabulary_path(), "rb").read()
    import sentencepiece

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "exported" / "spiece.model"))
    assert tokenizer.decode(tokenizer.encode("Return a list.")) == "Return a list."
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "exported")).eval()
    inputs, decoder_inputs, lengths = hf_reference.batch(2176, seed=2)
    theirs = hf_reference.reference_logits(model, inputs, decoder_inputs)
    ours = _t5pod_logits(
        str(pretrained_demo_run), os.path.join(str(pretrained_demo_run), "config.gin"), inputs, decoder_inputs
    )
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(theirs[row, :n], ours[row, :n], atol=1e-4, rtol=0)
