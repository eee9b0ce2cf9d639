"""UL2's mixture of denoisers on real English text: each denoiser's corruption, sentinels, paradigm
token and exact reconstruction, the mixture's proportions, the tasks and the `data` command.

Measurements read Project Gutenberg books when the shared data folder holds them, and the
embedded demo corpus otherwise; every example is tokenized with the demo vocabulary, where each
paradigm token is 5 pieces ('▁[', 'N', 'L', 'U', ']'). The expected numbers are derived in the
comments from random_spans_helper's rule (raw length n: noise = round(n r), spans =
round(noise / μ), capped at the 100 sentinels; the largest n with non-noise + spans + 1 EOS within
the inputs left after the paradigm token).
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import seqio

from conftest import SHARED_DATA
from t5pod import tasks
from t5pod.data import demo_corpus, pipeline, text_sources, ul2
from t5pod.tasks import pretraining

LENGTHS = {"inputs": 512, "targets": 512}  # the paper's lengths
PARADIGMS = ("[NLU]", "[NLG]", "[S2S]")  # R, X, S
PARADIGM_IDS = 5
VOCAB_SIZE = 2100  # the demo vocabulary: 2000 pieces, then 100 sentinels counting down from 2099
FIRST_SENTINEL = VOCAB_SIZE - 1

# (μ, r) -> (raw tokens, noise tokens, noise spans) of a full-length example at 512 inputs: 507 of
# them left after the paradigm token, so non-noise + spans <= 506.
FULL_CHUNKS = {
    (3.0, 0.15): (562, 84, 28),  # 562 * 0.15 = 84.3 -> 84, 84 / 3 = 28: 478 + 28 = 506
    (8.0, 0.15): (582, 87, 11),  # 87.3 -> 87, 87 / 8 = 10.9 -> 11: 495 + 11 = 506
    # 126 spans would need more sentinels than the 100: capped, so 406 + 100 = 506 and the mean span is 4.06.
    (3.0, 0.5): (812, 406, 100),
    (8.0, 0.5): (900, 450, 56),  # 450 / 8 = 56.25 -> 56: 450 + 56 = 506
    (64.0, 0.15): (594, 89, 1),  # 89.1 -> 89, 89 / 64 = 1.4 -> 1: one span of 89 at these lengths
    (64.0, 0.5): (996, 498, 8),  # 498 / 64 = 7.8 -> 8: 498 + 8 = 506, mean span 62.25
}
S_RAW = 507  # min(512 - 5 paradigm ids, 512 targets): a split after 1 .. 506 tokens


@pytest.fixture(scope="module")
def vocabulary():
    vocabulary = demo_corpus.vocabulary()
    assert vocabulary.vocab_size == VOCAB_SIZE
    assert (ul2.NLU, ul2.NLG, ul2.S2S) == PARADIGMS
    assert [len(vocabulary.encode(t)) for t in PARADIGMS] == [PARADIGM_IDS] * 3
    return vocabulary


@pytest.fixture(scope="module")
def english():
    """(files, paragraphs): three Gutenberg books (blank-line paragraphs), else the demo corpus."""
    books = sorted((SHARED_DATA / "pretrain" / "gutenberg").glob("*.txt"))
    if books:
        return [str(p) for p in books[:3]], True
    return [demo_corpus.corpus_path()], False


def _documents(english, vocabulary):
    files, paragraphs = english
    dataset = text_sources.text_dataset(files, paragraphs)
    return dataset.map(lambda x: {"targets": vocabulary.encode_tf(x["text"])})


@pytest.fixture(scope="module")
def stream(english, vocabulary):
    """Every document's tokens, concatenated in order: what the examples must rebuild."""
    return np.concatenate([x["targets"] for x in _documents(english, vocabulary).as_numpy_iterator()])


def _run(english, vocabulary, denoisers, lengths=LENGTHS, n=100, seed=0):
    with seqio.utils.map_seed_manager(seed):
        out = ul2.mixture_of_denoisers(
            _documents(english, vocabulary), lengths, pretraining.output_features(vocabulary), denoisers
        )
    return list(out.take(n).as_numpy_iterator())


def _alone(denoiser):
    return (dataclasses.replace(denoiser, share=1.0),)


def _sentinels(ids) -> list[int]:
    return [int(i) for i in ids if i > FIRST_SENTINEL - 100]


