"""Import of Hugging Face T5 checkpoints (config.json + safetensors) into t5pod parameters.

Reads safetensors only: a pickled pytorch_model.bin can run arbitrary code when loaded.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np

from safetensors import SafetensorError, safe_open

from t5pod import checkpoints, hf_names
from t5pod.configs import FEED_FORWARD_PROJECTIONS, T5Config


class ConversionError(ValueError):
    pass


# Tensors that duplicate `shared.weight` in some exports.
_DUPLICATE_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def read_hf_config(src_dir: str) -> tuple[T5Config, dict]:
    """T5Config from SRC_DIR/config.json, plus the raw json."""
    path = os.path.join(src_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{src_dir} has no config.json: pass the folder of a Hugging Face T5 checkpoint.")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(
            f"{path} is not valid JSON ({error}); re-download the checkpoint's config.json."
        ) from None
    if not isinstance(hf, dict):
        raise ConversionError(f"{path} is not a T5 config (a JSON object is expected).")
    missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers") if k not in hf]
    if missing and "d_model" in hf:
        raise ConversionError(f"{path} lacks {', '.join(missing)}; it is not a complete T5 config.")
    if hf.get("model_type") == "umt5":
        raise ConversionError(
            f"{path} is a umT5 model, whose every layer has its own relative position bias; t5pod reads T5 "
            "and mT5 (one bias per stack)."
        )
    if hf.get("model_type", "t5") not in ("t5", "mt5") or "d_model" not in hf:
        raise ConversionError(f"{path} is not a T5 config (model_type={hf.get('model_type')!r}).")
    projection = hf.get("feed_forward_proj", "relu")
    if projection not in FEED_FORWARD_PROJECTIONS:
        raise ConversionError(
            f"{path}: unknown feed_forward_proj {projection!r}; t5pod supports {sorted(FEED_FORWARD_PROJECTIONS)}."
        )
    config = T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        d_kv=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_heads=hf["num_heads"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        feed_forward_proj=projection,
        tie_word_embeddings=True,  # decided from the tensors, below
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
    )
    return config, hf


def read_safetensors(src_dir: str, on_tensor=None) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors (or its sharded index) as float32 numpy arrays; on_tensor()
    is called after each."""
    single = os.path.join(src_dir, "model.safetensors")
    index = os.path.join(src_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = sorted({os.path.join(src_dir, name) for name in json.load(f)["weight_map"].values()})
    else:
        pickled = [
            n
            for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
            if os.path.exists(os.path.join(src_dir, n))
        ]
        hint = (
            (
                f" It has {', '.join(pickled)}, which t5pod does not read; re-save it as safetensors "
                "(transformers: model.save_pretrained(dir, safe_serialization=True))."
            )
            if pickled
            else ""
        )
        raise ConversionError(f"{src_dir} has no model.safetensors.{hint}")
    tensors = {}
    for path in files:
        if not os.path.isfile(path):
            raise ConversionError(f"{path}, named in the safetensors index, is missing.")
        # The flax framework reads bfloat16 too; numpy alone cannot.
        try:
            with safe_open(path, framework="flax") as f:
                for name in f.keys():
                    tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
                    if on_tensor:
                        on_tensor()
        except (OSError, ValueError, SafetensorError) as error:
            raise ConversionError(
                f"{path} cannot be read as safetensors ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:200]}); it may be truncated: download it again."
            ) from None
    return tensors


class _Reader:
    """Takes tensors by name, checking shapes against the config and remembering what was used."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors, self.used = tensors, set()

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise ConversionError(f"The checkpoint lacks tensor {name!r} that config.json implies.")
        value = self.tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(
                f"Tensor {name!r} has shape {tuple(value.shape)} but config.json implies {tuple(shape)}; "
                "the config and the weights disagree."
            )
        self.used.add(name)
        return value


def convert_tensors(tensors: dict[str, np.ndarray], config: T5Config, hf_config: dict) -> tuple[dict, T5Config]:
    """Maps reference tensor names and layouts to t5pod's (unscanned) parameter tree."""
    r = _Reader(tensors)
    cfg = config
    params: dict = {}
    for name in hf_names.tensor_names(cfg):
        node = params
        for key in name.path[:-1]:
            node = node.setdefault(key, {})
        node[name.path[-1]] = hf_names.from_hf(name, r.take(name.hf, hf_names.hf_shape(name)))
    embedding, decoder = params["token_embedder"]["embedding"], params["decoder"]

    # Output layer. Older exports say tie_word_embeddings=false for T5 1.1 (separate lm_head, no
    # logit scaling); newer transformers write scale_decoder_outputs and may tie the two.
    scaled = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True) is not False)
    lm_head = None
    if "lm_head.weight" in tensors:
        lm_head = r.take("lm_head.weight", (cfg.vocab_size, cfg.d_model))
        if np.array_equal(lm_head, embedding):
            lm_head = None
    if lm_head is None and not scaled:
        lm_head = embedding  # tied but unscaled: an untied copy computes the same logits
    if lm_head is not None and scaled:
        raise ConversionError(
            "The checkpoint has a separate lm_head but its config asks for T5 1.0 logit scaling; "
            "t5pod supports tied+scaled (T5 1.0) or separate+unscaled (T5 1.1) output layers."
        )
    if lm_head is not None:
        decoder["logits_dense"] = np.array(lm_head.T)
    cfg = dataclasses.replace(cfg, tie_word_embeddings=lm_head is None)

    unused = set(tensors) - r.used - set(_DUPLICATE_EMBEDDINGS) - {"lm_head.weight"}
    unused = {n for n in unused if "EncDecAttention.relative_attention_bias" not in n}  # unused by the reference too
    if unused:
        raise ConversionError(f"The checkpoint has tensors t5pod does not know: {sorted(unused)[:5]}")
    return params, cfg


