"""T5 building blocks: RMS norm, attention with a decoding cache, feed-forward, relative bias.

Einsum legend: b batch, q query length, k key length, e embed, h heads, d kv (per-head
width), m mlp, v vocab.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from t5pod import peft
from t5pod.partitioning import BATCH, EMBED, HEADS, KV, LENGTH, MLP, RELPOS_BUCKETS, VOCAB

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}
# Large negative logit for masked attention positions (finite, so fully masked rows stay finite).
MASK_VALUE = -1e10


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Logical sharding constraint; a no-op outside a mesh with axis rules."""
    return nn.with_logical_constraint(x, axes)


def normal(stddev: float):
    return nn.initializers.normal(stddev=stddev)


class RMSNorm(nn.Module):
    """T5 layer norm: scale by the root mean square, no mean subtraction, no bias.

    [..., embed] -> [..., embed]
    """

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
            (x.shape[-1],),
            jnp.float32,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (x32 * scale).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding, also usable as the tied output layer.

    __call__: [batch, length] int -> [batch, length, embed]; attend: [..., embed] -> [..., vocab].
    """

    vocab_size: int
    features: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(normal(1.0), (VOCAB, EMBED)),
            (self.vocab_size, self.features),
            jnp.float32,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...e,ve->...v", x, self.embedding.astype(self.dtype))


def _distance_buckets(num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each non-negative distance 0..max_distance (distances beyond share the last).

    Half the buckets hold distances exactly; the rest are logarithmic up to max_distance. The
    arithmetic is float32 as in the reference implementations, so boundaries agree bit for bit.
    """
    max_exact = num_buckets // 2
    n = np.arange(max_distance + 1)
    log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
    large = max_exact + (
        log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    ).astype(np.int32)
    return np.where(n < max_exact, n, np.minimum(large, num_buckets - 1)).astype(np.int32)


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> jax.Array:
    """Bucket ids for relative positions (key position minus query position).

    Bidirectional: half the buckets for keys after the query. Causal: keys after the query all
    fall in bucket 0 (they are masked anyway).
    """
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(relative_position > 0, num_buckets, 0)
        distance = jnp.abs(relative_position)
    else:
        offset = 0
        distance = jnp.maximum(-relative_position, 0)
    table = jnp.asarray(_distance_buckets(num_buckets, max_distance))
    return offset + table[jnp.minimum(distance, max_distance)]