def _rebuild(inputs, targets) -> list[int]:
    """The original tokens: each sentinel of the inputs replaced by what follows it in the targets."""
    spans, current = {}, None
    for token in targets:
        if token > FIRST_SENTINEL - 100:
            current = spans.setdefault(int(token), [])
        else:
            current.append(int(token))
    return [t for token in inputs for t in (spans[int(token)] if token > FIRST_SENTINEL - 100 else [int(token)])]


def test_the_papers_denoisers_paradigm_tokens_and_shares():
    # UL2 §3.1.2: R = {(3, 15%), (8, 15%)}, X = {(3, 50%), (8, 50%), (64, 15%), (64, 50%)}, S: prefix LM.
    table = {(d.paradigm, d.mean_noise_span_length, d.noise_density): d.share for d in ul2.DENOISERS}
    assert table == {
        ("[NLU]", 3.0, 0.15): 0.2,
        ("[NLU]", 8.0, 0.15): 0.2,
        ("[NLG]", 3.0, 0.5): 0.1,
        ("[NLG]", 8.0, 0.5): 0.1,
        ("[NLG]", 64.0, 0.15): 0.1,
        ("[NLG]", 64.0, 0.5): 0.1,
        ("[S2S]", None, None): 0.2,
    }


@pytest.mark.parametrize(
    "denoiser",
    [d for d in ul2.DENOISERS if not d.is_prefix_lm],
    ids=lambda d: f"mu{d.mean_noise_span_length:g}-r{d.noise_density:g}",
)
def test_each_span_denoiser_on_english(denoiser, english, vocabulary, stream):
    examples = _run(english, vocabulary, _alone(denoiser), n=60)
    raw, noise, spans = FULL_CHUNKS[(denoiser.mean_noise_span_length, denoiser.noise_density)]
    paradigm = vocabulary.encode(denoiser.paradigm)
    rebuilt, full, noise_total, raw_total = [], [], 0, 0
    for x in examples:
        inputs, targets = x["inputs"].tolist(), x["targets"].tolist()
        assert inputs[:PARADIGM_IDS] == paradigm and vocabulary.decode(inputs[:PARADIGM_IDS]) == denoiser.paradigm
        body = inputs[PARADIGM_IDS:]
        sentinels = _sentinels(body)
        # One sentinel per noise span in each, counting down from the first, the same in both.
        assert sentinels == list(range(FIRST_SENTINEL, FIRST_SENTINEL - len(sentinels), -1))
        assert _sentinels(targets) == sentinels and targets[0] == FIRST_SENTINEL
        assert body[0] < FIRST_SENTINEL - 99 and body[-1] == sentinels[-1]  # text first, noise last
        original = _rebuild(body, targets)
        rebuilt += original
        example_noise = len(targets) - len(sentinels)
        noise_total, raw_total = noise_total + example_noise, raw_total + len(original)
        if len(original) == raw:
            full.append((example_noise, len(sentinels), len(inputs)))
    assert rebuilt == stream[: len(rebuilt)].tolist()  # inputs and targets give back the text exactly
    assert len(full) >= 40
    # Every full example: exactly the counts derived above, filling the 511 inputs before EOS.
    assert set(full) == {(noise, spans, LENGTHS["inputs"] - 1)}
    assert abs(noise / raw - denoiser.noise_density) < 0.005
    assert abs(noise_total / raw_total - denoiser.noise_density) < 0.01  # the short last chunks too
    mean_span = noise / spans
    if spans == 100:  # (3, 50%): the 100 sentinels allow 100 spans, so the spans grow to 406 / 100
        assert mean_span == pytest.approx(4.06)
    elif spans >= 8:  # enough spans for the mean to be the setting's, within rounding
        assert abs(mean_span - denoiser.mean_noise_span_length) <= denoiser.mean_noise_span_length / (2 * spans)


