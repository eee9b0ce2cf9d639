"""The T5 encoder-decoder (T5 1.0 and 1.1) as Flax linen modules.

Feature names follow seqio's encoder-decoder features: encoder_input_tokens [batch, length_in],
decoder_input_tokens / decoder_target_tokens [batch, length_out], and for packed rows the
*_segment_ids and *_positions of the same shapes.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5pod import peft
from t5pod.configs import T5Config
from t5pod.layers import (
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    constrain,
    make_attention_mask,
    make_causal_mask,
    normal,
)
from t5pod.partitioning import BATCH, EMBED, LAYERS, LENGTH, VOCAB


def _remat_policy(name: str):
    """The jax.checkpoint policy of configs.REMAT_POLICIES' name ('full': save nothing)."""
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable if name == "save_dots" else None


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward blocks. [batch, length, embed] -> same.

    Also the layer of the decoder-only models (decode=True caches its keys and values), and in
    the shared encoder-decoder the decoder layers call its attend/feed_forward.
    """

    config: T5Config
    deterministic: bool = True
    decode: bool = False

    def setup(self):
        cfg, dtype = self.config, self.config.activation_dtype
        self.pre_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        lora = peft.low_rank(cfg)
        self.attention = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, lora)
        self.pre_mlp_layer_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        self.mlp = MlpBlock(cfg.d_ff, _activation(cfg), cfg.is_gated, cfg.dropout_rate, dtype, lora)
        self.adapter = _adapter(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

    def attend(self, x, mask, bias, *, deterministic: bool, decode: bool = False):
        """The self-attention sublayer with its residual."""
        return _residual_attention(
            self.pre_attention_layer_norm,
            self.attention,
            self.dropout,
            x,
            mask,
            bias,
            deterministic=deterministic,
            decode=decode,
        )

    def feed_forward(self, x, *, deterministic: bool):
        """The feed-forward sublayer (and its adapter) with its residual."""
        return _residual_feed_forward(
            self.pre_mlp_layer_norm, self.mlp, self.adapter, self.dropout, x, deterministic=deterministic
        )

    def __call__(self, x, mask, bias):
        x = self.attend(x, mask, bias, deterministic=self.deterministic, decode=self.decode)
        x = self.feed_forward(x, deterministic=self.deterministic)
        return constrain(x, (BATCH, LENGTH, EMBED)), None


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and feed-forward. [batch, length, embed].

    With `shared` (an EncoderLayer), the self-attention and feed-forward sublayers are that
    layer's: only the cross-attention and its norm belong to the decoder layer.
    """

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    shared: EncoderLayer | None = None

    def setup(self):
        cfg, dtype, lora = self.config, self.config.activation_dtype, peft.low_rank(self.config)
        if self.shared is None:
            self.pre_self_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
            self.self_attention = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, lora)
            self.pre_mlp_layer_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
            self.mlp = MlpBlock(cfg.d_ff, _activation(cfg), cfg.is_gated, cfg.dropout_rate, dtype, lora)
            self.adapter = _adapter(cfg)
        self.pre_cross_attention_layer_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        self.encoder_decoder_attention = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, lora)
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

    def __call__(self, y, encoded, self_mask, self_bias, cross_mask):
        deterministic = self.deterministic
        if self.shared is not None:
            y = self.shared.attend(y, self_mask, self_bias, deterministic=deterministic, decode=self.decode)
        else:
            y = _residual_attention(
                self.pre_self_attention_layer_norm,
                self.self_attention,
                self.dropout,
                y,
                self_mask,
                self_bias,
                deterministic=deterministic,
                decode=self.decode,
            )
        y = _residual_attention(
            self.pre_cross_attention_layer_norm,
            self.encoder_decoder_attention,
            self.dropout,
            y,
            cross_mask,
            None,
            deterministic=deterministic,
            keys_values=encoded,
            decode_cross=self.decode,
        )
        if self.shared is not None:
            y = self.shared.feed_forward(y, deterministic=deterministic)
        else:
            y = _residual_feed_forward(
                self.pre_mlp_layer_norm, self.mlp, self.adapter, self.dropout, y, deterministic=deterministic
            )
        return constrain(y, (BATCH, LENGTH, EMBED)), None


def _residual_attention(
    norm,
    attention,
    dropout,
    x,
    mask,
    bias,
    *,
    deterministic: bool,
    decode: bool = False,
    keys_values=None,
    decode_cross: bool = False,
):
    """x + dropout(attention(norm(x))): self-attention, or cross-attention over keys_values
    [batch, length_kv, embed] (decode_cross: their projections cached while decoding).
    x [batch, length, embed] -> same."""
    h = norm(x)
    h = attention(
        h,
        h if keys_values is None else keys_values,
        mask,
        bias,
        deterministic=deterministic,
        decode=decode,
        decode_cross=decode_cross,
    )
    return x + dropout(h, deterministic=deterministic)


def _residual_feed_forward(norm, mlp, adapter, dropout, x, *, deterministic: bool):
    """x + dropout(mlp(norm(x)) [+ its adapter]). x [batch, length, embed] -> same."""
    h = mlp(norm(x), deterministic=deterministic)
    if adapter is not None:
        h = h + adapter(h, deterministic=deterministic)
    return x + dropout(h, deterministic=deterministic)


def _adapter(cfg: T5Config):
    """Paper §3.5.1: dense-ReLU-dense of inner width adapter_dim, added to the feed-forward output."""
    if not cfg.adapter_dim:
        return None
    return MlpBlock(cfg.adapter_dim, "relu", False, cfg.dropout_rate, cfg.activation_dtype)


