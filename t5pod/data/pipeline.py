"""Model-ready input: a seqio task or mixture -> feature conversion and packing -> batches.

Each process reads its own shard (seqio.ShardInfo from jax.process_index / process_count). The
stream is deterministic for a seed, and its position can be saved and restored exactly
(tf.data iterator checkpoints), so a resumed run sees the batches it would have seen.
"""

import difflib
import logging
import os
from typing import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf


class _DeliberateInSeqio(logging.Filter):
    """seqio warns on every uncached FunctionDataSource (t5pod runs uncached unless asked to) and
    on the features packing drops (the pretokenized strings, kept for evaluation only)."""

    NOTES = ("Using an uncached FunctionDataset", "Features not in `features_length` will be removed during packing")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


logging.getLogger("absl").addFilter(_DeliberateInSeqio())


class UnknownTaskError(ValueError):
    pass


def get_task_or_mixture(name: str):
    """The registered seqio task or mixture, or an error naming the closest registered names."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownTaskError(
            f"Unknown task or mixture {name!r}.{hint} Registered names come from tasks/ "
            "(`python -m t5pod data --list` shows them)."
        ) from None


def feature_converter(pack: bool = True, decoder_only: bool = False) -> seqio.FeatureConverter:
    """Encoder-decoder features, or (decoder_only) inputs and targets concatenated with the loss
    on the targets only and decoder_causal_attention over the inputs (paper §3.2.1)."""
    if decoder_only:
        return seqio.PrefixLMFeatureConverter(loss_on_targets_only=True, pack=pack)
    return seqio.EncDecFeatureConverter(pack=pack)


def get_dataset(
    name: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "train",
    *,
    shuffle: bool = True,
    seed: int | None = 0,
    pack: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    num_shards: int | None = None,
    use_cached: bool = False,
    converter: seqio.FeatureConverter | None = None,
) -> tf.data.Dataset:
    """Model features ([length] int32 each) of this process's shard of a task or mixture.

    Without shard arguments the shard is this JAX process's. num_epochs=None repeats forever.
    converter: the model's feature converter (t5pod.models.feature_converter); default encoder-decoder.
    """
    provider = get_task_or_mixture(name)
    if num_shards is None:
        shard_index, num_shards = jax.process_index(), jax.process_count()
    if not use_cached:
        _say_when_every_process_reads_everything(provider, split, num_shards)
    return seqio.get_dataset(
        name,
        task_feature_lengths=dict(task_feature_lengths),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        use_cached=use_cached,
        seed=seed,
        feature_converter=converter or feature_converter(pack),
    )


_said_once: set = set()


def _say_when_every_process_reads_everything(provider, split: str, num_shards: int):
    """seqio gives each process its own files when a source has at least as many files as there
    are processes; otherwise every process reads every file and keeps 1/num_shards of the examples.
    Said once per task and split, since it costs each host the whole corpus's reading."""
    if num_shards < 2:
        return
    for task in seqio.get_subtasks(provider):
        source = task.source
        if source.supports_arbitrary_sharding or (task.name, split) in _said_once:
            continue
        if split not in source.splits:
            continue
        files = len(source.list_shards(split))
        if files < num_shards:
            _said_once.add((task.name, split))
            logging.warning(
                "%s: %d file(s) for %d processes, so every process reads all of them and keeps "
                "1/%d of the examples. Split the data into at least %d files for each process to "
                "read only its own.",
                task.name,
                files,
                num_shards,
                num_shards,
                num_shards,
            )


def batched(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class CheckpointableIterator:
    """Numpy batches from a tf.data dataset, with a position that can be saved and restored.

    save(prefix) writes the iterator state (including shuffle buffers) to files starting with
    prefix; restore(prefix) continues exactly from there.
    """

    def __init__(self, dataset: tf.data.Dataset):
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in next(self._iterator).items()}

    def save(self, prefix: str) -> str:
        tf.io.gfile.makedirs(os.path.dirname(prefix))
        return self._checkpoint.write(prefix)

    def restore(self, prefix: str):
        if not tf.io.gfile.glob(prefix + ".index"):
            raise FileNotFoundError(f"No saved data position at {prefix}.")
        self._checkpoint.read(prefix).assert_consumed()
