"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms") as one
seqio preprocessor, a tf.data graph like the objectives of objectives.py.

Span corruption's pipeline (random chunk -> concatenate -> split -> corrupt) with one step more:
each chunk of the concatenated stream first draws its denoiser, a stateless random choice in the
mixture's shares, and is cut to that denoiser's raw length. R- and X-denoisers are span corruption
with their mean span length and corruption rate, the S-denoiser is prefix language modelling;
each example's inputs start with its denoiser's paradigm token. The `denoiser` feature (an index
into the table) says which one made the example; the feature converters drop it.
"""

import dataclasses
import functools

import numpy as np
import seqio
import tensorflow as tf

from t5pod.data import objectives

NLU, NLG, S2S = "[NLU]", "[NLG]", "[S2S]"  # the paradigm tokens of R-, X- and S-denoisers


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoiser of the mixture. The S-denoiser has no mean span length or corruption rate:
    its split point is uniform over the chunk (so half of it is target on average)."""

    paradigm: str  # the text prepended to the inputs
    mean_noise_span_length: float | None  # μ; None: the S-denoiser (prefix LM)
    noise_density: float | None  # r, the fraction of the raw tokens corrupted; None for S
    share: float  # the fraction of the mixture's examples

    def __post_init__(self):
        name = f"UL2 denoiser {self.paradigm}"
        if self.is_prefix_lm != (self.noise_density is None):
            raise ValueError(f"{name}: give both mean_noise_span_length and noise_density, or neither (S).")
        if not self.is_prefix_lm and not self.mean_noise_span_length > 0:
            raise ValueError(f"{name}: mean_noise_span_length must be positive, got {self.mean_noise_span_length}.")
        if not self.is_prefix_lm and not 0 < self.noise_density < 1:
            raise ValueError(f"{name}: noise_density must be between 0 and 1, got {self.noise_density}.")
        if not 0 < self.share <= 1:
            raise ValueError(f"{name}: share must be in (0, 1], got {self.share}.")

    def __str__(self) -> str:
        if self.is_prefix_lm:
            return f"{self.paradigm} prefix LM"
        return f"{self.paradigm} μ={self.mean_noise_span_length:g} r={self.noise_density:g}"

    @property
    def is_prefix_lm(self) -> bool:
        return self.mean_noise_span_length is None

    def corruption(self, num_sentinels: int) -> dict:
        """The keyword arguments of objectives.corrupt: span corruption with at most num_sentinels
        spans, or prefix LM (S)."""
        if self.is_prefix_lm:
            return dict(
                noise_density=0.5,
                mean_noise_span_length=1.0,
                noise_mask_fn=objectives.random_prefix_noise_mask,
                inputs_fn=objectives.drop_tokens,
                targets_fn=objectives.drop_tokens,
            )
        return dict(
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
            noise_mask_fn=functools.partial(objectives.random_spans_noise_mask, max_noise_spans=num_sentinels),
            inputs_fn=objectives.replace_spans_with_sentinels,
            targets_fn=objectives.replace_spans_with_sentinels,
        )


# The paper's seven denoisers (§3.1.2). Shares: S 20% (the paper's §4.5), R and X 40% each, split
# evenly within R and within X (as public reproductions of the paper's code mix them); docs/data.md
# gives the sources.
DENOISERS = (
    Denoiser(NLU, 3.0, 0.15, 0.2),
    Denoiser(NLU, 8.0, 0.15, 0.2),
    Denoiser(NLG, 3.0, 0.5, 0.1),
    Denoiser(NLG, 8.0, 0.5, 0.1),
    Denoiser(NLG, 64.0, 0.15, 0.1),
    Denoiser(NLG, 64.0, 0.5, 0.1),
    Denoiser(S2S, None, None, 0.2),
)


def denoiser_lengths(
    denoiser: Denoiser, paradigm_length: int, sequence_length: dict, num_sentinels: int
) -> tuple[int, int]:
    """(raw tokens per example, longest targets incl. EOS) that fill exactly TASK_FEATURE_LENGTHS
    'inputs' after the paradigm token's paradigm_length ids."""
    inputs_length = sequence_length["inputs"] - paradigm_length
    if denoiser.is_prefix_lm:
        # A split after 1 .. n - 1 tokens: inputs at most paradigm + n - 1 + EOS, targets n - 1 + EOS.
        raw = min(inputs_length, sequence_length["targets"])
        return raw, raw
    return objectives.random_spans_helper(
        inputs_length, denoiser.noise_density, denoiser.mean_noise_span_length, max_noise_spans=num_sentinels
    )


