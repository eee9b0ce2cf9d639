"""Parameter-efficient fine-tuning beyond the paper's adapters: LoRA and prompt tuning.

LoRA (Hu et al. 2021): a projection kernel W [*in, *out] of a frozen model becomes
W + (alpha / rank) * A @ B with A [*in, rank] (normal) and B [rank, *out] (zeros), so the model at
step 0 is exactly the frozen one; only A and B train. The update is added to the kernel before
it is used (one small product a layer), so decoding, sharding and the merged export see one
kernel.

Prompt tuning (Lester et al. 2021): prompt_length learned vectors [prompt, embed] are prepended
to the encoder's input. They sit at positions -prompt_length..-1 in a segment of their own
(PROMPT_SEGMENT): every example token, and every decoder token through cross-attention, attends
to them as to the start of its own example, and the prompt positions attend only to each other,
so that one copy serves every example packed into a row (in Lester et al.'s unpacked model the
prompt positions also attend to the example's tokens).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from t5pod.configs import T5Config
from t5pod.partitioning import EMBED, LORA_RANK, PROMPT

# The feed-forward block's kernels, which the LoRA target 'mlp' adapts.
MLP_KERNELS = ("wi", "wi_0", "wi_1", "wo")
# The segment id of the prompt positions (example segments are 1, 2, ...; padding is 0).
PROMPT_SEGMENT = -1
# Lester et al. initialise each prompt vector from the embedding of a token drawn from the 5,000
# most frequent; SentencePiece numbers pieces by score, so these are the lowest ids after the
# control pieces (0 pad, 1 eos, 2 unk).
PROMPT_INIT_IDS = (3, 5000)


@dataclasses.dataclass(frozen=True)
class LowRank:
    """The LoRA update of a module's kernels: rank, alpha / rank, and the projections it adapts."""

    rank: int
    scale: float
    targets: tuple

    def adapts(self, kernel_name: str) -> bool:
        return kernel_name in self.targets or ("mlp" in self.targets and kernel_name in MLP_KERNELS)


def low_rank(cfg) -> LowRank | None:
    """The model config's LoRA update, or None without one."""
    if not cfg.lora_rank:
        return None
    alpha = cfg.lora_alpha or cfg.lora_rank
    return LowRank(cfg.lora_rank, alpha / cfg.lora_rank, tuple(cfg.lora_targets))


def adapted_kernel(module: nn.Module, name: str, kernel, axes: tuple, num_in: int, lora: LowRank | None):
    """kernel [*in, *out] (its first num_in axes the inputs), plus module's LoRA update when lora
    adapts `name`. The update's factors share their base kernel's logical axes, so they shard
    with it: A [*in, rank], B [rank, *out]."""
    if lora is None or not lora.adapts(name):
        return kernel
    shape_in, shape_out = kernel.shape[:num_in], kernel.shape[num_in:]
    fan_in = int(np.prod(shape_in))
    a = module.param(
        f"{name}_lora_a",
        nn.with_logical_partitioning(nn.initializers.normal(fan_in**-0.5), (*axes[:num_in], LORA_RANK)),
        (*shape_in, lora.rank),
        jnp.float32,
    )
    b = module.param(
        f"{name}_lora_b",
        nn.with_logical_partitioning(nn.initializers.zeros, (LORA_RANK, *axes[num_in:])),
        (lora.rank, *shape_out),
        jnp.float32,
    )
    return kernel + (lora.scale * jnp.tensordot(a, b, axes=1)).astype(kernel.dtype)


def is_lora(name: str) -> bool:
    return name.endswith(("_lora_a", "_lora_b"))


def merge_low_rank(params: dict, cfg) -> dict:
    """params with every LoRA update added into its kernel and the factors dropped: the same
    function with the architecture of a model without LoRA (for export-hf)."""
    lora = low_rank(cfg)
    if lora is None:
        return params
    flat = traverse_util.flatten_dict(params)
    merged = {}
    for path, value in flat.items():
        if is_lora(path[-1]):
            continue
        a = flat.get((*path[:-1], f"{path[-1]}_lora_a"))
        if a is not None:
            b = flat[(*path[:-1], f"{path[-1]}_lora_b")]
            value = np.asarray(value) + lora.scale * np.tensordot(np.asarray(a), np.asarray(b), axes=1)
        merged[path] = value
    return traverse_util.unflatten_dict(merged)


def prompt_vectors(module: nn.Module, prompt_length: int, features: int):
    """The learned prompt [prompt, embed] (normal like the token embedding until a pre-trained
    checkpoint's embeddings initialise it: checkpoints.read_initial_params)."""
    return module.param(
        "prompt",
        nn.with_logical_partitioning(nn.initializers.normal(1.0), (PROMPT, EMBED)),
        (prompt_length, features),
        jnp.float32,
    )


def prompt_segment_ids(prompt_length: int, segment_ids):
    """[batch, length] -> [batch, prompt + length]: the prompt's positions first, PROMPT_SEGMENT."""
    prompt = jnp.full((segment_ids.shape[0], prompt_length), PROMPT_SEGMENT, segment_ids.dtype)
    return jnp.concatenate([prompt, segment_ids], axis=1)


def prompt_positions(prompt_length: int, positions):
    """[batch, length] -> [batch, prompt + length]: the prompt at -prompt..-1, before every example."""
    prompt = jnp.broadcast_to(jnp.arange(-prompt_length, 0, dtype=positions.dtype), (positions.shape[0], prompt_length))
    return jnp.concatenate([prompt, positions], axis=1)


def prompt_init_ids(vocab_size: int, prompt_length: int, seed: int = 0) -> np.ndarray:
    """Lester et al.'s choice of tokens: prompt_length distinct ids drawn from PROMPT_INIT_IDS (the
    most frequent pieces), or from every non-control piece when the vocabulary is smaller."""
    low, high = PROMPT_INIT_IDS[0], min(PROMPT_INIT_IDS[1], vocab_size)
    return np.random.default_rng(seed).choice(np.arange(low, high), prompt_length, replace=prompt_length > high - low)


def prompt_from_embeddings(embedding, prompt_length: int, sharding=None):
    """The prompt [prompt, embed] initialised from embedding [vocab, embed] (prompt_init_ids' rows),
    laid out as sharding says (a multi-host array is never gathered to one host)."""
    ids = prompt_init_ids(embedding.shape[0], prompt_length)
    return jax.jit(lambda e: e[ids], out_shardings=sharding)(embedding)


# The parameters a fine-tuning method adds to a pre-trained model, which its checkpoint lacks:
# the T5Config field that adds them, the T5Config fields of the model without them, and whether a
# parameter name (at any depth of the tree) is one of them.
ADDED_PARAMETERS = {
    "adapter_dim": ({"adapter_dim": 0}, lambda name: name == "adapter"),
    "lora_rank": ({"lora_rank": 0, "lora_targets": T5Config.lora_targets}, is_lora),
    "prompt_length": ({"prompt_length": 0}, lambda name: name == "prompt"),
}


def without_added(tree, is_added):
    """tree without the entries (at any depth) whose name is_added."""
    if not isinstance(tree, dict):
        return tree
    return {k: without_added(v, is_added) for k, v in tree.items() if not is_added(k)}
