"""Decoding on the model's cache: greedy, temperature/top-k sampling and beam search, and scoring.

The encoder runs once (decoder-only models: the prompt is written to the cache in one pass);
the decoder runs one token per step on cached keys and values, inside a jax.lax.while_loop, so a
whole batch decodes in one compiled program. Token ids: 0 is both
padding and the decoder's start token, 1 is EOS.
"""

import jax
import jax.numpy as jnp

from t5pod import models

EOS = 1
NEG_INF = -1.0e7


def length_penalty(length, alpha: float):
    """((5 + length) / 6) ** alpha, as in the T5 and GNMT papers."""
    return ((5.0 + length) / 6.0) ** alpha


def choose_tokens(logits, rng, temperature: float = 0.0, top_k: int = 0):
    """The next token of each row. logits [rows, vocab] -> ids [rows].

    temperature 0: the most likely token; > 0: a draw from softmax(logits / temperature),
    restricted to the top_k most likely tokens when top_k > 0.
    """
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1)
    scaled = logits / temperature
    if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, NEG_INF, scaled)
    return jax.random.categorical(rng, scaled)


def sample_decode(
    model, params, encoder_input_tokens, max_decode_length: int, rng=None, temperature: float = 0.0, top_k: int = 0
):
    """Greedy (temperature 0) or sampled decoding.

    encoder_input_tokens [batch, length_in] -> (tokens [batch, max_decode_length], log-prob sums [batch]);
    tokens hold the EOS that ended a sequence and zeros after it.
    """
    batch = encoder_input_tokens.shape[0]
    step, logits, cache = models.begin_decoding(model, params, encoder_input_tokens, max_decode_length)
    rng = jax.random.PRNGKey(0) if rng is None else rng

    def choose(i, tokens, done, scores, logits):
        """Writes position i's token; rows already done get padding."""
        log_probs = jax.nn.log_softmax(logits)
        chosen = choose_tokens(logits, jax.random.fold_in(rng, i), temperature, top_k)
        chosen = jnp.where(done, 0, chosen).astype(jnp.int32)
        scores = scores + jnp.where(done, 0.0, jnp.take_along_axis(log_probs, chosen[:, None], -1)[:, 0])
        return chosen, tokens.at[:, i].set(chosen), done | (chosen == EOS), scores

    def body(state):
        i, tokens, cache, done, scores, logits = state
        chosen, tokens, done, scores = choose(i, tokens, done, scores, logits)
        logits, cache = step(chosen, cache)
        return i + 1, tokens, cache, done, scores, logits

    def cond(state):
        i, _, _, done, _, _ = state
        return (i < max_decode_length - 1) & ~jnp.all(done)

    tokens = jnp.zeros((batch, max_decode_length), jnp.int32)
    init = (
        jnp.zeros((), jnp.int32),
        tokens,
        cache,
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.float32),
        logits,
    )
    # The last position is chosen after the loop: no decoder step runs for logits nobody reads.
    i, tokens, _, done, scores, logits = jax.lax.while_loop(cond, body, init)
    _, tokens, _, scores = choose(i, tokens, done, scores, logits)
    return tokens, scores


def _gather_cache(cache, indices, batch, beams):
    """The cache's per-beam arrays have batch*beams rows (scanned layers: on axis 1)."""

    def gather(path, x):
        name = getattr(path[-1], "key", None)
        if name in ("cache_index", "step", "key_positions") or x.ndim == 0:
            return x
        axis = 1 if "layers" in [getattr(p, "key", None) for p in path] else 0  # scanned: [layers, rows, ...]
        moved = jnp.moveaxis(x, axis, 0)
        grouped = moved.reshape((batch, beams) + moved.shape[1:])
        picked = jnp.take_along_axis(grouped, indices.reshape(indices.shape + (1,) * (grouped.ndim - 2)), axis=1)
        return jnp.moveaxis(picked.reshape(moved.shape), 0, axis)

    return jax.tree_util.tree_map_with_path(gather, cache)