def _check_fit(denoisers, paradigms, sequence_length: dict, num_sentinels: int) -> list[int]:
    """The raw length of each denoiser; an error when a denoiser's targets would be cut."""
    raw_lengths, needed = [], []
    for denoiser, ids in zip(denoisers, paradigms):
        if sequence_length["inputs"] - len(ids) < 2:
            raise ValueError(f"Inputs length {sequence_length['inputs']} is too short for UL2's paradigm tokens.")
        raw, targets = denoiser_lengths(denoiser, len(ids), sequence_length, num_sentinels)
        raw_lengths.append(raw)
        needed.append(targets)
    if max(needed) > sequence_length["targets"]:
        worst = denoisers[int(np.argmax(needed))]
        raise ValueError(
            f"Target length {sequence_length['targets']} is too short for UL2's denoiser {worst} with "
            f"{sequence_length['inputs']} inputs: it needs {max(needed)}. Set TASK_FEATURE_LENGTHS targets to at "
            f"least {max(needed)}, e.g. --gin.TASK_FEATURE_LENGTHS=\"{{'inputs': {sequence_length['inputs']}, "
            f"'targets': {max(needed)}}}\"."
        )
    return raw_lengths


@seqio.map_over_dataset(num_seeds=1)
def _choose_denoisers(features, seed, *, shares, raw_lengths):
    """Draws the denoiser of each chunk of a stream: {"targets": [n], "denoiser": [chunks]}."""
    tokens = features["targets"]
    n = tf.size(tokens)
    most = n // min(raw_lengths) + 1  # enough chunks to cover the stream even at the shortest length
    log_shares = tf.math.log(tf.constant([shares], tf.float32))
    choices = tf.random.stateless_categorical(log_shares, most, seed, dtype=tf.int32)[0]
    starts = tf.cumsum(tf.gather(raw_lengths, choices), exclusive=True)
    return {"targets": tokens, "denoiser": choices[: tf.reduce_sum(tf.cast(starts < n, tf.int32))]}


@seqio.map_over_dataset(num_seeds=2)
def _denoise(features, seeds, *, vocab_size, num_sentinels, denoisers, paradigms):
    tokens = features["targets"]

    def branch(denoiser, paradigm):
        def corrupt():
            inputs, targets = objectives.corrupt(
                tokens, seeds, vocab_size=vocab_size, **denoiser.corruption(num_sentinels)
            )
            return tf.concat([tf.constant(paradigm, tokens.dtype), inputs], axis=0), targets

        return corrupt

    inputs, targets = tf.switch_case(features["denoiser"], [branch(d, p) for d, p in zip(denoisers, paradigms)])
    return {"inputs": inputs, "targets": targets, "denoiser": features["denoiser"]}


def mixture_of_denoisers(dataset, sequence_length, output_features, denoisers=DENOISERS):
    """UL2's objective: each example made by one of the denoisers, drawn in their shares, its
    inputs led by the denoiser's paradigm token (the token's text in the task's vocabulary).

    Every denoiser's raw length fills the inputs; a targets length too short for any of them is an
    error (never a silent cut), as in the UL2 reference.
    """
    objectives.require_sentinels(output_features)
    shares = [d.share for d in denoisers]
    if abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"The UL2 denoisers' shares must sum to 1, got {sum(shares)}: {shares}.")
    vocabulary = output_features["targets"].vocabulary
    paradigms = [vocabulary.encode(d.paradigm) for d in denoisers]
    # The vocabulary's extra ids are the sentinels: never more spans than those (docs/data.md).
    num_sentinels = vocabulary.extra_ids
    raw_lengths = _check_fit(denoisers, paradigms, sequence_length, num_sentinels)
    dataset = _choose_denoisers(objectives.token_streams(dataset), shares=shares, raw_lengths=raw_lengths)
    dataset = objectives.split_streams(dataset, lambda x: tf.gather(raw_lengths, x["denoiser"]))
    return _denoise(
        dataset, vocab_size=vocabulary.vocab_size, num_sentinels=num_sentinels, denoisers=denoisers, paradigms=paradigms
    )
