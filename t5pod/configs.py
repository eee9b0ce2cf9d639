"""Every configuration of t5pod as a frozen dataclass: the model (T5Config, field names as in
the reference), a training run (TrainConfig, composed of small parts: mesh, batch, data,
optimizer, checkpoint and evaluation), inference (InferConfig) and evaluation (EvalConfig).

Gin binds these from one place (t5pod.ginconf); library code takes the plain instances. No JAX
here, so the configs can be read and checked before any accelerator is touched.
"""

import dataclasses
import importlib.resources
import math
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

# The projections LoRA can adapt (t5pod.peft): attention's query, key, value and output kernels,
# and 'mlp', every kernel of the feed-forward block.
LORA_TARGETS = ("query", "key", "value", "out", "mlp")


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
    # after every feed-forward block; fine-tune with OptimizerConfig.trainable = 'adapters'.
    adapter_dim: int = 0
    # Parameter-efficient fine-tuning (t5pod.peft): lora_rank > 0 adds a LoRA update of that rank,
    # scaled by lora_alpha / lora_rank (lora_alpha 0: by 1), to each projection named in
    # lora_targets (peft.LORA_TARGETS); prompt_length > 0 prepends that many learned vectors to
    # the encoder's input. Fine-tune them with OptimizerConfig.trainable 'lora' or 'prompt'.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple = ("query", "value")
    prompt_length: int = 0
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
        self._check_peft()
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"T5Config.{name} must be positive, got {getattr(self, name)}.")

    def _check_peft(self):
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        for name in ("lora_rank", "lora_alpha", "prompt_length"):
            if isinstance(getattr(self, name), bool) or getattr(self, name) < 0:
                raise ValueError(f"T5Config.{name} must be 0 (off) or positive, got {getattr(self, name)!r}.")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if unknown or not self.lora_targets or len(set(self.lora_targets)) < len(self.lora_targets):
            raise ValueError(
                f"T5Config.lora_targets must name distinct projections from {LORA_TARGETS}, got {self.lora_targets}."
            )
        if self.prompt_length and self.is_decoder_only:
            raise ValueError(
                f"Prompt tuning (T5Config.prompt_length) prepends a prompt to the encoder's input; the "
                f"{self.architecture!r} architecture has no encoder. Use an encoder-decoder model."
            )

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
        "lora_rank",
        "lora_targets",
        "prompt_length",
    )
    # What checkpoints written before a field existed mean by its absence.
    ARCHITECTURE_DEFAULTS = {
        "architecture": "encoder_decoder",
        "adapter_dim": 0,
        "lora_rank": 0,
        "lora_targets": ["query", "value"],
        "prompt_length": 0,
    }

    def checkpoint_fields(self) -> dict:
        """The ARCHITECTURE_FIELDS values, saved with every checkpoint as its `architecture`."""
        arch = {name: getattr(self, name) for name in self.ARCHITECTURE_FIELDS}
        arch["num_decoder_layers"] = self.decoder_layers
        # As JSON gives it back; without LoRA the targets make no parameters, so they do not count.
        arch["lora_targets"] = list(self.lora_targets) if self.lora_rank else self.ARCHITECTURE_DEFAULTS["lora_targets"]
        return arch


