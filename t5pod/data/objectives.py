"""Unsupervised objectives as seqio preprocessors (tf.data graph ops, no per-token Python).

Span corruption (T5's pretraining objective) and the other objectives of the paper's §3.3
(Table 3): prefix language modelling, BERT-style and MASS-style masking, deshuffling, i.i.d.
corruption replaced by sentinels or dropped. All follow the reference T5 implementation: chunk
documents, concatenate and split them into raw chunks of the length that yields the requested
input length, then choose noise and replace each noise span (inputs) or each non-noise span
(targets) by a unique sentinel.
"""

import functools

import numpy as np
import seqio
import tensorflow as tf

# Documents longer than this are cut to one random chunk of it (spec 1.7).
MAX_CHUNK_LENGTH = 65536
CONCAT_BATCH_SIZE = 128


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
    max_noise_spans: int | None = None,
) -> tuple[int, int]:
    """(raw tokens per example, targets length) that give exactly inputs_length inputs.

    Python float64 round() (half to even), as the reference does: at 512 inputs this is (568, 114).
    max_noise_spans: at most this many noise spans (random_spans_noise_mask's cap), or no limit.
    """

    def lengths(tokens_length):
        num_noise = int(round(tokens_length * noise_density))
        num_nonnoise = tokens_length - num_noise
        num_spans = int(round(num_noise / mean_noise_span_length))
        if max_noise_spans is not None:
            num_spans = min(num_spans, max_noise_spans)
        # +1 on each side for EOS.
        return (
            num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs, targets = lengths(tokens_length)
    if noise_density == 0.5 and targets > inputs:
        tokens_length -= 1
        targets -= 1
    return tokens_length, targets


def _random_segmentation(num_items, num_segments, seed):
    """Lengths of num_segments positive parts summing to num_items, uniform over compositions.

    Marks num_segments - 1 of the num_items - 1 gaps as segment starts, in random order.
    """
    is_start = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
    order = tf.argsort(tf.random.stateless_uniform([num_items - 1], seed=seed))
    is_start = tf.pad(tf.gather(is_start, order), [[1, 0]])
    segment_ids = tf.cumsum(is_start)
    return tf.math.unsorted_segment_sum(tf.ones_like(segment_ids), segment_ids, num_segments)


def random_spans_noise_mask(
    length, noise_density: float, seeds, mean_noise_span_length: float = 3.0, max_noise_spans: int | None = None
):
    """[length] bool: noise spans of mean length mean_noise_span_length covering noise_density.

    Counts are rounded in float32, half to even (spec 1.4); the mask starts with non-noise and
    ends with noise. seeds: two stateless seed pairs (span lengths of noise, of non-noise).
    max_noise_spans: at most this many spans (longer ones then), e.g. the sentinels there are.
    """
    if noise_density == 0.0:
        return tf.zeros([length], tf.bool)
    original_length = length
    length = tf.maximum(length, 2)
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * tf.constant(noise_density, tf.float32)), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
    if max_noise_spans is not None:
        num_spans = tf.minimum(num_spans, max_noise_spans)
    num_spans = tf.maximum(num_spans, 1)
    noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
    # Alternate non-noise, noise, non-noise, ...; a span's parity says whether it is noise.
    span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    span_index = tf.repeat(tf.range(2 * num_spans), span_lengths)
    return tf.equal(span_index % 2, 1)[:original_length]


def iid_noise_mask(length, noise_density: float, seeds, mean_noise_span_length: float = 1.0):
    """[length] bool: each token is noise independently with probability noise_density."""
    del mean_noise_span_length
    return tf.random.stateless_uniform([length], seed=seeds[0]) < noise_density


def random_prefix_noise_mask(length, noise_density: float, seeds, mean_noise_span_length: float = 1.0):
    """[length] bool: a random non-empty suffix is noise (prefix LM: the suffix is the target)."""
    del noise_density, mean_noise_span_length
    max_prefix = tf.maximum(length - 1, 1)
    prefix = tf.random.stateless_uniform([], seed=seeds[0], minval=1, maxval=max_prefix + 1, dtype=tf.int32)
    return tf.range(length) >= tf.minimum(prefix, length - 1)


def replace_spans_with_sentinels(tokens, span_mask, vocab_size: int, seed=None):
    """Each run of True in span_mask becomes one sentinel: vocab_size - 1, vocab_size - 2, ...

    tokens [n] int, span_mask [n] bool -> [n - (masked tokens) + (spans)]
    """
    previous = tf.pad(span_mask[:-1], [[1, 0]])
    first = span_mask & ~previous
    sentinels = vocab_size - tf.cumsum(tf.cast(first, tokens.dtype))
    tokens = tf.where(first, sentinels, tokens)
    return tf.boolean_mask(tokens, ~(span_mask & previous))


