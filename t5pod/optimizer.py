"""Adafactor with T5X's defaults, the learning-rate schedules of the T5 paper, and the paper's
fine-tuning methods (adapters, gradual unfreezing) as optax parameter groups."""

import jax
import jax.numpy as jnp
import optax

from t5pod import peft
from t5pod.configs import SCHEDULES, TRAINABLE


def learning_rate_schedule(kind: str, base_learning_rate: float, warmup_steps: int = 0):
    """step -> learning rate.

    rsqrt: base / sqrt(max(step, warmup_steps)) (the paper's pretraining: base 1, 10^4 warm-up
    steps, so 0.01 for the first 10^4 steps); constant: base (the paper's fine-tuning: 1e-3).
    """
    if kind == "rsqrt":
        if warmup_steps <= 0:
            raise ValueError(f"WARMUP_STEPS must be positive for the rsqrt schedule, got {warmup_steps}.")
        return lambda step: (
            base_learning_rate * jnp.reciprocal(jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps)))
        )
    if kind == "constant":
        return lambda step: jnp.asarray(base_learning_rate, jnp.float32)
    raise ValueError(f"Unknown learning-rate schedule {kind!r}; use one of {SCHEDULES}.")


def adafactor(
    learning_rate,
    *,
    decay_rate: float = 0.8,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    momentum: float | None = None,
    min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformation:
    """T5X's Adafactor: factored second moments with decay 1 - (step+1)^-0.8, update clipping at
    RMS 1.0, updates scaled by the parameter's RMS (at least 1e-3), no momentum."""
    return optax.adafactor(
        learning_rate=learning_rate,
        decay_rate=decay_rate,
        clipping_threshold=clipping_threshold,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        momentum=momentum,
        min_dim_size_to_factor=min_dim_size_to_factor,
        eps=1e-30,
        factored=True,
    )


# Fine-tuning methods of the paper's §3.5.1, as optax parameter groups. A group that never
# trains gets optax.set_to_zero(), which keeps no state; each trained group its own Adafactor.


def _names(path) -> list[str]:
    return [str(getattr(k, "key", k)) for k in path]


def is_adapter_or_norm(path) -> bool:
    """Adapter layers and layer norms: what the paper trains in adapter fine-tuning."""
    names = _names(path)
    return "adapter" in names or any(n.endswith(("layer_norm", "_norm")) for n in names)


def _added_by(field: str):
    """Whether a parameter (by its path) is one the T5Config field's method adds (peft.ADDED_PARAMETERS)."""
    is_added = peft.ADDED_PARAMETERS[field][1]
    return lambda path: any(is_added(name) for name in _names(path))


# What each parameter-efficient TRAINABLE trains: (is a parameter trained, is it one the method
# adds, what they are and the setting that adds them).
METHODS = {
    "adapters": (
        is_adapter_or_norm,
        _added_by("adapter_dim"),
        "adapters; set t5pod.T5Config.adapter_dim (e.g. --gin_file=finetuning/adapters.gin)",
    ),
    "lora": (
        _added_by("lora_rank"),
        _added_by("lora_rank"),
        "LoRA updates; set t5pod.T5Config.lora_rank (e.g. --gin_file=finetuning/lora.gin)",
    ),
    "prompt": (
        _added_by("prompt_length"),
        _added_by("prompt_length"),
        "tuned prompt; set t5pod.T5Config.prompt_length (e.g. --gin_file=finetuning/prompt_tuning.gin)",
    ),
}


def layer_from_top(path, num_layers: dict[str, int]) -> int | None:
    """How far below its stack's top layer a parameter sits (0: the top layer), or None.

    num_layers: layers per stack name ("encoder", "decoder", "shared"; "" for a model whose
    parameters are one stack at the top level, the decoder-only ones). Final norms count as
    the top layer; a stack's relative position table as its bottom layer (layer 0 owns it in
    the reference); embeddings and the output layer belong to no layer.
    """
    names = _names(path)
    stack = "shared" if names[0].startswith("shared_layers_") else names[0] if names[0] in num_layers else ""
    if stack not in num_layers:
        return None
    top = num_layers[stack] - 1
    for name in names:
        if name.startswith(("layers_", "shared_layers_")):
            return top - int(name.rsplit("_", 1)[1])
        if name == "layers":
            raise ValueError(
                "Gradual unfreezing needs one parameter set per layer; set t5pod.T5Config.scan_layers = False."
            )
        if name.endswith("_norm"):
            return 0
        if name == "relpos_bias":
            return top
    return None


def _start_at(inner: optax.GradientTransformation, start_step: int) -> optax.GradientTransformation:
    """inner, frozen (zero updates, state untouched) before its own step count reaches start_step."""

    def init(params):
        return jnp.zeros((), jnp.int32), inner.init(params)

    def update(updates, state, params=None):
        count, inner_state = state
        new_updates, new_state = inner.update(updates, inner_state, params)
        active = count >= start_step
        new_updates = jax.tree_util.tree_map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), new_state, inner_state)
        return new_updates, (count + 1, new_state)

    return optax.GradientTransformation(init, update)