# Learning-rate schedules (optimizer.learning_rate_schedule) and what a fine-tuning trains
# (optimizer.for_run): 'adapters' trains only adapters and layer norms (paper §3.5.1), 'lora'
# only LoRA updates, 'prompt' only prompt tuning's prompt (t5pod.peft).
SCHEDULES = ("rsqrt", "constant")
TRAINABLE = ("all", "adapters", "lora", "prompt")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh and how parameters lie on it; training and inference share it."""

    shape: tuple = (-1, 1)  # (data, model) within a slice; -1 takes the slice's remaining devices
    fsdp: bool = False  # parameters and optimizer state also split over data
    # (data, model) across slices joined by the data-centre network (DCN): (2, 1) is two slices, the
    # data axis spanning them; the model axis never crosses DCN (partitioning.make_mesh refuses it).
    dcn_shape: tuple = (1, 1)
    # (logical axis, mesh axis or None) pairs that replace the standard rules of those logical axes
    # (partitioning.STANDARD_RULES), as T5X's logical_axis_rules; checked by partitioning.logical_rules.
    logical_axis_rules: tuple = ()

    def __post_init__(self):
        rules = tuple(tuple(r) if isinstance(r, (list, tuple)) else r for r in self.logical_axis_rules)
        object.__setattr__(self, "logical_axis_rules", rules)
        if len(self.shape) != 2 or any(int(n) == 0 or int(n) < -1 for n in self.shape):
            raise ValueError(f"MESH_SHAPE must be (data, model) with positive sizes or -1, got {self.shape}.")
        if len(self.dcn_shape) != 2 or any(int(n) < 1 for n in self.dcn_shape):
            raise ValueError(f"DCN_MESH_SHAPE must be (data, model) with positive sizes, got {self.dcn_shape}.")


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """The shape of every training batch, which the compiled train step is specialised to."""

    task_feature_lengths: dict  # {'inputs': length, 'targets': length}
    batch_size: int  # sequences per step, over all devices
    pack: bool = True  # several examples per sequence (T5's packing)

    def __post_init__(self):
        _check_lengths(self.task_feature_lengths, ("inputs", "targets"))
        _check_positive(self, {"batch_size": "BATCH_SIZE"})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a run's examples come from."""

    mixture_or_task_name: str  # a registered seqio task or mixture
    use_cached: bool = False  # read the tasks' seqio caches
    # Resuming with another batch size, feature lengths or mixture invalidates the saved input
    # position; True continues from the checkpoint with the input stream restarted from its seed.
    restart_data_stream: bool = False

    def __post_init__(self):
        if not self.mixture_or_task_name:
            raise ValueError("MIXTURE_OR_TASK_NAME must name a seqio task or mixture.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """How one batch updates the parameters: the loss and its gradient, the learning rate, and
    which parameters train."""

    learning_rate: float = 1.0
    schedule: str = "rsqrt"  # one of SCHEDULES
    warmup_steps: int = 10_000
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    loss_normalizing_factor: float | None = None  # None: the per-token mean
    num_microbatches: int = 1  # the batch's gradient is accumulated over this many slices
    # Paper §3.5.1 fine-tuning methods: 'adapters' trains only adapters and layer norms;
    # gradual_unfreezing unfreezes one layer per stack (from the top) in equal episodes.
    trainable: str = "all"
    gradual_unfreezing: bool = False

    def __post_init__(self):
        _check_positive(self, {"learning_rate": "LEARNING_RATE", "num_microbatches": "NUM_MICROBATCHES"})
        _check_not_negative(
            self, {"warmup_steps": "WARMUP_STEPS", "z_loss": "Z_LOSS", "label_smoothing": "LABEL_SMOOTHING"}
        )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown LEARNING_RATE_SCHEDULE {self.schedule!r}; use one of {SCHEDULES}.")
        if self.schedule == "rsqrt" and self.warmup_steps <= 0:
            raise ValueError(f"WARMUP_STEPS must be positive for the rsqrt schedule, got {self.warmup_steps}.")
        if self.label_smoothing >= 1:
            raise ValueError(f"LABEL_SMOOTHING must be in [0, 1), got {self.label_smoothing}.")
        if self.loss_normalizing_factor is not None and (
            isinstance(self.loss_normalizing_factor, (str, bool)) or self.loss_normalizing_factor <= 0
        ):
            raise ValueError(
                f"LOSS_NORMALIZING_FACTOR must be a positive number (or None: the per-token mean), got "
                f"{self.loss_normalizing_factor!r}; T5X's 'NUM_REAL_TARGET_TOKENS' is None here."
            )
        if self.trainable not in TRAINABLE:
            raise ValueError(f"Unknown TRAINABLE {self.trainable!r}; use one of {TRAINABLE}.")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When a run saves, what it keeps, and the weights it starts from."""

    period: int = 1000  # steps between checkpoints (one is also written at the end and on SIGTERM)
    keep: int | None = None  # the newest this many; None keeps all
    keep_period: int | None = None  # with keep: also every checkpoint whose step is a multiple of this, forever
    asynchronous: bool = True  # write in the background while training goes on
    initial_path: str | None = None  # start from these weights (the optimizer starts afresh)
    # Regular expressions over parameter paths ('decoder/.*'): the parameters they match fully keep
    # their fresh initialisation instead of the initial checkpoint's (T5X's assignment_map to None).
    initial_skip: tuple = ()
    # Also restore initial_path's Adafactor state (as T5X does when fine-tuning); the run's step
    # and learning-rate schedule still start at 0.
    initial_optimizer_state: bool = False

    def __post_init__(self):
        _check_positive(self, {"period": "CHECKPOINT_PERIOD"})
        if self.initial_optimizer_state and not self.initial_path:
            raise ValueError("INITIAL_OPTIMIZER_STATE=True restores from INITIAL_CHECKPOINT_PATH, which is not set.")
        if self.initial_optimizer_state and self.initial_skip:
            raise ValueError(
                "INITIAL_OPTIMIZER_STATE=True with INITIAL_CHECKPOINT_SKIP: the skipped parameters would get "
                "another parameter's optimizer state; use one or the other."
            )
        if self.keep is not None and self.keep < 1:
            raise ValueError(
                f"KEEP_CHECKPOINTS must be at least 1 (None keeps all), got {self.keep}: "
                "0 would delete every checkpoint of the run."
            )
        if self.keep_period is not None and not self.keep_period >= 1:
            raise ValueError(f"KEEP_PERIOD must be at least 1 (None: only KEEP_CHECKPOINTS), got {self.keep_period}.")
        if isinstance(self.initial_skip, str):
            raise ValueError(
                f"INITIAL_CHECKPOINT_SKIP is a list of patterns, e.g. ['decoder/.*'], not the string "
                f"{self.initial_skip!r}."
            )
        if self.initial_skip and not self.initial_path:
            raise ValueError(
                "INITIAL_CHECKPOINT_SKIP names parameters to leave out of INITIAL_CHECKPOINT_PATH, which is not set."
            )
        for pattern in self.initial_skip:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"INITIAL_CHECKPOINT_SKIP pattern {pattern!r} is not a regular expression: {error}."
                ) from None