def test_long_spans_need_long_inputs(english, vocabulary):
    # At 512 inputs (μ=64, r=15%) corrupts 89 tokens as one span; at 2048 inputs, 2043 after the
    # paradigm token: n = 2395 gives noise round(359.25) = 359, spans round(5.6) = 6, 2036 + 6 = 2042.
    (denoiser,) = [d for d in ul2.DENOISERS if (d.mean_noise_span_length, d.noise_density) == (64.0, 0.15)]
    examples = _run(english, vocabulary, _alone(denoiser), {"inputs": 2048, "targets": 2048}, n=20)
    full = [x for x in examples if len(x["inputs"]) == 2047]
    assert len(full) >= 10
    span_lengths = []
    for x in full:
        sentinels = _sentinels(x["inputs"])
        assert len(sentinels) == 6 and len(x["targets"]) - 6 == 359
        span_lengths += [len(s) for s in _split_at_sentinels(x["targets"])]
    assert np.mean(span_lengths) == pytest.approx(359 / 6) and abs(359 / 6 - 64) < 64 / 12
    assert min(span_lengths) < max(span_lengths)  # spans of random lengths, their mean μ


def _split_at_sentinels(targets) -> list[list[int]]:
    spans = []
    for token in targets:
        if token > FIRST_SENTINEL - 100:
            spans.append([])
        else:
            spans[-1].append(token)
    return spans


def test_s_denoiser_on_english(english, vocabulary, stream):
    (denoiser,) = [d for d in ul2.DENOISERS if d.is_prefix_lm]
    examples = _run(english, vocabulary, _alone(denoiser), n=400)
    paradigm = vocabulary.encode(ul2.S2S)
    rebuilt, fractions = [], []
    for x in examples:
        inputs, targets = x["inputs"].tolist(), x["targets"].tolist()
        assert inputs[:PARADIGM_IDS] == paradigm
        assert not _sentinels(inputs) and not _sentinels(targets)
        prefix = inputs[PARADIGM_IDS:]
        assert prefix and targets  # a split after 1 .. n - 1 tokens
        rebuilt += prefix + targets
        if len(prefix) + len(targets) == S_RAW:
            fractions.append(len(targets) / S_RAW)
            assert len(inputs) + 1 <= LENGTHS["inputs"] and len(targets) + 1 <= LENGTHS["targets"]  # with EOS
    assert rebuilt == stream[: len(rebuilt)].tolist()
    # A uniform split point: targets are on average half, with a standard deviation of 1/sqrt(12)
    # of a chunk; the mean of N stays within 4 standard errors.
    assert len(fractions) >= 300
    assert abs(np.mean(fractions) - 0.5) < 4 / math.sqrt(12 * len(fractions))
    assert np.std(fractions) == pytest.approx(1 / math.sqrt(12), abs=0.03)


def test_mixture_proportions(english, vocabulary):
    # Short examples, many of them: the denoiser of each is one draw in the shares.
    examples = _run(english, vocabulary, ul2.DENOISERS, {"inputs": 64, "targets": 64}, n=4000, seed=1)
    counts = np.bincount([int(x["denoiser"]) for x in examples], minlength=len(ul2.DENOISERS))
    for x in examples:
        assert vocabulary.decode(x["inputs"][:PARADIGM_IDS].tolist()) == ul2.DENOISERS[x["denoiser"]].paradigm
    expected = len(examples) * np.array([d.share for d in ul2.DENOISERS])
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 22.46, (counts, expected)  # the 0.1% point of chi-square with 6 degrees of freedom
    paradigms = {p: sum(c for d, c in zip(ul2.DENOISERS, counts) if d.paradigm == p) / len(examples) for p in PARADIGMS}
    # R 40%, X 40%, S 20%: a binomial standard error is at most sqrt(0.4 * 0.6 / 4000) = 0.0077.
    assert paradigms == pytest.approx(dict(zip(PARADIGMS, (0.4, 0.4, 0.2))), abs=4 * 0.0078)


