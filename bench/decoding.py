"""Greedy decoding speed: t5pod's Predictor (what `infer` runs) against transformers' `generate`.

The same random T5 weights go to both (a transformers model saved as safetensors, imported with
t5pod.hf_import); both decode the same batch greedily with a key/value cache, one device or
the PyTorch CPU threads, and are timed alternately so both see the same machine state. Token
ids are compared too: the figures are only meaningful if both produce the same tokens.
"""

import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from t5pod import decoding, hf_import, inference, partitioning
from t5pod.configs import InferConfig


def _hf_model(name_config, directory: str):
    """A random transformers T5 of the given t5pod config, saved as a T5 1.1-style checkpoint."""
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    os.makedirs(directory, exist_ok=True)
    c = name_config
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=c.vocab_size,
            d_model=c.d_model,
            d_kv=c.d_kv,
            d_ff=c.d_ff,
            num_heads=c.num_heads,
            num_layers=c.num_layers,
            num_decoder_layers=c.decoder_layers,
            feed_forward_proj=c.feed_forward_proj,
            tie_word_embeddings=c.tie_word_embeddings,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )
    ).eval()
    if c.tie_word_embeddings:
        hf.save_pretrained(directory, safe_serialization=True)
        return hf
    hf.lm_head.weight = torch.nn.Parameter(torch.randn(c.vocab_size, c.d_model) * 0.05)
    state = {
        k: v.contiguous()
        for k, v in hf.state_dict().items()
        if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    }
    save_file(state, os.path.join(directory, "model.safetensors"))
    config = hf.config.to_dict()
    config["tie_word_embeddings"] = False
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return hf


def decode_figures(name: str, config, batch: int, input_length: int, decode_length: int, rounds: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    lengths = rng.integers(input_length // 2, input_length, batch)
    rows = [rng.integers(2, config.vocab_size - 100, n - 1).tolist() for n in lengths]  # EOS added below
    with tempfile.TemporaryDirectory() as folder:
        hf = _hf_model(config, os.path.join(folder, "hf"))
        converted = hf_import.convert(os.path.join(folder, "hf"), os.path.join(folder, "t5pod"))
        infer_config = InferConfig(
            checkpoint_path=os.path.join(folder, "t5pod"),
            batch_size=batch,
            task_feature_lengths={"inputs": input_length, "targets": decode_length},
        )
        predictor = inference.Predictor(
            converted, infer_config, vocabulary=None, mesh=partitioning.make_mesh((1, 1), jax.devices()[:1])
        )
        start = time.perf_counter()
        ours = predictor.predict_batch(rows)  # compiles
        compile_s = time.perf_counter() - start

    ids = torch.zeros((batch, input_length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row) + 1] = torch.tensor(row + [decoding.EOS])
    mask = (ids > 0).long()

    def generate():
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=decode_length,
                do_sample=False,
                num_beams=1,
                use_cache=True,
            )
        return [decoding.strip_after_eos(row[1:]) for row in out.tolist()]

    theirs = generate()
    same = sum(a == b for a, b in zip(ours, theirs))
    generated = sum(min(len(p) + 1, decode_length) for p in ours)  # tokens produced, each EOS included
    mine, reference = [], []
    for _ in range(rounds):  # alternate, so both see the same machine state
        start = time.perf_counter()
        predictor.predict_batch(rows)
        mine.append(time.perf_counter() - start)
        start = time.perf_counter()
        generate()
        reference.append(time.perf_counter() - start)
    row = {
        "config": name,
        "batch": batch,
        "input_length": input_length,
        "decode_length": decode_length,
        "generated_tokens": generated,
        "same_predictions": f"{same}/{batch}",
        "compile_s": compile_s,
        "decode_tokens_per_s": generated / statistics.median(mine),
        "reference_tokens_per_s": generated / statistics.median(reference),
    }
    row["decode_speedup"] = row["decode_tokens_per_s"] / row["reference_tokens_per_s"]
    return row