def drop_tokens(tokens, span_mask, vocab_size: int, seed=None):
    """The tokens where span_mask is False."""
    del vocab_size, seed
    return tf.boolean_mask(tokens, ~span_mask)


def keep_tokens(tokens, span_mask, vocab_size: int, seed=None):
    """The original tokens (the target of BERT-style, MASS-style and deshuffling)."""
    del span_mask, vocab_size, seed
    return tokens


def mask_tokens(tokens, noise_mask, vocab_size: int, seed=None):
    """MASS-style: each noise token becomes the mask token (the first sentinel, vocab_size - 1)."""
    del seed
    return tf.where(noise_mask, tf.cast(vocab_size - 1, tokens.dtype), tokens)


BERT_RANDOM_TOKEN_FRACTION = 0.1


def bert_mask_tokens(tokens, noise_mask, vocab_size: int, seed):
    """BERT-style as the T5 paper runs it (§3.3.1; the reference's noise_token_to_random_token_or_sentinel
    with random_prob 0.1): of the noise tokens, 90% become the mask token and 10% a random token; none
    stay as they were (BERT's own recipe is 80/10/10).

    Random tokens are drawn from ids 3..vocab_size-1, as the reference does.
    """
    choice = tf.random.stateless_uniform(tf.shape(tokens), seed=seed)
    random_tokens = tf.random.stateless_uniform(
        tf.shape(tokens), seed=seed + [0, 1], minval=3, maxval=vocab_size, dtype=tokens.dtype
    )
    replaced = tf.where(choice < BERT_RANDOM_TOKEN_FRACTION, random_tokens, tf.cast(vocab_size - 1, tokens.dtype))
    return tf.where(noise_mask, replaced, tokens)


def shuffle_tokens(tokens, noise_mask, vocab_size: int, seed):
    """Deshuffling: the noise tokens permuted among their own positions (all of them at density 1)."""
    del vocab_size
    positions = tf.boolean_mask(tf.range(tf.size(tokens)), noise_mask)
    permuted = tf.gather(positions, tf.argsort(tf.random.stateless_uniform(tf.shape(positions), seed=seed)))
    return tf.tensor_scatter_nd_update(tokens, positions[:, None], tf.gather(tokens, permuted))


def corrupt(tokens, seeds, *, vocab_size, noise_density, mean_noise_span_length, noise_mask_fn, inputs_fn, targets_fn):
    """(inputs, targets) of one example's tokens [n]: noise chosen by noise_mask_fn, then inputs_fn
    and targets_fn applied to the noise and non-noise. seeds: two stateless seed pairs."""
    mask = noise_mask_fn(tf.size(tokens), noise_density, seeds, mean_noise_span_length)
    # A third stream for the objectives that draw while corrupting (BERT-style, deshuffling).
    corruption_seed = tf.random.experimental.stateless_fold_in(seeds[1], 1)
    return inputs_fn(tokens, mask, vocab_size, corruption_seed), targets_fn(tokens, ~mask, vocab_size, corruption_seed)


@seqio.map_over_dataset(num_seeds=2)
def _denoise_example(features, seeds, **settings):
    inputs, targets = corrupt(features["targets"], seeds, **settings)
    return {"inputs": inputs, "targets": targets}


@seqio.map_over_dataset(num_seeds=1)
def _select_random_chunk(features, seed, *, max_length: int):
    tokens = features["targets"]
    n = tf.size(tokens)
    num_segments = tf.cast(tf.math.ceil(tf.cast(n, tf.float32) / max_length), tf.int32)
    start = max_length * tf.random.stateless_uniform([], seed=seed, maxval=num_segments, dtype=tf.int32)
    return {"targets": tokens[start : tf.minimum(start + max_length, n)]}