def test_tasks_of_every_source_pack_for_both_architectures():
    tasks.register_all()
    assert {"c4_v220_ul2", "text_ul2", "demo_ul2"} <= set(seqio.TaskRegistry.names())
    lengths = {"inputs": 128, "targets": 128}
    for decoder_only in (False, True):
        converter = pipeline.feature_converter(pack=True, decoder_only=decoder_only)
        dataset = pipeline.get_dataset(
            "demo_ul2", lengths, shuffle=False, shard_index=0, num_shards=1, converter=converter
        )
        rows = list(dataset.take(8).as_numpy_iterator())
        assert "denoiser" not in rows[0]
        if decoder_only:  # inputs then targets in one row of 256, the loss on the targets only
            assert rows[0]["decoder_target_tokens"].shape == (256,)
            vocabulary = demo_corpus.vocabulary()
            for r in rows:  # each row starts with an example's paradigm token, attended fully, no loss
                assert vocabulary.decode(r["decoder_target_tokens"][:PARADIGM_IDS].tolist()) in PARADIGMS
                assert r["decoder_causal_attention"][:PARADIGM_IDS].all()
                assert not r["decoder_loss_weights"][:PARADIGM_IDS].any()
                # Only the last input position of each example (it predicts the first target) has both.
                overlap = (r["decoder_loss_weights"] * r["decoder_causal_attention"]).sum()
                assert overlap == r["decoder_segment_ids"].max()
        else:
            assert np.mean([np.count_nonzero(r["encoder_input_tokens"]) / 128 for r in rows]) > 0.9


def test_text_ul2_reads_the_books(shared_data):
    tasks.register_all(
        vocabulary_path=demo_corpus.vocabulary_path(),
        text_file_pattern=str(shared_data / "pretrain" / "gutenberg" / "pg1342.txt"),
        text_paragraphs=True,
    )
    task = seqio.get_mixture_or_task("text_ul2")
    examples = list(task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0).take(40).as_numpy_iterator())
    vocabulary = demo_corpus.vocabulary()
    starts = {vocabulary.decode(x["inputs"][:PARADIGM_IDS].tolist()) for x in examples}
    assert starts == set(PARADIGMS)
    assert all(x["inputs"][-1] == 1 and x["targets"][-1] == 1 for x in examples)
    assert max(len(x["inputs"]) for x in examples) == 512  # R and X inputs fill the row: 511 tokens, EOS


def test_targets_too_short_for_a_denoiser_is_an_error(vocabulary, english):
    # (3, 50%), (8, 50%) and (64, 50%): noise + spans = 406 + 100, 450 + 56, 498 + 8 = 506, and EOS.
    with pytest.raises(ValueError, match=r"TASK_FEATURE_LENGTHS targets to at least 507"):
        _run(english, vocabulary, ul2.DENOISERS, {"inputs": 512, "targets": 114}, n=1)


@pytest.mark.parametrize(
    "settings,named",
    [
        ((ul2.NLU, 0.0, 0.15, 0.5), "mean_noise_span_length"),
        ((ul2.NLU, -3.0, 0.15, 0.5), "mean_noise_span_length"),
        ((ul2.NLG, 3.0, 0.0, 0.5), "noise_density"),
        ((ul2.NLG, 3.0, 1.0, 0.5), "noise_density"),
        ((ul2.NLG, 3.0, 0.5, 0.0), "share"),
        ((ul2.S2S, None, 0.5, 0.5), "or neither"),
    ],
)
def test_settings_out_of_range_are_errors(settings, named):
    with pytest.raises(ValueError, match=named):
        ul2.Denoiser(*settings)


def test_shares_must_sum_to_one(vocabulary, english):
    halves = (ul2.Denoiser(ul2.NLU, 3.0, 0.15, 0.5), ul2.Denoiser(ul2.S2S, None, None, 0.4))
    with pytest.raises(ValueError, match="shares must sum to 1"):
        _run(english, vocabulary, halves, n=1)


@pytest.mark.e2e
def test_data_command_shows_every_denoiser():
    from helpers import run_cli

    done = run_cli(
        "data", "--task=demo_ul2", "--num_examples=40", "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 128}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 40
    assert {row["inputs"]["text"][:5] for row in rows} == set(PARADIGMS)
    assert {row["denoiser"] for row in rows} == set(range(7))


@pytest.mark.slow
def test_a_saved_data_position_resumes_exactly(tmp_path):
    tasks.register_all()

    def fresh_iterator():
        dataset = pipeline.get_dataset("demo_ul2", {"inputs": 64, "targets": 64}, seed=3, shard_index=0, num_shards=1)
        return pipeline.CheckpointableIterator(pipeline.batched(dataset, batch_size=4))

    uninterrupted = fresh_iterator()
    batches = [next(uninterrupted) for _ in range(4)]
    first = fresh_iterator()
    next(first), next(first)
    first.save(str(tmp_path / "position"))
    resumed = fresh_iterator()
    resumed.restore(str(tmp_path / "position"))
    for expected in batches[2:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