def beam_search(model, params, encoder_input_tokens, max_decode_length: int, beam_size: int = 4, alpha: float = 0.6):
    """Beam search with length penalty ((5 + len) / 6) ** alpha (len counts the EOS).

    encoder_input_tokens [batch, length_in] -> (tokens [batch, beams, max_decode_length],
    scores [batch, beams]) sorted best first; a score is the sequence's log-likelihood divided
    by its length penalty. Sequences that never reach EOS are scored at full length.
    """
    batch, k = encoder_input_tokens.shape[0], beam_size
    repeated_inputs = jnp.repeat(encoder_input_tokens, k, axis=0)
    step, logits, cache = models.begin_decoding(model, params, repeated_inputs, max_decode_length)
    length = max_decode_length

    def body(state):
        i, alive, alive_lp, finished, finished_scores, cache, logits = state
        vocab = logits.shape[-1]
        candidate_lp = alive_lp[:, :, None] + jax.nn.log_softmax(logits).reshape(batch, k, vocab)
        flat = candidate_lp.reshape(batch, k * vocab)
        top_lp, top_index = jax.lax.top_k(flat, 2 * k)  # enough to keep k alive after EOS ends some
        beam_of, token_of = top_index // vocab, top_index % vocab
        sequences = jnp.take_along_axis(alive, beam_of[:, :, None], axis=1).at[:, :, i].set(token_of)
        ends = token_of == EOS
        # Finished: candidates that just emitted EOS, merged with the ones already finished.
        new_scores = jnp.where(ends, top_lp / length_penalty(i + 1.0, alpha), NEG_INF)
        all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        all_sequences = jnp.concatenate([finished, sequences], axis=1)
        finished_scores, keep = jax.lax.top_k(all_scores, k)
        finished = jnp.take_along_axis(all_sequences, keep[:, :, None], axis=1)
        # Alive: the best k candidates that did not end.
        alive_lp_candidates = jnp.where(ends, NEG_INF, top_lp)
        alive_lp, keep = jax.lax.top_k(alive_lp_candidates, k)
        alive = jnp.take_along_axis(sequences, keep[:, :, None], axis=1)
        cache = _gather_cache(cache, jnp.take_along_axis(beam_of, keep, axis=1), batch, k)
        logits, cache = step(alive[:, :, i].reshape(-1), cache)
        return i + 1, alive, alive_lp, finished, finished_scores, cache, logits

    def cond(state):
        i, _, alive_lp, _, finished_scores, _, _ = state
        # Stop early once no alive beam can beat the worst finished one even at full length.
        best_possible = alive_lp[:, 0] / length_penalty(float(length), alpha)
        done = jnp.all(finished_scores[:, -1] > best_possible) if alpha >= 0 else False
        return (i < length) & ~done

    alive = jnp.zeros((batch, k, length), jnp.int32)
    alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    finished = jnp.zeros((batch, k, length), jnp.int32)
    finished_scores = jnp.full((batch, k), NEG_INF, jnp.float32)
    state = (jnp.zeros((), jnp.int32), alive, alive_lp, finished, finished_scores, cache, logits)
    _, alive, alive_lp, finished, finished_scores, _, _ = jax.lax.while_loop(cond, body, state)
    # Beams that never finished compete at full length.
    alive_scores = alive_lp / length_penalty(float(length), alpha)
    scores = jnp.concatenate([finished_scores, alive_scores], axis=1)
    sequences = jnp.concatenate([finished, alive], axis=1)
    scores, keep = jax.lax.top_k(scores, k)
    return jnp.take_along_axis(sequences, keep[:, :, None], axis=1), scores


def score(model, params, batch: dict):
    """Sum of log-probabilities of each row's target tokens (EOS included). -> [batch]

    batch: the model's features; decoder_loss_weights (decoder-only: 1 on the targets part)
    default to the non-padding targets.
    """
    logits = model.apply({"params": params}, **{k: batch[k] for k in model.input_features if k in batch})
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    targets = batch["decoder_target_tokens"]
    token_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    weights = batch.get("decoder_loss_weights", targets > 0)
    return jnp.sum(token_lp * weights, axis=-1)


def strip_after_eos(ids) -> list[int]:
    """Every generated token id before the first EOS (pad ids the model generated included)."""
    out = []
    for token in ids:
        token = int(token)
        if token == EOS:
            break
        out.append(token)
    return out
