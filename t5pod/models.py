"""What differs between the architectures, in one place: which module to build, what a batch of
features looks like for given lengths, and how decoding starts (the cache and the prompt).

Every other module asks here instead of testing the architecture itself. Encoder-decoder models
(network.Transformer) read seqio's EncDecFeatureConverter features; the decoder-only LM and
prefix LM (decoder_only.DecoderOnly) read PrefixLMFeatureConverter's, inputs and targets
concatenated into one [batch, inputs + targets] row.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import flax
from flax import linen as nn
from flax import traverse_util

from t5pod import decoder_only, network
from t5pod.configs import T5Config

# Training features per architecture: (name, which length), in the feature converter's names.
_ENCODER_DECODER_FEATURES = (
    ("encoder_input_tokens", "inputs"),
    ("encoder_segment_ids", "inputs"),
    ("encoder_positions", "inputs"),
    ("decoder_input_tokens", "targets"),
    ("decoder_target_tokens", "targets"),
    ("decoder_loss_weights", "targets"),
    ("decoder_segment_ids", "targets"),
    ("decoder_positions", "targets"),
)
_DECODER_ONLY_FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_causal_attention",
)
_PACKING_FEATURES = ("segment_ids", "positions")


def build(config: T5Config) -> nn.Module:
    """The model for config.architecture: network.Transformer or decoder_only.DecoderOnly."""
    if config.is_decoder_only:
        return decoder_only.DecoderOnly(config)
    return network.Transformer(config)


def feature_converter(config: T5Config, pack: bool = True):
    """The seqio feature converter whose features the model reads."""
    from t5pod.data import pipeline  # here, not at the top: the model itself runs without TensorFlow

    return pipeline.feature_converter(pack, decoder_only=config.is_decoder_only)


def layers_per_stack(config: T5Config) -> dict[str, int]:
    """Layers per top-level stack of the parameter tree ("" for the decoder-only models' one stack)."""
    if config.is_decoder_only:
        return {"": config.num_layers}
    return {"encoder": config.num_layers, "decoder": config.decoder_layers, "shared": config.num_layers}


def batch_spec(config: T5Config, batch_size: int, lengths: dict, packed: bool = True) -> dict:
    """The training batch the feature converter gives, as jax.ShapeDtypeStruct per feature.

    lengths: the task feature lengths {'inputs': n, 'targets': m}. Encoder-decoder features are
    [batch, n] (encoder_*) and [batch, m] (decoder_*); decoder-only ones [batch, n + m].
    Unpacked batches have no segment ids or positions.
    """
    if config.is_decoder_only:
        shapes = {name: lengths["inputs"] + lengths["targets"] for name in _DECODER_ONLY_FEATURES}
    else:
        shapes = {name: lengths[which] for name, which in _ENCODER_DECODER_FEATURES}
    if not packed:
        shapes = {name: n for name, n in shapes.items() if not name.endswith(_PACKING_FEATURES)}
    return {name: jax.ShapeDtypeStruct((batch_size, n), jnp.int32) for name, n in shapes.items()}


def dummy_features(config: T5Config, batch: int = 1, input_length: int = 8, target_length: int = 8) -> dict:
    """All-ones token inputs of the given task lengths, for init and shape inference."""
    spec = batch_spec(config, batch, {"inputs": input_length, "targets": target_length})
    return {name: jnp.ones(s.shape, s.dtype) for name, s in spec.items() if name.endswith("input_tokens")}


def abstract_variables(config: T5Config, batch: int = 1, input_length: int = 8, target_length: int = 8) -> Any:
    """Shapes (and logical-axis boxes) of the variables, computed without allocating them."""
    features = dummy_features(config, batch, input_length, target_length)
    return jax.eval_shape(lambda rng: build(config).init(rng, **features), jax.random.PRNGKey(0))


def count_parameters(config: T5Config) -> int:
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_variables(config)["params"]))
    return sum(int(x.size) for x in leaves)


def scoring_features(config: T5Config, encoder_input_tokens: np.ndarray, decoder_target_tokens: np.ndarray) -> dict:
    """Features that score each row's targets given its inputs, as the feature converter lays them.

    [batch, length_in] and [batch, length_out], right-padded with 0 -> encoder-decoder features,
    or (decoder-only) decoder_* [batch, length_in + length_out] with the loss on the targets.
    """
    if not config.is_decoder_only:
        return {
            "encoder_input_tokens": encoder_input_tokens,
            "decoder_target_tokens": decoder_target_tokens,
            "decoder_input_tokens": np.pad(decoder_target_tokens[:, :-1], ((0, 0), (1, 0))),
        }
    batch = encoder_input_tokens.shape[0]
    length = encoder_input_tokens.shape[1] + decoder_target_tokens.shape[1]
    out = {
        k: np.zeros((batch, length), np.int32)
        for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights", "decoder_causal_attention")
    }
    for row, (inputs, targets) in enumerate(zip(encoder_input_tokens, decoder_target_tokens)):
        inputs, targets = inputs[inputs > 0], targets[targets > 0]
        tokens = np.concatenate([inputs, targets])
        out["decoder_target_tokens"][row, : len(tokens)] = tokens
        out["decoder_input_tokens"][row, 1 : len(tokens)] = tokens[:-1]
        out["decoder_loss_weights"][row, len(inputs) : len(tokens)] = 1
        out["decoder_causal_attention"][row, : len(inputs) + 1] = 1
    return out


