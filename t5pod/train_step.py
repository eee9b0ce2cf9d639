"""The train and eval steps: pure functions of (state, batch, rng), jitted once by the trainer.

Batches are the model features, each [batch, length] int32: encoder_input_tokens,
decoder_input_tokens, decoder_target_tokens, decoder_loss_weights and, when packed,
encoder/decoder segment ids and positions (decoder-only models: the decoder features and
decoder_causal_attention). The model's input_features name the ones it reads.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any


def cross_entropy_with_z_loss(logits, targets, weights, z_loss: float, label_smoothing: float = 0.0):
    """Per-token cross entropy and z-loss (z_loss * log(Z)^2), summed over weighted tokens.

    logits [batch, length, vocab] float32, targets/weights [batch, length] -> (loss sum, z-loss sum)
    The loss sum includes the z-loss; with label smoothing it is shifted so that a perfect
    prediction of the smoothed distribution costs 0.
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20)) if label_smoothing else 0.0
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    soft_targets = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
    token_loss = -jnp.sum(soft_targets * log_probs, axis=-1) - entropy
    token_z = z_loss * jnp.square(log_z)
    return jnp.sum((token_loss + token_z) * weights), jnp.sum(token_z * weights)


def _loss_sums(params, batch, rng, *, model, z_loss, label_smoothing, enable_dropout):
    inputs = {k: batch[k] for k in model.input_features if k in batch}
    logits = model.apply(
        {"params": params}, **inputs, enable_dropout=enable_dropout, rngs={"dropout": rng} if enable_dropout else None
    )
    with jax.named_scope("cross_entropy"):
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        loss_sum, z_sum = cross_entropy_with_z_loss(
            logits, batch["decoder_target_tokens"], weights, z_loss, label_smoothing
        )
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["decoder_target_tokens"]) * weights)
    return loss_sum, {"loss_sum": loss_sum, "z_loss_sum": z_sum, "correct_sum": correct, "weight_sum": jnp.sum(weights)}


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    model,
    optimizer: optax.GradientTransformation,
    schedule: Callable,
    z_loss: float,
    label_smoothing: float = 0.0,
    num_microbatches: int = 1,
    loss_normalizing_factor: float | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step. rng is this step's key (the trainer passes fold_in(seed, step)).

    The loss optimised is the sum of token losses over the global batch divided by the number of
    real target tokens (or by loss_normalizing_factor when given), so gradients do not depend on
    how the batch is split into microbatches. Returned metrics are sums plus their denominator.
    """
    grad_fn = jax.grad(_loss_sums, has_aux=True)
    kwargs = dict(model=model, z_loss=z_loss, label_smoothing=label_smoothing, enable_dropout=True)
    if num_microbatches == 1:
        grads, sums = grad_fn(state.params, batch, rng, **kwargs)
    else:
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]), batch
        )

        def accumulate(carry, index_and_batch):
            index, microbatch = index_and_batch
            grads, sums = grad_fn(state.params, microbatch, jax.random.fold_in(rng, index), **kwargs)
            return jax.tree_util.tree_map(jnp.add, carry, (grads, sums)), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, (state.params, _zero_sums()))
        (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num_microbatches), micro))
    with jax.named_scope("optimizer"):
        normalizer = sums["weight_sum"] if loss_normalizing_factor is None else loss_normalizing_factor
        grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(normalizer, 1e-8), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
    metrics = {**sums, "learning_rate": schedule(state.step), "grad_norm": optax.global_norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _zero_sums():
    zero = jnp.zeros((), jnp.float32)
    return {"loss_sum": zero, "z_loss_sum": zero, "correct_sum": zero, "weight_sum": zero}


def eval_step(params, batch: dict, *, model, z_loss: float) -> dict:
    """Teacher-forced loss and accuracy sums on one batch (no dropout)."""
    _, sums = _loss_sums(params, batch, None, model=model, z_loss=z_loss, label_smoothing=0.0, enable_dropout=False)
    return sums


def summarize(sums: dict) -> dict:
    """Host side: per-token means from summed metrics."""
    weight = max(float(sums["weight_sum"]), 1e-8)
    summary = {
        "loss": float(sums["loss_sum"]) / weight,
        "z_loss": float(sums["z_loss_sum"]) / weight,
        "cross_entropy": (float(sums["loss_sum"]) - float(sums["z_loss_sum"])) / weight,
        "accuracy": float(sums["correct_sum"]) / weight,
        "target_tokens": int(sums["weight_sum"]),
    }
    for key in ("learning_rate", "grad_norm"):
        if key in sums:
            summary[key] = float(sums[key])
    return summary
