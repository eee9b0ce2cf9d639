"""Export of t5pod checkpoints to Hugging Face T5 folders (config.json, model.safetensors and the
SentencePiece model), the inverse of hf_import: transformers' T5ForConditionalGeneration loads them.

Parameters are restored into host memory (the CPU device), never onto an accelerator, so a model
trained on a slice exports from any one of its hosts.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import tensorflow as tf
from safetensors.numpy import save_file

from t5pod import checkpoints, hf_names, inference, partitioning, peft
from t5pod.configs import T5Config
from t5pod.hf_import import ConversionError, check_new_folder, new_folder


def host_params(checkpoint_dir: str, config: T5Config, step: int | None = None) -> dict:
    """The checkpoint's parameters as numpy arrays in host memory, unscanned (layers_0..N-1)."""
    cpu = jax.devices("cpu")[:1]
    layout = inference.mesh_layout(config, partitioning.make_mesh((1, 1), cpu), fsdp=False)
    params = jax.tree_util.tree_map(
        np.asarray, checkpoints.restore_params(checkpoint_dir, config, layout.abstract_params, step)
    )
    return unstack_layers(params) if config.scan_layers else params


def unstack_layers(params: dict) -> dict:
    """The scanned layout (one `layers` entry, layer axis 0) -> layers_0..N-1."""
    unstacked = {}
    for name, stack in params.items():
        if not isinstance(stack, dict) or "layers" not in stack:
            unstacked[name] = stack
            continue
        count = jax.tree_util.tree_leaves(stack["layers"])[0].shape[0]
        unstacked[name] = {k: v for k, v in stack.items() if k != "layers"}
        for i in range(count):
            unstacked[name][f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stack["layers"])
    return unstacked


def hf_tensors(params: dict, cfg: T5Config) -> dict[str, np.ndarray]:
    """t5pod's unscanned parameters under the reference's tensor names and layouts; LoRA updates
    are merged into their kernels (transformers' T5 runs the merged model unchanged)."""
    if cfg.architecture != "encoder_decoder" or cfg.adapter_dim or cfg.prompt_length:
        raise ConversionError(
            "export-hf writes encoder-decoder T5 models without adapters or a tuned prompt (transformers' "
            f"T5 has neither); this checkpoint is {cfg.architecture!r} (adapter_dim {cfg.adapter_dim}, "
            f"prompt_length {cfg.prompt_length})."
        )
    if cfg.lora_rank:
        params, cfg = peft.merge_low_rank(params, cfg), dataclasses.replace(cfg, lora_rank=0)
    out = {}
    for name in hf_names.tensor_names(cfg):
        value = params
        for key in name.path:
            value = value[key]
        out[name.hf] = hf_names.to_hf(name, np.asarray(value))
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = params["decoder"]["logits_dense"].T
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in out.items()}


def hf_config(cfg: T5Config) -> dict:
    """config.json for transformers: T5 1.0 (tied, scaled logits) or T5 1.1 (separate lm_head)."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.decoder_layers,
        "feed_forward_proj": cfg.feed_forward_proj,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "dropout_rate": cfg.dropout_rate,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def export(
    checkpoint_dir: str, out_dir: str, config: T5Config, vocabulary_path: str | None = None, step: int | None = None
) -> tuple[int, str | None]:
    """Writes OUT_DIR (config.json, model.safetensors, and spiece.model copied from vocabulary_path,
    a local or bucket path) from the checkpoint (default: newest; a path …/N names one). OUT_DIR
    must be new or empty; a failed export leaves nothing behind. Returns the step exported and,
    when no tokenizer could be written, why."""
    check_new_folder(out_dir)  # before the checkpoint is read
    step = checkpoints.read_metadata(checkpoint_dir, step)[0]
    tensors = hf_tensors(host_params(checkpoint_dir, config, step), config)
    with new_folder(out_dir) as staging:
        save_file(tensors, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(hf_config(config), f, indent=2)
        no_tokenizer = "the model's gin names no VOCABULARY_PATH" if not vocabulary_path else None
        if vocabulary_path:
            try:
                tf.io.gfile.copy(vocabulary_path, os.path.join(staging, "spiece.model"))
            except tf.errors.OpError as error:
                if os.path.exists(os.path.join(staging, "spiece.model")):  # a partial copy
                    os.remove(os.path.join(staging, "spiece.model"))
                no_tokenizer = f"{vocabulary_path} cannot be read ({' '.join(error.message.split())[:200]})"
    return step, no_tokenizer
