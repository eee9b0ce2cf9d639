"""Every configuration of t5pod as a frozen dataclass: the model (T5Config, field names as in
the reference), a training run (TrainConfig) and inference (InferConfig).

Gin binds these from one place (t5pod.ginconf); library code takes the plain instances. No JAX
here, so the configs can be read and checked before any accelerator is touched.
"""

import dataclasses
import importlib.resources
import pathlib
import re
from typing import Any

import ml_dtypes
import numpy as np

# feed_forward_proj values: (gated, activation). 'gated-gelu' is T5 1.1, 'relu' is T5 1.0.
FEED_FORWARD_PROJECTIONS = {
    "relu": (False, "relu"),
    "gelu": (False, "gelu"),
    "gated-gelu": (True, "gelu"),
    "gated-relu": (True, "relu"),
    "gated-silu": (True, "silu"),
}
# A process of a multi-host job that stops answering is declared dead after this long; the
# others then fail instead of waiting forever in a collective.
DEFAULT_HEARTBEAT_TIMEOUT_S = 30
# Gradient checkpointing of each layer: none; full (recompute everything in the backward pass);
# save_dots (keep the results of matmuls without batch dimensions, recompute the rest).
REMAT_POLICIES = ("none", "full", "save_dots")
# Activation and matmul dtypes; parameters stay float32.
DTYPES = {"float32": np.dtype("float32"), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype("float16")}
# The architectures of the T5 paper's §3.2 comparison (Figure 4 and Table 2). A "half-layers"
# encoder-decoder is "encoder_decoder" with num_layers and num_decoder_layers halved.
ARCHITECTURES = (
    "encoder_decoder",  # the T5 model: fully visible encoder, causal decoder with cross-attention
    "shared_encoder_decoder",  # the same, with each decoder layer reusing its encoder layer's weights
    "decoder_only",  # a language model: one causal stack over inputs and targets concatenated
    "prefix_lm",  # one stack, fully visible over the inputs part, causal over the targets
)


