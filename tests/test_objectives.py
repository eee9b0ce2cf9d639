"""Span corruption and the other objectives against the reference's numbers (spec section 1)."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5pod.data import objectives


class FakeVocabulary:
    def __init__(self, vocab_size, extra_ids=100):
        self.vocab_size, self.extra_ids = vocab_size, extra_ids


def _features(vocab_size=32100, extra_ids=100):
    return {
        "inputs": seqio.Feature(FakeVocabulary(vocab_size, extra_ids)),
        "targets": seqio.Feature(FakeVocabulary(vocab_size, extra_ids)),
    }


@pytest.mark.parametrize(
    "args,expected",
    [
        ((128, 0.15, 3.0), (141, 29)),
        ((256, 0.15, 3.0), (284, 58)),
        ((512, 0.15, 3.0), (568, 114)),
        ((1024, 0.15, 3.0), (1137, 229)),
        ((64, 0.2, 2.0), (70, 22)),
        ((64, 0.2, 1.0), (63, 27)),
        ((512, 0.5, 3.0), (766, 512)),
    ],
)
def test_random_spans_helper(args, expected):
    assert objectives.random_spans_helper(*args) == expected


def _mask(length, seed=0, density=0.15, mean=3.0):
    seeds = tf.constant([[seed, 1], [seed, 2]], tf.int32)
    return objectives.random_spans_noise_mask(length, density, seeds, mean).numpy()


@pytest.mark.parametrize("length,noise", [(190, 29), (350, 53), (390, 59), (10, 2), (30, 4)])
def test_noise_count_rounds_in_float32(length, noise):
    # float64 rounding would give 28, 52 and 58 at 190, 350 and 390.
    assert _mask(length).sum() == noise


@pytest.mark.parametrize(
    "length,noise,spans",
    [(2, 1, 1), (9, 1, 1), (10, 2, 1), (16, 2, 1), (17, 3, 1), (23, 3, 1), (24, 4, 1), (30, 4, 1), (31, 5, 2)],
)
def test_short_masks(length, noise, spans):
    for seed in range(3):
        mask = _mask(length, seed)
        assert mask.sum() == noise and len(objectives.noise_span_lengths(mask)) == spans
        if spans == 1:
            assert mask[-noise:].all()  # one span, at the end


def test_single_token_is_never_noise():
    assert _mask(1).tolist() == [False]


def test_sentinels_by_hand():
    tokens = tf.constant([10, 11, 12, 13, 14, 15])
    mask = tf.constant([True, True, False, False, True, False])
    assert objectives.replace_spans_with_sentinels(tokens, mask, 1000).numpy().tolist() == [999, 12, 13, 998, 15]
    assert objectives.replace_spans_with_sentinels(tokens, ~mask, 1000).numpy().tolist() == [10, 11, 999, 14, 998]


def _corrupt(documents, inputs_length=512, targets_length=114, vocab_size=32100, seed=0):
    dataset = tf.data.Dataset.from_generator(
        lambda: ({"targets": np.asarray(d, np.int32)} for d in documents),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    with seqio.utils.map_seed_manager(seed):
        out = objectives.span_corruption(
            dataset, {"inputs": inputs_length, "targets": targets_length}, _features(vocab_size)
        )
    return [{k: v.tolist() for k, v in x.items()} for x in out.as_numpy_iterator()]


def _rebuild(inputs, targets, vocab_size=32100):
    """Interleave inputs and targets by sentinel: the original tokens."""

    def spans(sequence):
        out, current = {}, None
        for token in sequence:
            if token >= vocab_size - 100:
                current = vocab_size - 1 - token
                out[current] = []
            elif current is not None:
                out[current].append(token)
        return out

    from_targets = spans(targets)
    rebuilt = []
    for token in inputs:
        rebuilt += from_targets[vocab_size - 1 - token] if token >= vocab_size - 100 else [token]
    return rebuilt


def test_span_corruption_statistics_on_full_chunks():
    rng = np.random.default_rng(0)
    documents = [rng.integers(3, 30000, size=n).tolist() for n in rng.integers(200, 3000, size=60)]
    examples = _corrupt(documents)
    stream = [t for d in documents for t in d]
    full = [x for x in examples if len(x["inputs"]) == 511]  # before EOS is appended
    assert len(full) >= 100
    span_lengths = []
    for x in full:
        inputs, targets = x["inputs"], x["targets"]
        sentinels = [t for t in inputs if t >= 32000]
        assert sentinels == list(range(32099, 32099 - 28, -1))  # 28 spans, in order
        assert len(targets) == 113 and targets[0] == 32099  # 85 noise + 28 sentinels
        assert inputs[0] < 32000  # position 0 is never noise
        assert targets[-1] < 32000 and inputs[-1] >= 32000  # the last position is always noise
        original = _rebuild(inputs, targets)
        assert len(original) == 568
        span_lengths += [len(s) for s in _split_spans(targets)]
    # The chunks are consecutive pieces of the concatenated documents (documents arrive in order
    # and fewer than 128 of them form one concatenation group).
    rebuilt = [t for x in examples for t in _rebuild(x["inputs"], x["targets"])]
    assert rebuilt == stream
    assert np.mean(span_lengths) == pytest.approx(85 / 28)
    assert np.mean(np.asarray(span_lengths) == 1) == pytest.approx(27 / 84, abs=0.03)
    assert max(span_lengths) <= 58


def _split_spans(targets):
    spans, current = [], None
    for t in targets:
        if t >= 32000:
            current = []
            spans.append(current)
        else:
            current.append(t)
    return spans


def test_short_final_chunk_lengths():
    examples = _corrupt([list(range(3, 3 + 568 + 100))])
    last = examples[-1]
    n, noise, spans = 100, 15, 5  # round(100*0.15)=15, round(15/3)=5
    assert len(last["inputs"]) == n - noise + spans and len(last["targets"]) == noise + spans


def test_ten_token_example_from_the_spec():
    out = _corrupt([list(range(10, 20))])
    assert out == [{"inputs": list(range(10, 18)) + [32099], "targets": [32099, 18, 19]}]


def test_deterministic_for_a_seed_and_different_across_seeds():
    documents = [list(range(3, 2000))]
    assert _corrupt(documents, seed=5) == _corrupt(documents, seed=5)
    assert _corrupt(documents, seed=5) != _corrupt(documents, seed=6)


def test_target_length_too_short_is_a_clear_error():
    with pytest.raises(ValueError, match="Target length 100 is too short.*needs 114"):
        _corrupt([[5, 6, 7]], targets_length=100)


def test_vocabulary_without_extra_ids_is_a_clear_error():
    dataset = tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6, 7])})
    with pytest.raises(ValueError, match="no extra ids"):
        objectives.span_corruption(dataset, {"inputs": 512, "targets": 114}, _features(extra_ids=0))


def test_prefix_lm_and_iid_denoising():
    dataset = tf.data.Dataset.from_tensors({"targets": tf.range(3, 103)})
    with seqio.utils.map_seed_manager(0):
        prefix = list(objectives.prefix_lm(dataset, {"inputs": 64, "targets": 64}, _features()).as_numpy_iterator())
    for x in prefix:
        assert x["inputs"].tolist() + x["targets"].tolist() == list(range(x["inputs"][0], x["targets"][-1] + 1))
        assert len(x["inputs"]) >= 1 and len(x["targets"]) >= 1
    with seqio.utils.map_seed_manager(0):
        iid = list(objectives.iid_denoising(dataset, {"inputs": 64, "targets": 64}, _features()).as_numpy_iterator())
    for x in iid:
        assert len(x["inputs"]) <= 63
        assert len(_rebuild(x["inputs"].tolist(), x["targets"].tolist())) == 63 or x is iid[-1]


# Paper §3.3 (Table 3): every objective on one fixed sequence and seed. The i.i.d. objectives
# draw the same noise mask for the same seed, so their outputs line up with each other.
FIXED_TOKENS = list(range(10, 30))
FIXED_OUTPUTS = {
    "span_corruption": (
        [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 99, 25, 26, 98],
        [99, 23, 24, 98, 27, 28, 29],
    ),
    "iid_denoising": (
        [10, 11, 12, 13, 14, 15, 99, 17, 18, 98, 20, 21, 97, 23, 24, 25, 96, 27, 28, 95],
        [99, 16, 98, 19, 97, 22, 96, 26, 95, 29],
    ),
    "drop_corrupted_tokens": ([10, 11, 12, 13, 14, 15, 17, 18, 20, 21, 23, 24, 25, 27, 28], [16, 19, 22, 26, 29]),
    "bert_style": ([10, 11, 12, 13, 14, 15, 99, 17, 18, 99, 20, 21, 99, 23, 24, 25, 99, 27, 28, 99], FIXED_TOKENS),
    "mass_style": ([10, 11, 12, 13, 14, 15, 99, 17, 18, 99, 20, 21, 99, 23, 24, 25, 99, 27, 28, 99], FIXED_TOKENS),
    "deshuffling": ([23, 29, 24, 22, 12, 15, 26, 21, 28, 11, 20, 25, 17, 14, 19, 18, 16, 13, 27, 10], FIXED_TOKENS),
    "prefix_lm": (list(range(10, 28)), [28, 29]),
}


def _run_objective(name, tokens, seed=42, lengths=None, vocab_size=100, **settings):
    dataset = tf.data.Dataset.from_tensors({"targets": tf.constant(tokens, tf.int32)})
    function = objectives.objective(name, **settings)
    with seqio.utils.map_seed_manager(seed):
        out = list(
            function(
                dataset, lengths or {"inputs": 21, "targets": 21}, _features(vocab_size=vocab_size, extra_ids=10)
            ).as_numpy_iterator()
        )
    return [(x["inputs"].tolist(), x["targets"].tolist()) for x in out]


@pytest.mark.parametrize("name", sorted(FIXED_OUTPUTS))
def test_each_objective_on_a_fixed_sequence(name):
    assert _run_objective(name, FIXED_TOKENS, noise_density=0.25, mean_noise_span_length=2.0) == [FIXED_OUTPUTS[name]]
    assert set(FIXED_OUTPUTS) == set(objectives.OBJECTIVES)


def test_fixed_outputs_agree_with_each_other():
    (iid_in, iid_tg), (drop_in, drop_tg) = FIXED_OUTPUTS["iid_denoising"], FIXED_OUTPUTS["drop_corrupted_tokens"]
    noise = sorted(drop_tg)
    assert sorted(drop_in + drop_tg) == FIXED_TOKENS
    assert [t for t in iid_tg if t < 90] == noise and [t for t in iid_in if t < 90] == drop_in
    mass_in = FIXED_OUTPUTS["mass_style"][0]
    assert [FIXED_TOKENS[i] for i, t in enumerate(mass_in) if t == 99] == noise  # the mask token: first sentinel
    shuffled = FIXED_OUTPUTS["deshuffling"][0]
    assert sorted(shuffled) == FIXED_TOKENS and shuffled != FIXED_TOKENS


def test_bert_style_replaces_90_10_as_the_paper_on_real_text():
    """Paper §3.3.1: 15% of tokens corrupted; of those 90% become the mask token and 10% a random
    token (none kept, unlike BERT's 80/10/10). Noise positions come from mass_style, which draws
    the same mask for the same seed and writes the mask token at every noise position."""
    from t5pod.data import demo_corpus

    vocabulary = demo_corpus.vocabulary()
    with open(demo_corpus.corpus_path(), encoding="utf-8") as f:
        text = f.read(400_000)
    tokens = [t for t in vocabulary.encode(text) if t > 2][:20000]
    assert len(tokens) == 20000 and len(set(tokens)) > 1000  # real text: many repeated words
    size, mask = vocabulary.vocab_size, vocabulary.vocab_size - 1
    lengths = {"inputs": 20001, "targets": 20001}
    ((inputs, targets),) = _run_objective("bert_style", tokens, lengths=lengths, vocab_size=size)
    ((mass_inputs, _),) = _run_objective("mass_style", tokens, lengths=lengths, vocab_size=size)
    assert targets == tokens
    noise = np.array(mass_inputs) == mask
    inputs, tokens = np.array(inputs), np.array(tokens)
    assert noise.mean() == pytest.approx(0.15, abs=0.01)
    masked = (inputs[noise] == mask).mean()
    random = inputs[noise][inputs[noise] != mask]
    assert masked == pytest.approx(0.9, abs=0.02)  # 3,000 noise tokens: 2% is about 4 standard errors
    assert ((3 <= random) & (random < mask)).all()
    # A random token equals the original only by chance (about 1 in the vocabulary): BERT's 10% kept is gone.
    assert (inputs[noise] == tokens[noise]).mean() < 0.01
    assert (inputs[~noise] == tokens[~noise]).all()


@pytest.mark.parametrize("density,span", [(0.1, 3.0), (0.25, 3.0), (0.5, 3.0), (0.15, 2.0), (0.15, 5.0), (0.15, 10.0)])
def test_span_corruption_rates_and_span_lengths(density, span):
    tokens = list(range(3, 3 + 5000))
    lengths = {"inputs": 256, "targets": 256}
    examples = _run_objective(
        "span_corruption", tokens, lengths=lengths, vocab_size=32100, noise_density=density, mean_noise_span_length=span
    )
    raw, _ = objectives.random_spans_helper(256, density, span)
    full = examples[:-1]  # the last chunk is shorter
    for inputs, targets in full:
        sentinels = [t for t in targets if t >= 32000]
        noise = len(targets) - len(sentinels)
        assert noise == round(raw * density) and len(sentinels) == round(noise / span)
        assert len(inputs) - len(sentinels) + noise == raw


def test_reconstruction_objectives_need_targets_as_long_as_inputs():
    dataset = tf.data.Dataset.from_tensors({"targets": tf.range(3, 50)})
    with pytest.raises(ValueError, match="bert_style objective's target is the original text"):
        objectives.bert_style(dataset, {"inputs": 64, "targets": 16}, _features())


# By hand: each objective applied to tokens 10..21 with a noise mask chosen here (tokens 12, 13
# and 17 are noise; the prefix LM's mask is the suffix from token 18). Sentinels count down from
# vocab_size - 1 = 99; each run of noise (inputs) or of kept tokens (targets) becomes one.
HAND_TOKENS = list(range(10, 22))
HAND_NOISE = [i in (2, 3, 7) for i in range(12)]
HAND_PREFIX_NOISE = [i >= 8 for i in range(12)]
HAND_OUTPUTS = {
    "span_corruption": ([10, 11, 99, 14, 15, 16, 98, 18, 19, 20, 21], [99, 12, 13, 98, 17, 97]),
    "iid_denoising": ([10, 11, 99, 14, 15, 16, 98, 18, 19, 20, 21], [99, 12, 13, 98, 17, 97]),
    "drop_corrupted_tokens": ([10, 11, 14, 15, 16, 18, 19, 20, 21], [12, 13, 17]),
    "mass_style": ([10, 11, 99, 99, 14, 15, 16, 99, 18, 19, 20, 21], HAND_TOKENS),
    "prefix_lm": (list(range(10, 18)), [18, 19, 20, 21]),
}


@pytest.mark.parametrize("name", sorted(objectives.OBJECTIVES))
def test_each_objective_on_a_hand_chosen_mask(name, monkeypatch):
    def fixed(mask):
        return lambda length, *args, **kwargs: tf.constant(mask)[:length]

    for mask_fn in ("random_spans_noise_mask", "iid_noise_mask"):
        monkeypatch.setattr(objectives, mask_fn, fixed(HAND_NOISE))
    monkeypatch.setattr(objectives, "random_prefix_noise_mask", fixed(HAND_PREFIX_NOISE))
    ((inputs, targets),) = _run_objective(name, HAND_TOKENS, noise_density=0.25, mean_noise_span_length=2.0)
    if name in HAND_OUTPUTS:
        assert (inputs, targets) == HAND_OUTPUTS[name]
        return
    # The random replacements: targets are the tokens; only noise positions may change.
    assert targets == HAND_TOKENS and len(inputs) == len(HAND_TOKENS)
    assert [t for t, noise in zip(inputs, HAND_NOISE) if not noise] == [
        t for t, noise in zip(HAND_TOKENS, HAND_NOISE) if not noise
    ]
    noisy = [t for t, noise in zip(inputs, HAND_NOISE) if noise]
    if name == "deshuffling":  # the noise tokens permuted among their own positions
        assert sorted(noisy) == [12, 13, 17]
    else:  # bert_style: each noise token is the mask token 99 or a random id in [3, 100)
        assert name == "bert_style" and all(3 <= t < 100 for t in noisy)
