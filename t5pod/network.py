"""The T5 encoder-decoder (T5 1.0 and 1.1) as Flax linen modules.

Feature names follow seqio's encoder-decoder features: encoder_input_tokens [batch, length_in],
decoder_input_tokens / decoder_target_tokens [batch, length_out], and for packed rows the
*_segment_ids and *_positions of the same shapes.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5pod.config import T5Config
from t5pod.layers import (
    Embed, MlpBlock, MultiHeadAttention, RelativePositionBias, RMSNorm, constrain,
    make_attention_mask, make_causal_mask, normal,
)
from t5pod.partitioning import BATCH, EMBED, LAYERS, LENGTH, VOCAB

REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward blocks. [batch, length, embed] -> same."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, bias):
        cfg, dtype = self.config, self.config.activation_dtype
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, name="attention")(
            h, h, mask, bias, deterministic=self.deterministic)
        x = x + dropout(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        h = MlpBlock(cfg.d_ff, _activation(cfg), cfg.is_gated, cfg.dropout_rate, dtype, name="mlp")(
            h, deterministic=self.deterministic)
        x = x + dropout(h, deterministic=self.deterministic)
        return constrain(x, (BATCH, LENGTH, EMBED)), None


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and feed-forward. [batch, length, embed]."""

    config: T5Config
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, y, encoded, self_mask, self_bias, cross_mask):
        cfg, dtype = self.config, self.config.activation_dtype
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(y)
        h = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, name="self_attention")(
            h, h, self_mask, self_bias, deterministic=self.deterministic, decode=self.decode)
        y = y + dropout(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(y)
        h = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, name="encoder_decoder_attention")(
            h, encoded, cross_mask, None, deterministic=self.deterministic)
        y = y + dropout(h, deterministic=self.deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(y)
        h = MlpBlock(cfg.d_ff, _activation(cfg), cfg.is_gated, cfg.dropout_rate, dtype, name="mlp")(
            h, deterministic=self.deterministic)
        y = y + dropout(h, deterministic=self.deterministic)
        return constrain(y, (BATCH, LENGTH, EMBED)), None


def _activation(cfg: T5Config) -> str:
    # The reference's gated-gelu is the tanh approximation ("gelu_new"); plain gelu is exact.
    return "gelu_tanh" if cfg.feed_forward_proj == "gated-gelu" else cfg.activation


def _stack(layer_cls, cfg: T5Config, num_layers: int, num_broadcast_args: int, name: str, **attrs):
    """num_layers copies of layer_cls: unrolled as layers_0..N-1, or one scanned `layers` module."""
    if cfg.remat_policy != "none":
        layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        scanned = nn.scan(
            layer_cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_broadcast_args,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )
        layer = scanned(cfg, name=f"{name}", **attrs)

        def run(x, *args):
            return layer(x, *args)[0]

        return run
    layers = [layer_cls(cfg, name=f"{name}_{i}", **attrs) for i in range(num_layers)]

    def run_unrolled(x, *args):
        for layer in layers:
            x = layer(x, *args)[0]
        return x

    return run_unrolled


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic: bool = True):
        """[batch, length] tokens -> [batch, length, embed] encodings."""
        cfg, dtype = self.config, self.config.activation_dtype
        if segment_ids is None:
            segment_ids = (tokens > 0).astype(jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        mask = make_attention_mask(segment_ids, segment_ids)
        bias = RelativePositionBias(
            cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.num_heads,
            bidirectional=True, dtype=dtype, name="relpos_bias")(positions, positions)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = dropout(self.shared_embedding(tokens), deterministic=deterministic)
        x = constrain(x, (BATCH, LENGTH, EMBED))
        x = _stack(EncoderLayer, cfg, cfg.num_layers, 2, "layers", deterministic=deterministic)(x, mask, bias)
        x = RMSNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)
        return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, encoder_segment_ids, tokens, segment_ids=None, positions=None, *,
                 deterministic: bool = True, decode: bool = False):
        """encoded [batch, length_in, embed], tokens [batch, length_out] -> logits [batch, length_out, vocab].

        With decode=True, tokens is [batch, 1] and the position comes from the cache; the first
        call (while the cache is created) must pass the full decode length.
        """
        cfg, dtype = self.config, self.config.activation_dtype
        if decode:
            # The first call creates the cache and runs plain causal attention over the full
            # decode length; each later call is one token at the position counted in `step`.
            creating = not self.has_variable("cache", "step")
            step = self.variable("cache", "step", lambda: jnp.zeros((), jnp.int32))
            key_positions = self.variable(
                "cache", "key_positions", lambda: jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]).value
            if creating:
                query_positions = key_positions
            else:
                query_positions = jnp.broadcast_to(step.value, (1, tokens.shape[1]))
                step.value = step.value + 1
            self_mask = make_causal_mask(query_positions, key_positions)
            segment_ids = jnp.ones_like(tokens)
        else:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
            if segment_ids is None:
                segment_ids = jnp.ones_like(tokens)
            query_positions = key_positions = positions
            self_mask = make_causal_mask(positions, positions) & make_attention_mask(segment_ids, segment_ids)
        self_bias = RelativePositionBias(
            cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance, cfg.num_heads,
            bidirectional=False, dtype=dtype, name="relpos_bias")(query_positions, key_positions)
        cross_mask = make_attention_mask(segment_ids, encoder_segment_ids)

        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        y = dropout(self.shared_embedding(tokens), deterministic=deterministic)
        y = constrain(y, (BATCH, LENGTH, EMBED))
        y = _stack(DecoderLayer, cfg, cfg.decoder_layers, 4, "layers", deterministic=deterministic, decode=decode)(
            y, encoded, self_mask, self_bias, cross_mask)
        y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(y)
        y = dropout(y, deterministic=deterministic)
        if cfg.tie_word_embeddings:
            logits = self.shared_embedding.attend(y * cfg.d_model**-0.5)
        else:
            kernel = self.param("logits_dense", nn.with_logical_partitioning(normal(cfg.d_model**-0.5), (EMBED, VOCAB)),
                                (cfg.d_model, cfg.vocab_size), jnp.float32)
            logits = y @ kernel.astype(dtype)
        return constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))


