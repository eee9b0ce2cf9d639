"""Adafactor with T5X's defaults and the learning-rate schedules of the T5 paper."""

import jax.numpy as jnp
import optax

SCHEDULES = ("rsqrt", "constant")


def learning_rate_schedule(kind: str = "rsqrt", base_learning_rate: float = 1.0, warmup_steps: int = 10_000):
    """step -> learning rate.

    rsqrt: base / sqrt(max(step, warmup_steps)) (pretraining: 0.01 for the first 10^4 steps);
    constant: base (fine-tuning: 1e-3).
    """
    if kind == "rsqrt":
        if warmup_steps <= 0:
            raise ValueError(f"WARMUP_STEPS must be positive for the rsqrt schedule, got {warmup_steps}.")
        return lambda step: base_learning_rate * jnp.reciprocal(jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32),
                                                                                       warmup_steps)))
    if kind == "constant":
        return lambda step: jnp.asarray(base_learning_rate, jnp.float32)
    raise ValueError(f"Unknown learning-rate schedule {kind!r}; use one of {SCHEDULES}.")


def adafactor(learning_rate, *, decay_rate: float = 0.8, clipping_threshold: float | None = 1.0,
              multiply_by_parameter_scale: bool = True, momentum: float | None = None,
              min_dim_size_to_factor: int = 128) -> optax.GradientTransformation:
    """T5X's Adafactor: factored second moments with decay 1 - (step+1)^-0.8, update clipping at
    RMS 1.0, updates scaled by the parameter's RMS (at least 1e-3), no momentum."""
    return optax.adafactor(
        learning_rate=learning_rate, decay_rate=decay_rate, clipping_threshold=clipping_threshold,
        multiply_by_parameter_scale=multiply_by_parameter_scale, momentum=momentum,
        min_dim_size_to_factor=min_dim_size_to_factor, eps=1e-30, factored=True)