def _initial_cache_leaf(length: int, path, value):
    name = getattr(path[-1], "key", None)
    if name in ("cross_key", "cross_value"):  # the encoder output's projections, made once
        return value
    if name == "key_positions":  # static: the positions of the cache slots
        return jnp.broadcast_to(jnp.arange(length, dtype=value.dtype), value.shape)
    if name == "key_valid":  # slots are valid unless a prompt marks them as padding
        return jnp.ones(value.shape, value.dtype)
    return jnp.zeros(value.shape, value.dtype)


def _initial_cache(create: Callable, params, length: int):
    """create(params)'s cache with its self-attention slots zeroed; cross-attention keys and
    values as computed. Under jit, only the cross-attention projections of the pass remain."""
    return jax.tree_util.tree_map_with_path(functools.partial(_initial_cache_leaf, length), create(params))


def init_decode_cache(model: nn.Module, params, encoder_input_tokens, length: int):
    """The cache for decoding `length` target tokens per row of encoder_input_tokens.

    Encoder-decoder: the decoder's self-attention cache [batch, length]. Decoder-only: the prompt
    (encoder_input_tokens plus the start token) and the targets share the cache.
    """
    batch = encoder_input_tokens.shape[0]
    if isinstance(model, decoder_only.DecoderOnly):
        length += encoder_input_tokens.shape[1] + 1

        def create(params):
            _, variables = model.apply(
                {"params": params}, jnp.zeros((batch, length), jnp.int32), decode=True, mutable=["cache"]
            )
            return variables["cache"]

        return _initial_cache(create, params, length)

    def create(params):
        encoded = model.apply({"params": params}, encoder_input_tokens, method=network.Transformer.encode)
        _, variables = model.apply(
            {"params": params},
            encoded,
            encoder_input_tokens,
            jnp.zeros((batch, length), jnp.int32),
            decode=True,
            mutable=["cache"],
            method=network.Transformer.decode,
        )
        return variables["cache"]

    return _initial_cache(create, params, length)


_CROSS_CACHE = ("cross_key", "cross_value")


def _split_cross(cache) -> tuple[dict, dict]:
    """(the cross-attention keys and values, the rest of the cache), as two nested dicts."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(cache))
    cross = {k: v for k, v in flat.items() if k[-1] in _CROSS_CACHE}
    rest = {k: v for k, v in flat.items() if k[-1] not in _CROSS_CACHE}
    return traverse_util.unflatten_dict(cross), traverse_util.unflatten_dict(rest)


def _merge(cache: dict, cross: dict) -> dict:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(cache), **traverse_util.flatten_dict(cross)})


def begin_decoding(model: nn.Module, params, encoder_input_tokens, max_decode_length: int):
    """(step, logits [rows, vocab] for the first target token, cache) for any architecture.

    step(tokens [rows], cache) -> (logits [rows, vocab] for the next token, cache). The cache has
    room for one step more than max_decode_length, so decoding loops may always step after
    choosing a token. Decoder-only models write the whole prompt to the cache in one pass.
    """
    if isinstance(model, decoder_only.DecoderOnly):
        prompts, valid = decoder_only.right_aligned_prompts(encoder_input_tokens)
        cache = init_decode_cache(model, params, encoder_input_tokens, max_decode_length)
        logits, variables = model.apply(
            {"params": params, "cache": cache}, prompts, decode=True, prompt_mask=valid, mutable=["cache"]
        )

        def step(tokens, cache):
            logits, variables = model.apply(
                {"params": params, "cache": cache}, tokens[:, None], decode=True, mutable=["cache"]
            )
            return logits[:, 0].astype(jnp.float32), variables["cache"]

        return step, logits[:, -1].astype(jnp.float32), variables["cache"]

    encoded = model.apply({"params": params}, encoder_input_tokens, method=network.Transformer.encode)
    cross, cache = _split_cross(init_decode_cache(model, params, encoder_input_tokens, max_decode_length + 1))

    # The cross-attention keys and values stay out of the loop's state: they never change, and a
    # decoding loop (beam search: reordering rows) then never copies them.
    def step(tokens, cache):
        logits, variables = model.apply(
            {"params": params, "cache": _merge(cache, cross)},
            encoded,
            encoder_input_tokens,
            tokens[:, None],
            decode=True,
            mutable=["cache"],
            method=network.Transformer.decode,
        )
        return logits[:, 0].astype(jnp.float32), _split_cross(variables["cache"])[1]

    start_tokens = jnp.zeros((encoder_input_tokens.shape[0],), jnp.int32)
    return (step, *step(start_tokens, cache))


POOLED_FEATURES = ("encoder", "embeddings")


def mean_pooled_encoding(model, params, encoder_input_tokens, features: str = "encoder"):
    """encoder_input_tokens [batch, length] -> the encoder's outputs ("encoder") or the token
    embeddings it starts from ("embeddings") averaged over each row's non-padding tokens
    [batch, embed], in float32 (the features of a linear probe)."""
    if features == "encoder":
        encoded = model.apply({"params": params}, encoder_input_tokens, method=model.encode).astype(jnp.float32)
        encoded = encoded[:, encoded.shape[1] - encoder_input_tokens.shape[1] :]  # without a tuned prompt's
    elif features == "embeddings":
        encoded = params["token_embedder"]["embedding"][encoder_input_tokens].astype(jnp.float32)
    else:
        raise ValueError(f"pooled features are one of {POOLED_FEATURES}, not {features!r}.")
    mask = (encoder_input_tokens > 0)[..., None].astype(jnp.float32)
    return (encoded * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