def fine_tuning_optimizer(
    make_inner, params, *, trainable: str = "all", unfreeze_every: int = 0, num_layers: dict[str, int] | None = None
) -> optax.GradientTransformation:
    """The optimizer make_inner() gives, restricted to the parameters the method trains.

    trainable='adapters': only adapters and layer norms train (paper §3.5.1); 'lora' only LoRA
    updates, 'prompt' only the tuned prompt (t5pod.peft). unfreeze_every > 0:
    gradual unfreezing, the top layer of each stack (with embeddings and the output layer) from
    the start and one more layer every unfreeze_every steps, encoder and decoder in parallel.
    """
    if trainable not in TRAINABLE:
        raise ValueError(f"Unknown TRAINABLE {trainable!r}; use one of {TRAINABLE}.")
    if trainable == "all" and not unfreeze_every:
        return make_inner()
    if trainable != "all" and unfreeze_every:
        raise ValueError(f"TRAINABLE={trainable!r} and gradual unfreezing are separate fine-tuning methods; pick one.")
    if trainable in METHODS:
        is_trained, is_added, setting = METHODS[trainable]
        if not any(is_added(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)):
            raise ValueError(f"TRAINABLE={trainable!r} but the model has no {setting}.")
        labels = jax.tree_util.tree_map_with_path(lambda path, _: "train" if is_trained(path) else "frozen", params)
        # Adafactor scales each update by its parameter's RMS (at least 1e-3): a LoRA B factor starts
        # at zero and would move a thousandth of the learning rate per step, so LoRA and the prompt
        # train with absolute steps, as Lester et al. train prompts ("parameter scaling off").
        inner = make_inner() if trainable == "adapters" else make_inner(multiply_by_parameter_scale=False)
        return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels)
    depth = jax.tree_util.tree_map_with_path(lambda path, _: layer_from_top(path, num_layers) or 0, params)
    groups = sorted(set(jax.tree_util.tree_leaves(depth)))
    labels = jax.tree_util.tree_map(lambda d: f"unfrozen_at_{d * unfreeze_every}", depth)
    return optax.multi_transform(
        {f"unfrozen_at_{d * unfreeze_every}": _start_at(make_inner(), d * unfreeze_every) for d in groups}, labels
    )


def for_run(
    schedule, params, *, trainable: str, gradual_unfreezing: bool, train_steps: int, num_layers: dict[str, int]
) -> optax.GradientTransformation:
    """A run's optimizer: Adafactor on `schedule`, restricted to what the fine-tuning method trains.
    Gradual unfreezing spreads the layers over train_steps in equal episodes, one per layer of the
    deepest stack (num_layers: layers per stack)."""
    unfreeze_every = -(-train_steps // max(num_layers.values())) if gradual_unfreezing else 0
    return fine_tuning_optimizer(
        lambda **options: adafactor(schedule, **options),
        params,
        trainable=trainable,
        unfreeze_every=unfreeze_every,
        num_layers=num_layers,
    )
