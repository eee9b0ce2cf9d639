"""What a task or mixture produces: examples as JSON and statistics (`python -m t5pod data`)."""

import time
from typing import Iterator, Mapping

import numpy as np
import seqio

from t5pod.data import pipeline

TOKEN_FEATURES = ("inputs", "targets", "encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens")


def _vocabulary(name: str):
    provider = pipeline.get_task_or_mixture(name)
    return provider.output_features["targets"].vocabulary


def _dataset(
    name: str, lengths: Mapping[str, int], split: str, model_features: bool, seed: int, use_cached: bool = False
):
    provider = pipeline.get_task_or_mixture(name)
    if split not in provider.splits:
        raise ValueError(f"{name} has no split {split!r}; its splits are {sorted(provider.splits)}.")
    if model_features:
        return pipeline.get_dataset(
            name,
            lengths,
            split,
            shuffle=False,
            seed=seed,
            num_epochs=1,
            shard_index=0,
            num_shards=1,
            use_cached=use_cached,
        )
    return seqio.get_dataset(
        name,
        dict(lengths),
        dataset_split=split,
        shuffle=False,
        num_epochs=1,
        seed=seed,
        feature_converter=seqio.PassThroughFeatureConverter(),
        use_cached=use_cached,
    )


def examples(
    name: str,
    lengths: Mapping[str, int],
    split: str = "train",
    num_examples: int = 3,
    model_features: bool = False,
    seed: int = 0,
    use_cached: bool = False,
) -> Iterator[dict]:
    """Each example as {feature: {"ids": [...], "text": "..."}} (text only for token features)."""
    vocabulary = _vocabulary(name)
    for example in (
        _dataset(name, lengths, split, model_features, seed, use_cached).take(num_examples).as_numpy_iterator()
    ):
        row = {}
        for key, value in example.items():
            if isinstance(value, bytes):
                row[key] = value.decode("utf-8", errors="replace")
            elif isinstance(value, np.ndarray) and value.dtype.kind in "iu":
                ids = value.tolist()
                row[key] = {"ids": ids}
                if key in TOKEN_FEATURES:
                    row[key]["text"] = vocabulary.decode([i for i in ids if i != 0])
            elif isinstance(value, np.ndarray):
                row[key] = value.tolist() if value.dtype.kind != "O" else [v.decode() for v in value.tolist()]
            else:
                row[key] = value.item() if hasattr(value, "item") else value
        yield row


def _count_spans(ids: list[int], first_sentinel: int) -> int:
    return sum(1 for i in ids if first_sentinel - 100 < i <= first_sentinel)


def statistics(
    name: str,
    lengths: Mapping[str, int],
    split: str = "train",
    num_examples: int = 1000,
    model_features: bool = False,
    seed: int = 0,
    use_cached: bool = False,
    on_example=None,
) -> dict:
    """Lengths, padding, packing efficiency (model features: the non-padding fraction of the token
    slots), examples and non-padding tokens per second, and (denoising tasks) noise statistics.
    With model features an example is a packed row. on_example() is called after each example read."""
    vocabulary = _vocabulary(name)
    first_sentinel = vocabulary.vocab_size - 1
    dataset = _dataset(name, lengths, split, model_features, seed, use_cached).take(num_examples)
    start = time.perf_counter()  # reading and preprocessing, the pipeline built above
    rows = []
    for row in dataset.as_numpy_iterator():
        rows.append(row)
        if on_example:
            on_example()
    seconds = time.perf_counter() - start
    if not rows:
        raise ValueError(f"{name}/{split} produced no examples.")
    stats: dict = {"task": name, "split": split, "examples": len(rows), "feature_lengths": dict(lengths)}
    token_keys = ("encoder_input_tokens", "decoder_target_tokens") if model_features else ("inputs", "targets")
    tokens = sum(int(np.count_nonzero(r[k])) for r in rows for k in token_keys if k in r)
    stats["examples_per_s"] = round(len(rows) / seconds, 1)
    stats["tokens_per_s"] = round(tokens / seconds, 1)  # non-padding tokens
    if model_features:
        for key in ("encoder_input_tokens", "decoder_target_tokens"):
            filled = np.mean([np.count_nonzero(r[key]) / r[key].size for r in rows])
            stats[f"{key}_fill"] = round(float(filled), 4)
        stats["examples_per_row"] = round(float(np.mean([r["encoder_segment_ids"].max() for r in rows])), 3)
        stats["packing_efficiency"] = round(
            float(
                np.mean(
                    [
                        (np.count_nonzero(r["encoder_input_tokens"]) + np.count_nonzero(r["decoder_target_tokens"]))
                        / (r["encoder_input_tokens"].size + r["decoder_target_tokens"].size)
                        for r in rows
                    ]
                )
            ),
            4,
        )
        return stats
    for key in ("inputs", "targets"):
        sizes = np.array([len(r[key]) for r in rows if key in r])
        if sizes.size:
            stats[f"{key}_length"] = {
                "mean": round(float(sizes.mean()), 2),
                "min": int(sizes.min()),
                "max": int(sizes.max()),
            }
            stats[f"{key}_padding"] = round(float(1 - np.minimum(sizes, lengths[key]).mean() / lengths[key]), 4)
    spans = np.array([_count_spans(r["inputs"].tolist(), first_sentinel) for r in rows if "inputs" in r])
    if spans.size and spans.mean() > 0:  # a denoising task: count what the sentinels stand for
        noise = np.array([len(r["targets"]) - s - 1 for r, s in zip(rows, spans)])
        kept = np.array([len(r["inputs"]) - s - 1 for r, s in zip(rows, spans)])
        stats["noise"] = {
            "density": round(float(noise.sum() / (noise.sum() + kept.sum())), 4),
            "spans_per_example": round(float(spans.mean()), 3),
            "mean_span_length": round(float(noise.sum() / spans.sum()), 3),
        }
    return stats
