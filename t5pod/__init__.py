"""t5pod: pretrain and fine-tune T5 encoder-decoder models with JAX/Flax."""

from t5pod.config import T5Config
from t5pod.network import Transformer

__all__ = ["T5Config", "Transformer"]