def _concatenate_documents(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Concatenates every batch_size documents into one token stream (padding removed)."""
    dataset = dataset.padded_batch(batch_size, padded_shapes={"targets": [-1]})
    return dataset.map(
        lambda x: {"targets": tf.boolean_mask(x["targets"], x["targets"] != 0)}, num_parallel_calls=tf.data.AUTOTUNE
    )


def split_streams(dataset: tf.data.Dataset, chunk_lengths) -> tf.data.Dataset:
    """Splits each stream of `targets` tokens into consecutive chunks, one example each.

    chunk_lengths(stream) -> [k] int32: the chunks' lengths, just enough of them to cover the
    stream (the last one is cut at its end). The stream's other features, [k] each, go one to each
    chunk.
    """

    def split(x):
        tokens = x["targets"]
        lengths = chunk_lengths(x)
        starts = tf.cumsum(lengths, exclusive=True)
        width = tf.reduce_max(lengths)
        # Row i holds tokens starts[i] .. starts[i] + width; only its first `length` count.
        padded = tf.pad(tokens, [[0, tf.reduce_sum(lengths) + width - tf.size(tokens)]])
        rows = tf.gather(padded, starts[:, None] + tf.range(width)[None, :])
        others = {k: v for k, v in x.items() if k != "targets"}
        return tf.data.Dataset.from_tensor_slices(
            {"targets": rows, "length": tf.minimum(lengths, tf.size(tokens) - starts), **others}
        )

    dataset = dataset.flat_map(split)
    return dataset.map(
        lambda x: {**{k: v for k, v in x.items() if k != "length"}, "targets": x["targets"][: x["length"]]},
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _split_tokens(dataset: tf.data.Dataset, length: int) -> tf.data.Dataset:
    """Splits each stream into chunks of exactly `length` tokens, the last one shorter."""

    def chunk_lengths(x):
        num_chunks = tf.maximum((tf.size(x["targets"]) + length - 1) // length, 1)
        return tf.fill([num_chunks], length)

    return split_streams(dataset, chunk_lengths)


def token_streams(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Documents' `targets` tokens -> streams of CONCAT_BATCH_SIZE documents concatenated, each
    document longer than MAX_CHUNK_LENGTH first cut to one random chunk of it (spec 1.7)."""
    dataset = dataset.map(lambda x: {"targets": x["targets"]}, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.filter(lambda x: tf.size(x["targets"]) > 0)
    dataset = _select_random_chunk(dataset, max_length=MAX_CHUNK_LENGTH)
    return _concatenate_documents(dataset, CONCAT_BATCH_SIZE)


def denoise_objective(
    dataset: tf.data.Dataset,
    sequence_length: dict,
    output_features: dict,
    *,
    noise_density: float,
    mean_noise_span_length: float,
    noise_mask_fn,
    inputs_fn,
    targets_fn,
    tokens_length: int,
) -> tf.data.Dataset:
    """Shared pipeline: random chunk -> concatenate -> split -> corrupt. Reads `targets` tokens."""
    del sequence_length
    vocab_size = output_features["targets"].vocabulary.vocab_size
    dataset = _split_tokens(token_streams(dataset), tokens_length)
    return _denoise_example(
        dataset,
        vocab_size=vocab_size,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        noise_mask_fn=noise_mask_fn,
        inputs_fn=inputs_fn,
        targets_fn=targets_fn,
    )


def require_sentinels(output_features: dict):
    vocabulary = output_features["targets"].vocabulary
    if getattr(vocabulary, "extra_ids", 1) == 0:
        raise ValueError(
            f"The vocabulary {getattr(vocabulary, 'sentencepiece_model_file', vocabulary)} has no extra ids, "
            "so there are no sentinel tokens for the denoising objective; build it with extra_ids=100 "
            "(t5pod.vocab.get_vocabulary does)."
        )


def span_corruption(
    dataset, sequence_length, output_features, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
):
    """T5's objective: noise spans -> sentinels in inputs; the spans themselves are the targets.

    With 512 inputs at the defaults, each example has 568 raw tokens and 114 targets (incl. EOS).
    """
    require_sentinels(output_features)
    tokens_length, targets_length = random_spans_helper(
        sequence_length["inputs"], noise_density, mean_noise_span_length
    )
    if sequence_length["targets"] < targets_length:
        raise ValueError(
            f"Target length {sequence_length['targets']} is too short for span corruption with "
            f"{sequence_length['inputs']} inputs, noise density {noise_density} and mean span "
            f"{mean_noise_span_length}: it needs {targets_length}. Set TASK_FEATURE_LENGTHS "
            f"targets to at least {targets_length}."
        )
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        noise_mask_fn=random_spans_noise_mask,
        inputs_fn=replace_spans_with_sentinels,
        targets_fn=replace_spans_with_sentinels,
        tokens_length=tokens_length,
    )


def iid_denoising(dataset, sequence_length, output_features, noise_density: float = 0.15):
    """Paper §3.3: each token corrupted independently; spans of noise still share a sentinel."""
    require_sentinels(output_features)
    # Each noise token costs its sentinel at worst; choose raw length so inputs fit on average.
    tokens_length = int(sequence_length["inputs"] - 1)
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=noise_density,
        mean_noise_span_length=1.0,
        noise_mask_fn=iid_noise_mask,
        inputs_fn=replace_spans_with_sentinels,
        targets_fn=replace_spans_with_sentinels,
        tokens_length=tokens_length,
    )


