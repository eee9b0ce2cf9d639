"""The decoder-only models of the T5 paper's §3.2: a language model and a prefix LM.

One stack of self-attention layers (network.EncoderLayer, with a decoding cache) reads the
inputs and targets concatenated, laid out as seqio's PrefixLMFeatureConverter lays them out:
decoder_input_tokens / decoder_target_tokens [batch, length] with length = inputs + targets,
decoder_causal_attention [batch, length] (1 over the inputs and the position that reads their
last token and predicts the first target) and, when packed, decoder_segment_ids and
decoder_positions. The loss weights cover the targets only.

Masks (paper Figure 3): 'decoder_only' is causal everywhere; 'prefix_lm' is fully visible among
the positions decoder_causal_attention marks and causal elsewhere.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from t5pod.configs import T5Config
from t5pod.layers import Embed, RelativePositionBias, RMSNorm, constrain, make_attention_mask, make_causal_mask
from t5pod.network import EncoderLayer, layer_stack, output_logits
from t5pod.partitioning import BATCH, EMBED, LENGTH


def attention_mask(positions, segment_ids, prefix=None):
    """Which keys each query sees. [batch, length] each -> [batch, 1, length, length] bool.

    Causal within each segment; with `prefix` (1 on the inputs part), also fully visible among
    the prefix positions.
    """
    mask = make_causal_mask(positions, positions)
    if prefix is not None:
        prefix = prefix.astype(bool)
        mask = mask | (prefix[:, None, :, None] & prefix[:, None, None, :])
    return mask & make_attention_mask(segment_ids, segment_ids)


class DecoderOnly(nn.Module):
    """__call__ gives logits [batch, length, vocab] for every position of the concatenation.

    The prefix LM's relative position buckets are bidirectional (its prefix attends forwards);
    the language model's are causal.
    """

    config: T5Config
    input_features = ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")

    @property
    def is_prefix_lm(self) -> bool:
        return self.config.architecture == "prefix_lm"

    @nn.compact
    def __call__(
        self,
        decoder_input_tokens,
        decoder_segment_ids=None,
        decoder_positions=None,
        decoder_causal_attention=None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
        prompt_mask=None,
    ):
        """With decode=True: the first call creates the cache (tokens of the full cache length);
        the next may pass a whole prompt [batch, prompt] with prompt_mask (False on padding
        slots, which stay masked), and later calls one token each."""
        cfg, dtype = self.config, self.config.activation_dtype
        tokens, deterministic = decoder_input_tokens, not enable_dropout
        if decode:
            query_positions, key_positions, mask = self._decode_mask(tokens, prompt_mask)
        else:
            if decoder_positions is None:
                decoder_positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
            if decoder_segment_ids is None:
                decoder_segment_ids = jnp.ones_like(tokens)
            query_positions = key_positions = decoder_positions
            prefix = decoder_causal_attention if self.is_prefix_lm else None
            mask = attention_mask(decoder_positions, decoder_segment_ids, prefix)
        bias = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=self.is_prefix_lm,
            dtype=dtype,
            name="relpos_bias",
        )(query_positions, key_positions)

        embedder = Embed(cfg.vocab_size, cfg.d_model, dtype, name="token_embedder")
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        y = dropout(embedder(tokens), deterministic=deterministic)
        y = constrain(y, (BATCH, LENGTH, EMBED))
        y = layer_stack(EncoderLayer, cfg, cfg.num_layers, 2, "layers", deterministic=deterministic, decode=decode)(
            y, mask, bias
        )
        y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(y)
        y = dropout(y, deterministic=deterministic)
        return output_logits(self, cfg, embedder, y)

    def _decode_mask(self, tokens, prompt_mask):
        """(query positions, key positions, mask) for the tokens written at the cache's next slots."""
        batch, length = tokens.shape
        creating = not self.has_variable("cache", "step")
        step = self.variable("cache", "step", lambda: jnp.zeros((), jnp.int32))
        key_positions = self.variable("cache", "key_positions", lambda: jnp.arange(length, dtype=jnp.int32)[None]).value
        key_valid = self.variable("cache", "key_valid", lambda: jnp.ones((batch, length), bool))
        if creating:
            return key_positions, key_positions, make_causal_mask(key_positions, key_positions)
        query_positions = step.value + jnp.arange(length, dtype=jnp.int32)[None]
        mask = make_causal_mask(query_positions, key_positions)
        if prompt_mask is not None:
            key_valid.value = jax.lax.dynamic_update_slice(key_valid.value, prompt_mask.astype(bool), (0, step.value))
            if self.is_prefix_lm:  # the prompt is the prefix: fully visible within it
                mask = mask | (key_positions < step.value + length)[:, None, None, :]
        step.value = step.value + length
        return query_positions, key_positions, mask & key_valid.value[:, None, None, :]


def right_aligned_prompts(encoder_input_tokens):
    """The decoder-only prompt of each row: the start token 0, then the inputs (with their EOS).

    encoder_input_tokens [batch, length_in], right-padded -> (prompts [batch, length_in + 1],
    valid [batch, length_in + 1] bool). Prompts are right-aligned (padding first) so that every
    row's first target comes at the same slot; relative positions, all the model sees of
    position, are unchanged by the shift.
    """
    batch, length_in = encoder_input_tokens.shape
    prompt_length = length_in + 1
    lengths = jnp.sum(encoder_input_tokens > 0, axis=1) + 1
    index = jnp.arange(prompt_length)[None] - (prompt_length - lengths)[:, None]
    full = jnp.pad(encoder_input_tokens, ((0, 0), (1, 0)))
    valid = index >= 0
    prompts = jnp.where(valid, jnp.take_along_axis(full, jnp.maximum(index, 0), axis=1), 0)
    return prompts, valid
