"""Decoding: greedy equals the reference's greedy; beam search is consistent with scoring."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import linen as nn

from helpers import hf_reference
from t5pod import checkpoints, cli, decoding, ginconf, models, network


@pytest.fixture(scope="module", params=sorted(hf_reference.CONFIGS))
def converted(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    hf_model = hf_reference.make_checkpoint(request.param, str(base / "hf"), seed=3)
    assert cli.main(["convert-hf", str(base / "hf"), str(base / "out")]) == 0
    ginconf.parse([str(base / "out" / "model.gin")])
    config = ginconf.model_config()
    params = checkpoints.restore_params(
        str(base / "out"), config, nn.unbox(models.abstract_variables(config)["params"])
    )
    return hf_model, config, params


def _inputs(vocab_size):
    inputs, _, _ = hf_reference.batch(vocab_size, seed=5)
    return inputs


def test_greedy_equals_reference_greedy(converted):
    import torch

    hf_model, config, params = converted
    inputs = _inputs(config.vocab_size)
    model = network.Transformer(config)
    tokens, _ = jax.jit(lambda p, x: decoding.sample_decode(model, p, x, 20))(params, inputs)
    with torch.no_grad():
        reference = hf_model.generate(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
            max_new_tokens=20,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
            use_cache=False,
        ).numpy()  # its cache assumes as many decoder as encoder layers
    for row in range(inputs.shape[0]):
        assert decoding.strip_after_eos(tokens[row]) == decoding.strip_after_eos(reference[row, 1:])
    assert any(len(decoding.strip_after_eos(t)) > 3 for t in tokens)


def test_scores_equal_reference_log_likelihoods(converted):
    import torch

    hf_model, config, params = converted
    inputs, decoder_inputs, lengths = hf_reference.batch(config.vocab_size, seed=6)
    targets = np.zeros_like(decoder_inputs)
    targets[:, :-1] = decoder_inputs[:, 1:]
    for row, n in enumerate(lengths):
        targets[row, n - 1] = 1  # EOS ends each target
        targets[row, n:] = 0
    batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets}
    got = np.asarray(decoding.score(network.Transformer(config), params, batch))
    with torch.no_grad():
        logits = hf_model(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        ).logits
        log_probs = torch.log_softmax(logits, -1).numpy()
    want = [sum(log_probs[r, t, targets[r, t]] for t in range(lengths[r])) for r in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_beam_of_one_is_greedy(converted):
    _, config, params = converted
    inputs = _inputs(config.vocab_size)
    model = network.Transformer(config)
    greedy, _ = decoding.sample_decode(model, params, inputs, 12)
    beams, _ = decoding.beam_search(model, params, inputs, 12, beam_size=1, alpha=0.0)
    for row in range(inputs.shape[0]):
        assert decoding.strip_after_eos(beams[row, 0]) == decoding.strip_after_eos(greedy[row])


@pytest.mark.parametrize("scan", [False, True])
def test_beam_scores_are_sorted_penalised_log_likelihoods(converted, scan):
    _, config, params = converted
    if scan:
        config, params = dataclasses.replace(config, scan_layers=True), network.stack_layers(params)
    inputs = _inputs(config.vocab_size)
    model = network.Transformer(config)
    beams, scores = jax.jit(lambda p, x: decoding.beam_search(model, p, x, 10, beam_size=4, alpha=0.6))(params, inputs)
    beams, scores = np.asarray(beams), np.asarray(scores)
    score = jax.jit(lambda p, b: decoding.score(model, p, b))
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    checked = 0
    for row in range(inputs.shape[0]):
        for beam in range(4):
            raw = [int(t) for t in beams[row, beam]]
            if 0 in raw[: raw.index(1) if 1 in raw else 10]:
                continue  # random weights may emit id 0, which as a target would read as padding
            checked += 1
            ids = decoding.strip_after_eos(beams[row, beam])
            ended = len(ids) < 10  # strip_after_eos stopped at an EOS
            target = ids + [1] if ended and len(ids) < 10 else ids
            target_row = np.zeros((1, 10), np.int32)
            target_row[0, : len(target)] = target
            batch = {
                "encoder_input_tokens": inputs[row : row + 1],
                "decoder_target_tokens": target_row,
                "decoder_input_tokens": np.pad(target_row[:, :-1], ((0, 0), (1, 0))),
            }
            log_likelihood = float(score(params, batch)[0])
            length = len(target) if ended else 10
            expected = log_likelihood / ((5 + length) / 6) ** 0.6  # the T5/GNMT length penalty, alpha 0.6
            assert scores[row, beam] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert checked >= 6
    # The penalty itself, by hand: ((5 + 1) / 6)^0.6 = 1 and ((5 + 7) / 6)^0.6 = 2^0.6.
    assert float(decoding.length_penalty(1, 0.6)) == pytest.approx(1.0)
    assert float(decoding.length_penalty(7, 0.6)) == pytest.approx(1.515716566510398)


def test_prediction_ids_keep_every_generated_id_before_eos():
    # Pad ids (0) the model generated before EOS are part of its output, as in the reference.
    assert decoding.strip_after_eos([5, 0, 7, 1, 0, 0]) == [5, 0, 7]
    assert decoding.strip_after_eos([1, 5]) == [] and decoding.strip_after_eos([4, 4]) == [4, 4]