def _activation(cfg: T5Config) -> str:
    # The reference's gated-gelu is the tanh approximation ("gelu_new"); plain gelu is exact.
    return "gelu_tanh" if cfg.feed_forward_proj == "gated-gelu" else cfg.activation


def layer_stack(layer_cls, cfg: T5Config, num_layers: int, num_broadcast_args: int, name: str, **attrs):
    """num_layers copies of layer_cls: unrolled as layers_0..N-1, or one scanned `layers` module."""
    if cfg.remat_policy != "none":
        layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
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
    shared_layers: tuple = ()  # EncoderLayers owned by the Transformer (shared encoder-decoder)

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, *, deterministic: bool = True):
        """[batch, length] tokens -> [batch, length, embed] encodings; with prompt tuning
        [batch, prompt + length, embed], the prompt's encodings first."""
        cfg, dtype = self.config, self.config.activation_dtype
        if segment_ids is None:
            segment_ids = (tokens > 0).astype(jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.shared_embedding(tokens)
        if cfg.prompt_length:
            prompt = peft.prompt_vectors(self, cfg.prompt_length, cfg.d_model).astype(x.dtype)
            x = jnp.concatenate([jnp.broadcast_to(prompt, (x.shape[0], *prompt.shape)), x], axis=1)
            segment_ids = peft.prompt_segment_ids(cfg.prompt_length, segment_ids)
            positions = peft.prompt_positions(cfg.prompt_length, positions)
        mask = make_attention_mask(segment_ids, segment_ids)
        bias = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=True,
            dtype=dtype,
            name="relpos_bias",
        )(positions, positions)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = constrain(dropout(x, deterministic=deterministic), (BATCH, LENGTH, EMBED))
        if self.shared_layers:
            for layer in self.shared_layers:
                x = layer.feed_forward(
                    layer.attend(x, mask, bias, deterministic=deterministic), deterministic=deterministic
                )
        else:
            x = layer_stack(EncoderLayer, cfg, cfg.num_layers, 2, "layers", deterministic=deterministic)(x, mask, bias)
        x = RMSNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)
        return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module
    shared_layers: tuple = ()  # the encoder's layers, for the shared encoder-decoder

    @nn.compact
    def __call__(
        self,
        encoded,
        encoder_segment_ids,
        tokens,
        segment_ids=None,
        positions=None,
        *,
        deterministic: bool = True,
        decode: bool = False,
    ):
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
                "cache", "key_positions", lambda: jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
            ).value
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
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=False,
            dtype=dtype,
            name="relpos_bias",
        )(query_positions, key_positions)
        cross_mask = make_attention_mask(segment_ids, encoder_segment_ids)

        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        y = dropout(self.shared_embedding(tokens), deterministic=deterministic)
        y = constrain(y, (BATCH, LENGTH, EMBED))
        if self.shared_layers:
            for i, shared in enumerate(self.shared_layers):
                layer = DecoderLayer(cfg, deterministic, decode, shared, name=f"layers_{i}")
                y = layer(y, encoded, self_mask, self_bias, cross_mask)[0]
        else:
            y = layer_stack(
                DecoderLayer, cfg, cfg.decoder_layers, 4, "layers", deterministic=deterministic, decode=decode
            )(y, encoded, self_mask, self_bias, cross_mask)
        y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(y)
        y = dropout(y, deterministic=deterministic)
        return output_logits(self, cfg, self.shared_embedding, y)


def output_logits(module: nn.Module, cfg: T5Config, embedder: Embed, y):
    """[batch, length, embed] -> float32 logits [batch, length, vocab]: the tied embedding
    (scaled by d_model**-0.5, T5 1.0) or module's own `logits_dense` layer (T5 1.1)."""
    with jax.named_scope("logits"):
        if cfg.tie_word_embeddings:
            logits = embedder.attend(y * cfg.d_model**-0.5)
        else:
            kernel = module.param(
                "logits_dense",
                nn.with_logical_partitioning(normal(cfg.d_model**-0.5), (EMBED, VOCAB)),
                (cfg.d_model, cfg.vocab_size),
                jnp.float32,
            )
            logits = y @ kernel.astype(cfg.activation_dtype)
        return constrain(logits.astype(jnp.float32), (BATCH, LENGTH, VOCAB))


class Transformer(nn.Module):
    """T5 encoder-decoder; __call__ gives teacher-forced logits [batch, length_out, vocab].

    architecture='shared_encoder_decoder' keeps one set of layers (`shared_layers_i`), used by
    the encoder and, for self-attention and feed-forward, by the decoder.
    """

    config: T5Config
    input_features = (
        "encoder_input_tokens",
        "decoder_input_tokens",
        "encoder_segment_ids",
        "decoder_segment_ids",
        "encoder_positions",
        "decoder_positions",
    )

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, cfg.activation_dtype)
        shared = ()
        if cfg.architecture == "shared_encoder_decoder":
            self.shared_layers = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
            shared = tuple(self.shared_layers)
        self.encoder = Encoder(cfg, self.token_embedder, shared)
        self.decoder = Decoder(cfg, self.token_embedder, shared)

    def encode(
        self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, *, enable_dropout: bool = False
    ):
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, deterministic=not enable_dropout
        )

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        decoder_positions=None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
    ):
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_input_tokens > 0).astype(jnp.int32)
        if self.config.prompt_length:  # the encodings start with the prompt's
            encoder_segment_ids = peft.prompt_segment_ids(self.config.prompt_length, encoder_segment_ids)
        return self.decoder(
            encoded,
            encoder_segment_ids,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            deterministic=not enable_dropout,
            decode=decode,
        )

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        encoder_positions=None,
        decoder_positions=None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
    ):
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout=enable_dropout,
            decode=decode,
        )


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