@dataclasses.dataclass(frozen=True)
class TrainEvalConfig:
    """Evaluation during training, every `period` steps (0: none)."""

    period: int = 0
    steps: int = 20  # batches of the evaluation split, teacher-forced (loss and accuracy)
    split: str = "validation"
    # Also decode the evaluation split of every task with metrics (greedy, targets-length tokens)
    # and report the task's metrics, as T5X's inference evaluation does.
    inference: bool = False
    inference_examples: int | None = None  # per task; None: the whole split

    def __post_init__(self):
        _check_not_negative(self, {"period": "EVAL_PERIOD"})
        _check_positive(self, {"steps": "EVAL_STEPS"})
        if self.inference_examples is not None and self.inference_examples < 1:
            raise ValueError(
                f"INFERENCE_EVAL_EXAMPLES must be positive (None: the whole split), got {self.inference_examples}."
            )


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What a compiled train step is specialised to: the batch's shape, the update, the mesh.
    TrainConfig.step gives a run's; `plan` and the benchmarks build one without a run."""

    batch: BatchConfig
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    train_steps: int = 1  # the run's length, which gradual unfreezing divides into episodes

    def __post_init__(self):
        _check_positive(self, {"train_steps": "TRAIN_STEPS"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run: its folder and length, composed of the parts above. Gin binds each part
    from the run macros (gin/runs/pretrain.gin)."""

    model_dir: str
    train_steps: int
    data: DataConfig
    batch: BatchConfig
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    eval: TrainEvalConfig = dataclasses.field(default_factory=TrainEvalConfig)
    log_period: int = 100
    random_seed: int = 0  # the parameters' initialisation, dropout and the input stream
    # A run holds MODEL_DIR through a lease file; a killed run's lease expires after this long.
    lease_timeout_s: float = 120.0

    def __post_init__(self):
        if not self.model_dir:
            raise ValueError("MODEL_DIR is empty; set --gin.MODEL_DIR=\"'/path/to/run'\".")
        _check_positive(
            self, {"train_steps": "TRAIN_STEPS", "log_period": "LOG_PERIOD", "lease_timeout_s": "lease_timeout_s"}
        )

    @property
    def step(self) -> StepConfig:
        return StepConfig(self.batch, self.optimizer, self.mesh, self.train_steps)


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
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)  # the decode batch is split over data

    def __post_init__(self):
        _check_lengths(self.task_feature_lengths, ("inputs", "targets"))
        if self.max_decode_length is None:
            object.__setattr__(self, "max_decode_length", int(self.task_feature_lengths["targets"]))
        _check_positive(
            self,
            {"batch_size": "INFER_BATCH_SIZE", "max_decode_length": "MAX_DECODE_LENGTH", "beam_size": "BEAM_SIZE"},
        )
        _check_not_negative(self, {"alpha": "ALPHA", "temperature": "TEMPERATURE", "top_k": "TOP_K"})

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


def flat(config, prefix: str = "") -> dict:
    """{'prefix' + dotted field path: value} of a config and its parts, e.g. 'train/batch.batch_size'."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{field.name}."))
        else:
            out[f"{prefix}{field.name}"] = value
    return out


# The checks name each field by the macro the run gin files bind it from (a test holds them to it).
def _check_positive(config, macros: dict):
    for field, macro in macros.items():
        value = getattr(config, field)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{macro} must be a positive finite number, got {value}.")


def _check_not_negative(config, macros: dict):
    for field, macro in macros.items():
        value = getattr(config, field)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{macro} must be a finite number, not negative, got {value}.")


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
