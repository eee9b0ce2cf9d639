"""t5pod: pretrain and fine-tune T5 encoder-decoder models with JAX/Flax."""

from t5pod.configs import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    InferConfig,
    MeshConfig,
    OptimizerConfig,
    StepConfig,
    T5Config,
    TrainConfig,
    TrainEvalConfig,
)

__all__ = [
    "BatchConfig",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "InferConfig",
    "MeshConfig",
    "OptimizerConfig",
    "StepConfig",
    "T5Config",
    "TrainConfig",
    "TrainEvalConfig",
]