class RelativePositionBias(nn.Module):
    """Per-head learned bias from bucketed relative positions, one table shared by a stack.

    query_positions [batch|1, q], key_positions [batch|1, k] -> bias [batch|1, heads, q, k]
    """

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), (HEADS, RELPOS_BUCKETS)
            ),
            (self.num_heads, self.num_buckets),
            jnp.float32,
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        bias = jnp.take(table, buckets, axis=1)  # [heads, batch, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3)).astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Dot-product attention without q.k scaling (T5 folds it into the query initialisation).

    inputs_q [batch, q, embed], inputs_kv [batch, k, embed], mask [batch|1, heads|1, q, k] bool,
    bias [batch|1, heads, q, k] -> [batch, q, embed].

    With decode=True (self-attention only) keys and values are written to a cache of the full
    decode length, at the next free positions (one per call, or a whole prompt); the caller
    supplies the mask and bias for those positions over the whole cache.
    """

    num_heads: int
    d_kv: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    lora: peft.LowRank | None = None

    def _kernel(self, name: str, shape, axes, stddev: float) -> jax.Array:
        kernel = self.param(name, nn.with_logical_partitioning(normal(stddev), axes), shape, jnp.float32)
        num_in = 2 if name == "out" else 1  # out: [heads, kv, embed]; the rest [embed, heads, kv]
        return peft.adapted_kernel(self, name, kernel, axes, num_in, self.lora).astype(self.dtype)

    @nn.compact
    def __call__(
        self,
        inputs_q,
        inputs_kv,
        mask,
        bias=None,
        *,
        deterministic: bool,
        decode: bool = False,
        decode_cross: bool = False,
    ):
        e, h, d = inputs_q.shape[-1], self.num_heads, self.d_kv
        qkv_axes = (EMBED, HEADS, KV)
        query = jnp.einsum("bqe,ehd->bqhd", inputs_q, self._kernel("query", (e, h, d), qkv_axes, (e * d) ** -0.5))
        query = constrain(query, (BATCH, LENGTH, HEADS, KV))
        key_kernel = self._kernel("key", (e, h, d), qkv_axes, e**-0.5)
        value_kernel = self._kernel("value", (e, h, d), qkv_axes, e**-0.5)

        def project(x):
            """[batch, kv_length, embed] -> keys and values [batch, heads, kv_length, kv]: heads ahead of
            positions, the layout the score and output products read (no transpose per decode step)."""
            key = jnp.swapaxes(jnp.einsum("bke,ehd->bkhd", x, key_kernel), 1, 2)
            value = jnp.swapaxes(jnp.einsum("bke,ehd->bkhd", x, value_kernel), 1, 2)
            return constrain(key, (BATCH, HEADS, LENGTH, KV)), constrain(value, (BATCH, HEADS, LENGTH, KV))

        if decode_cross:
            key, value = self._cross_cache(project, inputs_kv)
        else:
            key, value = project(inputs_kv)
        if decode:
            key, value = self._update_cache(key, value)

        with jax.named_scope("dot_product"):  # the score, softmax and value products, apart in profiles
            scores = jnp.einsum("bqhd,bhkd->bhqk", query, key).astype(jnp.float32)
            if bias is not None:
                scores = scores + bias.astype(jnp.float32)
            if mask is not None:
                scores = jnp.where(mask, scores, MASK_VALUE)
            weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            out = jnp.einsum("bhqk,bhkd->bqhd", weights, value)
        out = constrain(out, (BATCH, LENGTH, HEADS, KV))
        # One contraction over heads*kv: with two contracting axes XLA on CPU transposes the kernel
        # on every decoding step.
        out_kernel = self._kernel("out", (h, d, e), (HEADS, KV, EMBED), (h * d) ** -0.5)
        out = jnp.dot(out.reshape(out.shape[:2] + (h * d,)), out_kernel.reshape(h * d, e))
        return constrain(out, (BATCH, LENGTH, EMBED))

    def _cross_cache(self, project, inputs_kv):
        """Cross-attention keys and values while decoding: the encoder output does not change, so
        the cache-creating pass projects them once (models.init_decode_cache keeps them) and every
        decoding step reads them."""
        if not self.has_variable("cache", "cross_key"):
            key, value = project(inputs_kv)
            self.variable("cache", "cross_key", lambda: key)
            self.variable("cache", "cross_value", lambda: value)
            return key, value
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _update_cache(self, key, value):
        """On the cache-creating pass, allocate zeros; afterwards write one position per call."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return key, value
        # One token per call, or a prompt of several at once (decoder-only prefill).
        # The cache [batch, heads, length, kv] is laid out like the keys: rows over data, heads over model.
        index, axes = cache_index.value, (BATCH, HEADS, LENGTH, KV)
        cached_key.value = constrain(jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, index, 0)), axes)
        cached_value.value = constrain(jax.lax.dynamic_update_slice(cached_value.value, value, (0, 0, index, 0)), axes)
        cache_index.value = index + key.shape[2]
        return cached_key.value, cached_value.value


class MlpBlock(nn.Module):
    """Feed-forward block: act(x wi) wo, or act(x wi_0) * (x wi_1) wo when gated.

    [batch, length, embed] -> [batch, length, embed]
    """

    d_ff: int
    activation: str
    gated: bool
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    lora: peft.LowRank | None = None

    def _kernel(self, name, shape, axes):
        init = normal(shape[0] ** -0.5)
        kernel = self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)
        return peft.adapted_kernel(self, name, kernel, axes, 1, self.lora).astype(self.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        e = x.shape[-1]
        act = ACTIVATIONS[self.activation]
        if self.gated:
            hidden = act(x @ self._kernel("wi_0", (e, self.d_ff), (EMBED, MLP)))
            hidden = hidden * (x @ self._kernel("wi_1", (e, self.d_ff), (EMBED, MLP)))
        else:
            hidden = act(x @ self._kernel("wi", (e, self.d_ff), (EMBED, MLP)))
        hidden = constrain(hidden, (BATCH, LENGTH, MLP))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        out = hidden @ self._kernel("wo", (self.d_ff, e), (MLP, EMBED))
        return constrain(out, (BATCH, LENGTH, EMBED))


def make_attention_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """Attend only within the same non-zero segment (0 is padding); every query also attends to
    prompt tuning's prompt (keys of segment peft.PROMPT_SEGMENT), which attends only to itself.

    query_segments [batch, q], key_segments [batch, k] -> [batch, 1, q, k] bool
    """
    queries, keys = query_segments[:, :, None], key_segments[:, None, :]
    visible = (queries == keys) | (keys == peft.PROMPT_SEGMENT)
    return (visible & (queries != 0) & (keys != 0))[:, None]


def make_causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Key position <= query position. [batch|1, q], [batch|1, k] -> [batch|1, 1, q, k] bool"""
    return (key_positions[:, None, :] <= query_positions[:, :, None])[:, None]