def shipped_gin_dir() -> str:
    """The folder of the shipped gin files: the package resource t5pod/gin of an installed wheel, or
    gin/ at the top of a source checkout (an editable install)."""
    installed = importlib.resources.files("t5pod") / "gin"
    if installed.is_dir():
        return str(installed)
    return str(pathlib.Path(__file__).resolve().parent.parent / "gin")


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
                f"Unknown feed_forward_proj {self.feed_forward_proj!r}; use one of {sorted(FEED_FORWARD_PROJECTIONS)}."
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat_policy {self.remat_policy!r}; use one of {REMAT_POLICIES}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; use one of {tuple(DTYPES)}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; use one of {ARCHITECTURES}.")
        if self.architecture == "shared_encoder_decoder":
            if self.decoder_layers != self.num_layers:
                raise ValueError(
                    "architecture='shared_encoder_decoder' shares each encoder layer with the decoder "
                    f"layer of the same index, so num_decoder_layers ({self.decoder_layers}) must equal "
                    f"num_layers ({self.num_layers})."
                )
            if self.scan_layers or self.remat_policy != "none":
                raise ValueError(
                    "architecture='shared_encoder_decoder' runs unrolled layers only; set "
                    "scan_layers=False and remat_policy='none'."
                )
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
        return DTYPES[self.dtype]

    # Fields that decide parameter shapes; a checkpoint is only compatible when these agree.
    ARCHITECTURE_FIELDS = (
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_heads",
        "num_layers",
        "num_decoder_layers",
        "feed_forward_proj",
        "tie_word_embeddings",
        "relative_attention_num_buckets",
        "scan_layers",
        "architecture",
        "adapter_dim",
    )
    # What checkpoints written before a field existed mean by its absence.
    ARCHITECTURE_DEFAULTS = {"architecture": "encoder_decoder", "adapter_dim": 0}

    def checkpoint_fields(self) -> dict:
        """The ARCHITECTURE_FIELDS values, saved with every checkpoint as its `architecture`."""
        arch = {name: getattr(self, name) for name in self.ARCHITECTURE_FIELDS}
        arch["num_decoder_layers"] = self.decoder_layers
        return arch


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model. Gin binds it from the run macros."""

    model_dir: str
    mixture_or_task_name: str
    task_feature_lengths: dict
    train_steps: int
    batch_size: int
    learning_rate: float = 1.0
    schedule: str = "rsqrt"
    warmup_steps: int = 10_000
    checkpoint_period: int = 1000
    keep_checkpoints: int | None = None
    log_period: int = 100
    eval_period: int = 0  # 0: no evaluation during training
    eval_steps: int = 20
    eval_split: str = "validation"
    initial_checkpoint_path: str | None = None
    # Regular expressions over parameter paths ('decoder/.*'): the parameters they match fully keep
    # their fresh initialisation instead of the initial checkpoint's (T5X's assignment_map to None).
    initial_checkpoint_skip: tuple = ()
    mesh_shape: tuple = (-1, 1)
    fsdp: bool = False
    random_seed: int = 0
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    num_microbatches: int = 1
    loss_normalizing_factor: float | None = None
    pack: bool = True
    use_cached: bool = False
    # Paper §3.5.1 fine-tuning methods: 'adapters' trains only adapters and layer norms;
    # gradual_unfreezing unfreezes one layer per stack (from the top) in equal episodes.
    trainable: str = "all"
    gradual_unfreezing: bool = False
    async_checkpointing: bool = True
    # Resuming with another batch size, feature lengths or mixture invalidates the saved input
    # position; True continues from the checkpoint with the input stream restarted from its seed.
    restart_data_stream: bool = False
    # A run holds MODEL_DIR through a lease file; a killed run's lease expires after this long.
    lease_timeout_s: float = 120.0
    # At each eval_period, also decode the evaluation split of every task with metrics (greedy,
    # targets-length tokens) and report the task's metrics, as T5X's inference evaluation does.
    inference_eval: bool = False
    inference_eval_examples: int | None = None  # per task; None: the whole split

    def __post_init__(self):
        _check_lengths(self.task_feature_lengths, ("inputs", "targets"))
        _check_positive(
            self,
            "train_steps",
            "batch_size",
            "checkpoint_period",
            "log_period",
            "eval_steps",
            "num_microbatches",
            "lease_timeout_s",
        )
        _check_positive(self, "learning_rate")
        _check_not_negative(self, "warmup_steps", "eval_period", "z_loss", "label_smoothing")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(
                f"KEEP_CHECKPOINTS must be at least 1 (None keeps all), got {self.keep_checkpoints}: "
                "0 would delete every checkpoint of the run."
            )
        if self.label_smoothing >= 1:
            raise ValueError(f"LABEL_SMOOTHING must be in [0, 1), got {self.label_smoothing}.")
        if self.loss_normalizing_factor is not None and self.loss_normalizing_factor <= 0:
            raise ValueError(f"LOSS_NORMALIZING_FACTOR must be positive (or None), got {self.loss_normalizing_factor}.")
        _check_mesh_shape(self.mesh_shape)
        if self.inference_eval_examples is not None and self.inference_eval_examples < 1:
            raise ValueError(
                f"INFERENCE_EVAL_EXAMPLES must be positive (None: the whole split), got {self.inference_eval_examples}."
            )
        if not self.model_dir:
            raise ValueError("MODEL_DIR is empty; set --gin.MODEL_DIR=\"'/path/to/run'\".")
        if isinstance(self.initial_checkpoint_skip, str):
            raise ValueError(
                f"INITIAL_CHECKPOINT_SKIP is a list of patterns, e.g. ['decoder/.*'], not the string "
                f"{self.initial_checkpoint_skip!r}."
            )
        if self.initial_checkpoint_skip and not self.initial_checkpoint_path:
            raise ValueError(
                "INITIAL_CHECKPOINT_SKIP names parameters to leave out of INITIAL_CHECKPOINT_PATH, which is not set."
            )
        for pattern in self.initial_checkpoint_skip:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"INITIAL_CHECKPOINT_SKIP pattern {pattern!r} is not a regular expression: {error}."
                ) from None


@dataclasses.dataclass(frozen=True)
class InferConfig:
    """Decoding and scoring from a checkpoint. Gin binds it from gin/runs/infer.gin.

    Lengths come from the task's TASK_FEATURE_LENGTHS, as in T5X: inputs are cut to
    task_feature_lengths['inputs'], scored targets to ['targets'], and decoding runs for
    max_decode_length tokens (default: the targets length).
    """

    checkpoint_path: str
    task_feature_lengths: dict = dataclasses.field(default_factory=lambda: {"inputs": 512, "targets": 128})
    batch_size: int = 8
    max_decode_length: int | None = None
    beam_size: int = 1  # 1: greedy (or sampling with temperature > 0)
    alpha: float = 0.6
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    mesh_shape: tuple = (-1, 1)  # (data, model), as for training: the decode batch is split over data
    fsdp: bool = False

    def __post_init__(self):
        _check_lengths(self.task_feature_lengths, ("inputs", "targets"))
        _check_mesh_shape(self.mesh_shape)
        if self.max_decode_length is None:
            object.__setattr__(self, "max_decode_length", int(self.task_feature_lengths["targets"]))
        _check_positive(self, "batch_size", "max_decode_length", "beam_size")
        _check_not_negative(self, "alpha", "temperature", "top_k")

    @property
    def input_length(self) -> int:
        return int(self.task_feature_lengths["inputs"])

    @property
    def target_length(self) -> int:
        """The longest target kept for scoring."""
        return int(self.task_feature_lengths["targets"])


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `eval` scores: the tasks of mixture_or_task_name that have metrics, on their `split`.
    Gin binds it from gin/runs/eval.gin; the checkpoint, batch and mesh are its InferConfig's."""

    mixture_or_task_name: str
    split: str = "validation"
    output_dir: str | None = None  # eval_metrics.jsonl, inference_eval/ and TensorBoard; None: the checkpoint's folder
    use_cached: bool = False  # read the tasks' seqio caches

    def __post_init__(self):
        if not self.mixture_or_task_name:
            raise ValueError("MIXTURE_OR_TASK_NAME must name the task or mixture to evaluate.")
        if not self.split:
            raise ValueError("EVAL_SPLIT must name a split, e.g. 'validation'.")