class Transformer(nn.Module):
    """T5 encoder-decoder; __call__ gives teacher-forced logits [batch, length_out, vocab]."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, *,
               enable_dropout: bool = False):
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic=not enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, decoder_positions=None, *, enable_dropout: bool = False,
               decode: bool = False):
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_input_tokens > 0).astype(jnp.int32)
        return self.decoder(encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids,
                            decoder_positions, deterministic=not enable_dropout, decode=decode)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
                 decoder_segment_ids=None, encoder_positions=None, decoder_positions=None, *,
                 enable_dropout: bool = False, decode: bool = False):
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                           decoder_segment_ids, decoder_positions, enable_dropout=enable_dropout, decode=decode)


def abstract_variables(config: T5Config, batch: int = 1, input_length: int = 8, target_length: int = 8) -> Any:
    """Shapes (and logical-axis boxes) of the parameters, computed without allocating them."""
    model = Transformer(config)
    inputs = jnp.ones((batch, input_length), jnp.int32)
    targets = jnp.ones((batch, target_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs, targets)


def count_parameters(config: T5Config) -> int:
    leaves = jax.tree_util.tree_leaves(nn.unbox(abstract_variables(config)["params"]))
    return sum(int(x.size) for x in leaves)


def init_decode_cache(model: Transformer, params, encoder_input_tokens, max_decode_length: int):
    """A zero decoding cache for [batch, max_decode_length] generation from these inputs."""
    batch = encoder_input_tokens.shape[0]

    def create(params):
        encoded = model.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
        _, variables = model.apply(
            {"params": params}, encoded, encoder_input_tokens, jnp.zeros((batch, max_decode_length), jnp.int32),
            decode=True, mutable=["cache"], method=Transformer.decode)
        return variables["cache"]

    shapes = jax.eval_shape(create, params)
    return jax.tree_util.tree_map_with_path(functools.partial(_zero_cache_leaf, max_decode_length), shapes)


def _zero_cache_leaf(max_decode_length: int, path, shape):
    if getattr(path[-1], "key", None) == "key_positions":  # static: the positions of the cache slots
        return jnp.broadcast_to(jnp.arange(max_decode_length, dtype=shape.dtype), shape.shape)
    return jnp.zeros(shape.shape, shape.dtype)


def stack_layers(params: dict) -> dict:
    """Unrolled params (layers_0..N-1) -> the scanned layout (one `layers` entry, layer axis 0)."""
    stacked = {}
    for stack_name, stack in params.items():
        if not isinstance(stack, dict) or "layers_0" not in stack:
            stacked[stack_name] = stack
            continue
        count = sum(1 for name in stack if name.startswith("layers_"))
        layers = [stack[f"layers_{i}"] for i in range(count)]
        rest = {k: v for k, v in stack.items() if not k.startswith("layers_")}
        stacked[stack_name] = {**rest, "layers": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)}
    return stacked