def model_gin(
    config: T5Config, out_dir: str, vocabulary_path: str | None, source: str, command: str = "convert-hf"
) -> str:
    lines = [
        f"# Written by `t5pod {command}` from {source}.",
        f"# Use with: --gin_file={os.path.join(out_dir, 'model.gin')} --gin.CHECKPOINT_PATH=\"'{out_dir}'\"",
        "",
    ]
    for name in (
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
        "relative_attention_max_distance",
        "layer_norm_epsilon",
    ):
        value = config.decoder_layers if name == "num_decoder_layers" else getattr(config, name)
        lines.append(f"t5pod.T5Config.{name} = {value!r}")
    if vocabulary_path:
        lines += ["", f"VOCABULARY_PATH = {vocabulary_path!r}"]
    return "\n".join(lines) + "\n"


def check_new_folder(out_dir: str):
    """Refuses an OUT_DIR that exists and holds anything: nothing already written is overwritten."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConversionError(f"{os.path.abspath(out_dir)} already exists and is not empty; choose a new OUT_DIR.")


def _respect_umask(folder: str):
    """Gives folder and what is in it the modes the umask allows (a temporary folder is made 0700
    and some writers make 0600 files), as on shared storage a plain mkdir and open would."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


@contextlib.contextmanager
def new_folder(out_dir: str) -> Iterator[str]:
    """Yields a temporary sibling folder to write into; it becomes out_dir (which must be new or
    empty) when the block succeeds and is removed when it fails, so a failure leaves nothing behind."""
    out_dir = os.path.abspath(out_dir)
    check_new_folder(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    try:
        yield staging
        _respect_umask(staging)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert(src_dir: str, out_dir: str, on_tensor=None) -> T5Config:
    """SRC_DIR (Hugging Face T5 folder) -> OUT_DIR with an Orbax checkpoint, model.gin, spiece.model.

    OUT_DIR must not exist yet (or be empty); everything is written to a temporary sibling first
    and moved into place at the end, so a failed conversion leaves nothing behind.
    """
    out_dir = os.path.abspath(out_dir)
    check_new_folder(out_dir)
    config, hf_config = read_hf_config(src_dir)
    params, config = convert_tensors(read_safetensors(src_dir, on_tensor), config, hf_config)
    with new_folder(out_dir) as staging:
        vocabulary = None
        if os.path.isfile(os.path.join(src_dir, "spiece.model")):
            shutil.copy(os.path.join(src_dir, "spiece.model"), os.path.join(staging, "spiece.model"))
            vocabulary = os.path.join(out_dir, "spiece.model")
        checkpoints.save_params(staging, params, config, step=0, extra_metadata={"source": os.path.abspath(src_dir)})
        with open(os.path.join(staging, "model.gin"), "w") as f:
            f.write(model_gin(config, out_dir, vocabulary, os.path.abspath(src_dir)))
    return config
