"""t5pod: pretrain and fine-tune T5 encoder-decoder models with JAX/Flax."""

from t5pod.configs import EvalConfig, InferConfig, T5Config, TrainConfig

__all__ = ["EvalConfig", "InferConfig", "T5Config", "TrainConfig"]