def prefix_lm(dataset, sequence_length, output_features):
    """Paper §3.3 prefix language modelling: a random prefix is the input, the rest the target."""
    tokens_length = int(min(sequence_length["inputs"], sequence_length["targets"]) - 1)
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=0.5,
        mean_noise_span_length=1.0,
        noise_mask_fn=random_prefix_noise_mask,
        inputs_fn=drop_tokens,
        targets_fn=drop_tokens,
        tokens_length=tokens_length,
    )


def _reconstruction_length(sequence_length: dict, name: str) -> int:
    """Raw tokens per example for objectives whose target is the whole original text."""
    if sequence_length["targets"] < sequence_length["inputs"]:
        raise ValueError(
            f"The {name} objective's target is the original text, as long as its input: set TASK_FEATURE_LENGTHS "
            f"targets to at least inputs ({sequence_length['inputs']}), e.g. "
            f"--gin.TASK_FEATURE_LENGTHS=\"{{'inputs': {sequence_length['inputs']}, "
            f"'targets': {sequence_length['inputs']}}}\"."
        )
    return int(sequence_length["inputs"] - 1)


def bert_style(dataset, sequence_length, output_features, noise_density: float = 0.15):
    """Paper §3.3.1: 15% of tokens corrupted (80% mask, 10% random, 10% kept); target: the original."""
    require_sentinels(output_features)
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=noise_density,
        mean_noise_span_length=1.0,
        noise_mask_fn=iid_noise_mask,
        inputs_fn=bert_mask_tokens,
        targets_fn=keep_tokens,
        tokens_length=_reconstruction_length(sequence_length, "bert_style"),
    )


def mass_style(dataset, sequence_length, output_features, noise_density: float = 0.15):
    """Paper §3.3.2: BERT-style without random swaps (every corrupted token becomes the mask)."""
    require_sentinels(output_features)
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=noise_density,
        mean_noise_span_length=1.0,
        noise_mask_fn=iid_noise_mask,
        inputs_fn=mask_tokens,
        targets_fn=keep_tokens,
        tokens_length=_reconstruction_length(sequence_length, "mass_style"),
    )


def deshuffling(dataset, sequence_length, output_features):
    """Paper §3.3.1: the input is the text's tokens shuffled; the target is the original text."""
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=1.0,
        mean_noise_span_length=1.0,
        noise_mask_fn=iid_noise_mask,
        inputs_fn=shuffle_tokens,
        targets_fn=keep_tokens,
        tokens_length=_reconstruction_length(sequence_length, "deshuffling"),
    )


def drop_corrupted_tokens(dataset, sequence_length, output_features, noise_density: float = 0.15):
    """Paper §3.3.2: i.i.d. corrupted tokens are removed from the input and are the target."""
    return denoise_objective(
        dataset,
        sequence_length,
        output_features,
        noise_density=noise_density,
        mean_noise_span_length=1.0,
        noise_mask_fn=iid_noise_mask,
        inputs_fn=drop_tokens,
        targets_fn=drop_tokens,
        tokens_length=int(sequence_length["inputs"] - 1),
    )


def noise_span_lengths(mask) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean mask (for statistics)."""
    mask = np.asarray(mask, bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], mask, [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


# The objectives of the paper's §3.3, by the name tasks use (`<source>_<name>`). Which take a
# noise density (NOISE_DENSITY) and a mean span length (MEAN_NOISE_SPAN_LENGTH):
OBJECTIVES = {
    "span_corruption": (span_corruption, ("noise_density", "mean_noise_span_length")),
    "iid_denoising": (iid_denoising, ("noise_density",)),  # Table 4 "replace corrupted spans"
    "drop_corrupted_tokens": (drop_corrupted_tokens, ("noise_density",)),
    "bert_style": (bert_style, ("noise_density",)),
    "mass_style": (mass_style, ("noise_density",)),
    "deshuffling": (deshuffling, ()),
    "prefix_lm": (prefix_lm, ()),
}


def objective(name: str, noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
    """The preprocessor for an objective name, with the settings it takes bound."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; use one of {sorted(OBJECTIVES)}.")
    function, settings = OBJECTIVES[name]
    values = {"noise_density": noise_density, "mean_noise_span_length": mean_noise_span_length}
    return functools.partial(function, **{k: values[k] for k in settings})