# Macro names of the fields, for error messages (the run gin files bind each field from its macro).
_MACROS = {
    "train_steps": "TRAIN_STEPS",
    "batch_size": "BATCH_SIZE (INFER_BATCH_SIZE for infer and eval)",
    "checkpoint_period": "CHECKPOINT_PERIOD",
    "log_period": "LOG_PERIOD",
    "eval_steps": "EVAL_STEPS",
    "num_microbatches": "NUM_MICROBATCHES",
    "learning_rate": "LEARNING_RATE",
    "warmup_steps": "WARMUP_STEPS",
    "eval_period": "EVAL_PERIOD",
    "z_loss": "Z_LOSS",
    "label_smoothing": "LABEL_SMOOTHING",
    "max_decode_length": "MAX_DECODE_LENGTH",
    "beam_size": "BEAM_SIZE",
    "alpha": "ALPHA",
    "temperature": "TEMPERATURE",
    "top_k": "TOP_K",
}


def _name(field: str) -> str:
    return _MACROS.get(field, field)


def _check_mesh_shape(mesh_shape):
    if len(mesh_shape) != 2 or any(int(n) == 0 or int(n) < -1 for n in mesh_shape):
        raise ValueError(f"MESH_SHAPE must be (data, model) with positive sizes or -1, got {mesh_shape}.")


def _check_positive(config, *fields):
    for field in fields:
        value = getattr(config, field)
        if value <= 0:
            raise ValueError(f"{_name(field)} must be positive, got {value}.")


def _check_not_negative(config, *fields):
    for field in fields:
        value = getattr(config, field)
        if value < 0:
            raise ValueError(f"{_name(field)} must not be negative, got {value}.")


def _check_lengths(lengths, keys):
    if not isinstance(lengths, dict):
        raise ValueError(
            f"TASK_FEATURE_LENGTHS must be a dict like {{'inputs': 512, 'targets': 114}}, got {lengths!r}."
        )
    for key in keys:
        if key not in lengths:
            raise ValueError(
                f"TASK_FEATURE_LENGTHS needs a {key!r} length, got {lengths}; e.g. "
                "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 114}\"."
            )
    for key, value in lengths.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"TASK_FEATURE_LENGTHS[{key!r}] must be a positive integer, got {value!r}.")
