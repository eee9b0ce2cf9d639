"""The T5 model configuration: one frozen dataclass, field names as in the reference."""

import dataclasses
from typing import Any

import jax.numpy as jnp

# feed_forward_proj values: (gated, activation). 'gated-gelu' is T5 1.1, 'relu' is T5 1.0.
FEED_FORWARD_PROJECTIONS = {
    "relu": (False, "relu"),
    "gelu": (False, "gelu"),
    "gated-gelu": (True, "gelu"),
    "gated-relu": (True, "relu"),
    "gated-silu": (True, "silu"),
}
REMAT_POLICIES = ("none", "full", "save_dots")
# The architectures of the T5 paper's §3.2 comparison (Figure 4 and Table 2). A "half-layers"
# encoder-decoder is "encoder_decoder" with num_layers and num_decoder_layers halved.
ARCHITECTURES = (
    "encoder_decoder",          # the T5 model: fully visible encoder, causal decoder with cross-attention
    "shared_encoder_decoder",   # the same, with each decoder layer reusing its encoder layer's weights
    "decoder_only",             # a language model: one causal stack over inputs and targets concatenated
    "prefix_lm",                # one stack, fully visible over the inputs part, causal over the targets
)


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder-decoder.

    tie_word_embeddings=True is T5 1.0: the output layer is the token embedding and logits are
    scaled by d_model**-0.5. False is T5 1.1: a separate output layer, no scaling.
    vocab_size is the embedding size (the T5 vocabulary's 32100 ids padded to 32128).
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_heads: int = 8
    num_layers: int = 6
    num_decoder_layers: int | None = None
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    architecture: str = "encoder_decoder"
    # Paper §3.5.1: >0 adds an adapter (dense-ReLU-dense of this inner width, with a residual)
    # after every feed-forward block; fine-tune with TrainConfig.trainable = 'adapters'.
    adapter_dim: int = 0
    layer_norm_epsilon: float = 1e-6
    # Scale options: they change speed and memory, never the function computed.
    dtype: str = "float32"  # activations and matmuls; parameters stay float32
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        if self.feed_forward_proj not in FEED_FORWARD_PROJECTIONS:
            raise ValueError(
                f"Unknown feed_forward_proj {self.feed_forward_proj!r}; "
                f"use one of {sorted(FEED_FORWARD_PROJECTIONS)}."
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat_policy {self.remat_policy!r}; use one of {REMAT_POLICIES}.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"Unknown dtype {self.dtype!r}; use 'float32' or 'bfloat16'.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; use one of {ARCHITECTURES}.")
        if self.architecture == "shared_encoder_decoder":
            if self.decoder_layers != self.num_layers:
                raise ValueError("architecture='shared_encoder_decoder' shares each encoder layer with the decoder "
                                 f"layer of the same index, so num_decoder_layers ({self.decoder_layers}) must equal "
                                 f"num_layers ({self.num_layers}).")
            if self.scan_layers or self.remat_policy != "none":
                raise ValueError("architecture='shared_encoder_decoder' runs unrolled layers only; set "
                                 "scan_layers=False and remat_policy='none'.")
        if self.adapter_dim < 0:
            raise ValueError(f"T5Config.adapter_dim must be 0 (no adapters) or positive, got {self.adapter_dim}.")
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}.")

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def is_decoder_only(self) -> bool:
        """One stack over inputs and targets concatenated (seqio's PrefixLM features)."""
        return self.architecture in ("decoder_only", "prefix_lm")

    @property
    def is_gated(self) -> bool:
        return FEED_FORWARD_PROJECTIONS[self.feed_forward_proj][0]

    @property
    def activation(self) -> str:
        return FEED_FORWARD_PROJECTIONS[self.feed_forward_proj][1]

    @property
    def activation_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # Fields that decide parameter shapes; a checkpoint is only compatible when these agree.
    ARCHITECTURE_FIELDS = (
        "vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers",
        "feed_forward_proj", "tie_word_embeddings", "relative_attention_num_buckets", "scan_layers",
        "architecture", "adapter_dim",
    )
    # What checkpoints written before a field existed mean by its absence.
    ARCHITECTURE_DEFAULTS = {"architecture": "encoder_decoder", "adapter_dim": 0}

    def checkpoint_fields(self) -> dict:
        """The ARCHITECTURE_FIELDS values, saved with every checkpoint as its `architecture`."""
        arch = {name: getattr(self, name) for name in self.ARCHITECTURE_FIELDS}
        arch["num_decoder_layers"] = self.decoder_layers
        return arch
