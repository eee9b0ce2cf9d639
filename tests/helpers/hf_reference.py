"""Random-weight checkpoints made by the reference implementation (transformers, CPU, float32)."""

import json
import os

import numpy as np

# Small configurations covering both generations and the awkward shapes.
CONFIGS = {
    # T5 1.0: ReLU, tied output layer with logit scaling; written by save_pretrained.
    "t5_1_0": dict(
        vocab_size=160,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
    ),
    # T5 1.1: gated-GELU, separate lm_head, d_kv*heads != d_model, more decoder than encoder
    # layers, and a short max_distance so the logarithmic buckets are exercised.
    "t5_1_1": dict(
        vocab_size=160,
        d_model=32,
        d_kv=8,
        num_heads=6,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=3,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=20,
    ),
    # mT5: T5 1.1's architecture under model_type "mt5" (MT5ForConditionalGeneration on the hub),
    # here with an encoder deeper than the decoder and a vocabulary that is no multiple of 128.
    "mt5": dict(
        vocab_size=250,
        d_model=24,
        d_kv=6,
        num_heads=4,
        d_ff=40,
        num_layers=3,
        num_decoder_layers=1,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        model_type="mt5",
    ),
}


def make_checkpoint(kind: str, directory: str, seed: int = 0, **overrides):
    """Writes config.json + model.safetensors for CONFIGS[kind]; returns the torch model."""
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    options = dict(CONFIGS[kind], dropout_rate=0.0, **overrides)
    model_type = options.pop("model_type", "t5")
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**options)).eval()
    os.makedirs(directory, exist_ok=True)
    if options["tie_word_embeddings"]:
        model.save_pretrained(directory, safe_serialization=True)
        return model
    # Recent transformers always tie lm_head to the embedding; T5 1.1 checkpoints have their own.
    # Give it its own weights and write the file the way T5 1.1 checkpoints on the hub are.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(options["vocab_size"], options["d_model"]) * 0.3)
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    }
    save_file(state, os.path.join(directory, "model.safetensors"))
    config = model.config.to_dict()
    config.pop("scale_decoder_outputs", None)
    config["tie_word_embeddings"] = False
    if model_type != "t5":
        config.update(model_type=model_type, architectures=[f"{model_type.upper()}ForConditionalGeneration"])
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return model


def batch(vocab_size: int, seed: int = 0):
    """Encoder inputs [3, 24] and decoder inputs [3, 12], right-padded with 0 in two rows."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab_size, size=(3, 24)).astype(np.int32)
    inputs[1, 17:] = 0
    inputs[2, 5:] = 0
    decoder_inputs = rng.integers(2, vocab_size, size=(3, 12)).astype(np.int32)
    decoder_inputs[:, 0] = 0  # decoder start token
    decoder_lengths = np.array([12, 7, 4])
    for row, n in enumerate(decoder_lengths):
        decoder_inputs[row, n:] = 0
    return inputs, decoder_inputs, decoder_lengths


def reference_logits(model, inputs, decoder_inputs) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(inputs, dtype=torch.long),
            attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
            decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        )
    return out.logits.numpy()
