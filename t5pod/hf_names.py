"""One map between Hugging Face T5 tensors and t5pod parameters, read by both hf_import and
hf_export: each tensor's reference name, its place in t5pod's (unscanned) parameter tree, and how
its layout differs (torch Linear weights are [out, in]; t5pod's attention kernels keep heads apart).

The output layer (lm_head) is not in the map: whether it exists depends on tying and logit scaling,
which the importer decides from the tensors and the exporter from the config.
"""

import dataclasses

import numpy as np

from t5pod.configs import T5Config

# Layouts: "copy" (the same array), "transpose" (a 2-D [in, out] kernel against torch's [out, in]),
# "heads_in" (query/key/value: ours [embed, heads, kv], theirs [heads * kv, embed]) and "heads_out"
# (the attention output: ours [heads, kv, embed], theirs [embed, heads * kv]).
LAYOUTS = ("copy", "transpose", "heads_in", "heads_out")


@dataclasses.dataclass(frozen=True)
class TensorName:
    hf: str  # e.g. "encoder.block.0.layer.0.SelfAttention.q.weight"
    path: tuple[str, ...]  # e.g. ("encoder", "layers_0", "attention", "query")
    layout: str
    shape: tuple[int, ...]  # t5pod's shape


def _attention(hf: str, path: tuple, cfg: T5Config) -> list[TensorName]:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.d_kv
    return [
        TensorName(f"{hf}.{theirs}.weight", path + (ours,), "heads_in", (e, h, d))
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"))
    ] + [TensorName(f"{hf}.o.weight", path + ("out",), "heads_out", (h, d, e))]


def _mlp(hf: str, path: tuple, cfg: T5Config) -> list[TensorName]:
    e, f = cfg.d_model, cfg.d_ff
    inputs = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
    return [TensorName(f"{hf}.{n}.weight", path + (n,), "transpose", (e, f)) for n in inputs] + [
        TensorName(f"{hf}.wo.weight", path + ("wo",), "transpose", (f, e))
    ]


def _norm(hf: str, path: tuple, cfg: T5Config) -> TensorName:
    return TensorName(hf, path + ("scale",), "copy", (cfg.d_model,))


# Per stack: its final norm, and each layer's sub-layers in order as (t5pod's norm, t5pod's
# sub-layer, the reference's module); sub-layer j is the reference's `layer.j`.
_STACKS = (
    (
        "encoder",
        "encoder_norm",
        (("pre_attention_layer_norm", "attention", "SelfAttention"), ("pre_mlp_layer_norm", "mlp", "DenseReluDense")),
    ),
    (
        "decoder",
        "decoder_norm",
        (
            ("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
            ("pre_cross_attention_layer_norm", "encoder_decoder_attention", "EncDecAttention"),
            ("pre_mlp_layer_norm", "mlp", "DenseReluDense"),
        ),
    ),
)


def tensor_names(cfg: T5Config) -> list[TensorName]:
    """Every tensor of an encoder-decoder T5 except lm_head, in the reference's order."""
    relpos = (cfg.num_heads, cfg.relative_attention_num_buckets)
    names = [TensorName("shared.weight", ("token_embedder", "embedding"), "copy", (cfg.vocab_size, cfg.d_model))]
    for stack, final_norm, sublayers in _STACKS:
        names.append(
            TensorName(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relpos_bias", "rel_embedding"),
                "transpose",
                relpos,
            )
        )
        for i in range(cfg.num_layers if stack == "encoder" else cfg.decoder_layers):
            for j, (norm, sublayer, module) in enumerate(sublayers):
                hf, path = f"{stack}.block.{i}.layer.{j}", (stack, f"layers_{i}")
                names.append(_norm(f"{hf}.layer_norm.weight", path + (norm,), cfg))
                names += (_mlp if sublayer == "mlp" else _attention)(f"{hf}.{module}", path + (sublayer,), cfg)
        names.append(_norm(f"{stack}.final_layer_norm.weight", (stack, final_norm), cfg))
    return names


def hf_shape(name: TensorName) -> tuple[int, ...]:
    """The reference's shape of the tensor."""
    shape = name.shape
    if name.layout == "copy":
        return shape
    if name.layout == "transpose":
        return shape[::-1]
    if name.layout == "heads_in":  # [embed, heads, kv] -> [heads * kv, embed]
        return (shape[1] * shape[2], shape[0])
    return (shape[2], shape[0] * shape[1])  # heads_out: [heads, kv, embed] -> [embed, heads * kv]


def to_hf(name: TensorName, value: np.ndarray) -> np.ndarray:
    """t5pod's array -> the reference's layout."""
    if name.layout == "copy":
        return value
    return value.reshape(hf_shape(name)[::-1]).T  # transpose, or merge the head axes and transpose


def from_hf(name: TensorName, value: np.ndarray) -> np.ndarray:
    """The reference's array -> t5pod's layout."""
    if name.layout == "copy":
        return value
    return value.T.reshape(name.shape)
