"""Decoding and scoring on the device mesh, from a checkpoint or from a training run's parameters.

The parameters are restored straight into their shardings on the (data, model) mesh, laid out
by the same logical-axis rules as in training, and are never gathered onto one device. A decode
batch of INFER_BATCH_SIZE rows is split over `data`; each process supplies only the rows its
devices hold (`owns`) and every process gets all the batch's results back. Greedy, sampling,
beam search and scoring are each one jitted program.
"""

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from t5pod import checkpoints, decoding, models, partitioning
from t5pod.models import POOLED_FEATURES, mean_pooled_encoding
from t5pod.configs import InferConfig, T5Config


class InferenceError(ValueError):
    pass


def load_params(model_config: T5Config, checkpoint_path: str, abstract_params, step: int | None = None):
    """Parameters of a checkpoint (default: the newest), checked against the model config and
    restored into abstract_params's shardings."""
    try:
        return checkpoints.restore_params(checkpoint_path, model_config, abstract_params, step)
    except checkpoints.CheckpointError:
        raise
    except (ValueError, KeyError) as error:
        raise checkpoints.CheckpointError(
            f"The checkpoint in {checkpoint_path} does not fit the gin model or cannot be read "
            f"({checkpoints.describe_read_error(error)}). Pass the model gin file it was trained with, or point "
            "CHECKPOINT_PATH at an intact checkpoint."
        ) from None
    except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds for a damaged file
        raise checkpoints.CheckpointError(
            f"The checkpoint in {checkpoint_path} cannot be read ({checkpoints.describe_read_error(error)}); point "
            "CHECKPOINT_PATH at an intact checkpoint."
        ) from None


def _pad_rows(ids: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Token rows (without EOS) cut to length - 1, each closed by EOS, right-padded with 0."""
    out = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        row = list(row[: length - 1]) + [decoding.EOS]
        out[i, : len(row)] = row
    return out


def _decode_function(model, config: InferConfig):
    """(params, encoder_input_tokens [batch, length_in], rng) -> (tokens [batch, decode], scores [batch])."""
    c = config
    if c.beam_size > 1:

        def decode(params, inputs, rng):
            tokens, scores = decoding.beam_search(model, params, inputs, c.max_decode_length, c.beam_size, c.alpha)
            return tokens[:, 0], scores[:, 0]

        return decode
    return lambda params, inputs, rng: decoding.sample_decode(
        model, params, inputs, c.max_decode_length, rng, c.temperature, c.top_k
    )


@dataclasses.dataclass(frozen=True)
class MeshLayout:
    """Where parameters and decode batches live on a mesh."""

    mesh: jax.sharding.Mesh
    rules: tuple
    abstract_params: object  # jax.ShapeDtypeStruct leaves carrying their shardings
    param_shardings: object
    rows: NamedSharding  # a batch's leading axis split over `data`

    @property
    def replicated(self) -> NamedSharding:
        return partitioning.replicated(self.mesh)


def mesh_layout(model_config: T5Config, mesh, fsdp: bool, axis_rules: tuple = ()) -> MeshLayout:
    rules = partitioning.logical_rules(fsdp, axis_rules)
    boxed = models.abstract_variables(model_config)["params"]
    shardings = nn.unbox(partitioning.param_shardings(boxed, mesh, rules))
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
    )
    partitioning.check_divisible(abstract, shardings, mesh)
    return MeshLayout(mesh, rules, abstract, shardings, NamedSharding(mesh, PartitionSpec(partitioning.DATA)))


def local_rows(rows: NamedSharding, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the batch rows this process's devices hold (all rows when data is 1)."""
    indices = rows.addressable_devices_indices_map((batch_size,)).values()
    starts = sorted({index[0].indices(batch_size)[:2] for index in indices})
    start, stop = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != stop - start:
        raise InferenceError(
            "This process's rows of the decode batch are not contiguous; use a mesh whose data "
            "axis is ordered by process (partitioning.make_mesh)."
        )
    return start, stop


class Predictor:
    """A model, its sharded parameters and compiled decode/score programs for one InferConfig.

    params: a training run's parameters, already laid out on `mesh` (in-training evaluation);
    by default the checkpoint at config.checkpoint_path (its newest step, or `step`) is restored
    onto config's mesh.
    """

    def __init__(
        self, model_config: T5Config, config: InferConfig, vocabulary, mesh=None, params=None, step: int | None = None
    ):
        self.config, self.vocabulary, self.model_config = config, vocabulary, model_config
        self.model = models.build(model_config)
        mesh = mesh if mesh is not None else partitioning.mesh_of(config.mesh)
        partitioning.check_batch(config.batch_size, mesh, "INFER_BATCH_SIZE")
        self.layout = mesh_layout(model_config, mesh, config.mesh.fsdp, config.mesh.logical_axis_rules)
        self.params = (
            params
            if params is not None
            else load_params(model_config, config.checkpoint_path, self.layout.abstract_params, step)
        )
        self.local_rows = local_rows(self.layout.rows, config.batch_size)
        layout, model = self.layout, self.model
        self._decode = jax.jit(
            _decode_function(model, config),
            in_shardings=(layout.param_shardings, layout.rows, layout.replicated),
            out_shardings=layout.replicated,
        )
        self._score = jax.jit(
            lambda params, batch: decoding.score(model, params, batch),
            in_shardings=(layout.param_shardings, layout.rows),
            out_shardings=layout.replicated,
        )
        self._pooled = {
            features: jax.jit(
                functools.partial(mean_pooled_encoding, model, features=features),
                in_shardings=(layout.param_shardings, layout.rows),
                out_shardings=layout.replicated,
            )
            for features in POOLED_FEATURES
        }

    def load_step(self, step: int):
        """Switches to another checkpoint of the same run (no recompilation)."""
        self.params = load_params(self.model_config, self.config.checkpoint_path, self.layout.abstract_params, step)

    def owns(self, index: int) -> bool:
        """Whether this process encodes row `index` of the input (rows are dealt out in batches)."""
        start, stop = self.local_rows
        return start <= index % self.config.batch_size < stop

    def _local(self, rows: list, length: int) -> np.ndarray:
        """This process's share of a batch of token rows (None: another process's row), padded."""
        rows = list(rows) + [None] * (self.config.batch_size - len(rows))
        start, stop = self.local_rows
        return _pad_rows([r or [] for r in rows[start:stop]], length)

    def _global(self, local: np.ndarray):
        return jax.make_array_from_process_local_data(
            self.layout.rows, local, (self.config.batch_size,) + local.shape[1:]
        )

    def _run(self, function, *args):
        with self.layout.mesh, nn.logical_axis_rules(self.layout.rules):
            return function(*args)

    def decode_batch(self, input_ids: list, number: int = 0) -> tuple[list[list[int]], list[float]]:
        """(token ids without EOS, scores) for up to INFER_BATCH_SIZE rows of input ids (without EOS;
        None for rows this process does not own). A score is the log-likelihood of the tokens
        (beam search: divided by the length penalty). `number` varies the sampling seed."""
        rng = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(self.config.seed), number), self.layout.replicated)
        inputs = self._global(self._local(input_ids, self.config.input_length))
        tokens, scores = self._run(self._decode, self.params, inputs, rng)
        rows = len(input_ids)
        return (
            [decoding.strip_after_eos(row) for row in _host(tokens)[:rows]],
            [float(s) for s in _host(scores)[:rows]],
        )

    def predict_batch(self, input_ids: list, number: int = 0) -> list[list[int]]:
        return self.decode_batch(input_ids, number)[0]

    def score_batch(self, input_ids: list, target_ids: list) -> list[float]:
        """Log-likelihood of each target (EOS included) given its input; None for others' rows."""
        features = models.scoring_features(
            self.model_config,
            self._local(input_ids, self.config.input_length),
            self._local(target_ids, self.config.target_length),
        )
        batch = {k: self._global(v) for k, v in features.items()}
        return [float(s) for s in _host(self._run(self._score, self.params, batch))[: len(input_ids)]]

    def encode_batch(self, input_ids: list, features: str = "encoder") -> np.ndarray:
        """Mean-pooled encoder outputs (or input embeddings: features="embeddings") [rows, embed]
        (float32) for up to INFER_BATCH_SIZE rows of input ids."""
        inputs = self._global(self._local(input_ids, self.config.input_length))
        if features not in self._pooled:
            raise ValueError(f"pooled features are one of {POOLED_FEATURES}, not {features!r}.")
        return np.asarray(_host(self._run(self._pooled[features], self.params, inputs))[: len(input_ids)], np.float32)

    def encode_ids(self, input_ids: list, features: str = "encoder") -> np.ndarray:
        """encode_batch over any number of rows, in order: [rows, embed]."""
        size = self.config.batch_size
        return np.concatenate(
            [self.encode_batch(input_ids[start : start + size], features) for start in range(0, len(input_ids), size)]
        )

    def predict_ids(self, input_ids: list, on_batch=None) -> list[list[int]]:
        """predict_batch over any number of rows, in order; on_batch(rows) after each batch."""
        size, predictions = self.config.batch_size, []
        for number, start in enumerate(range(0, len(input_ids), size)):
            batch = input_ids[start : start + size]
            predictions += self.predict_batch(batch, number)
            if on_batch:
                on_batch(len(batch))
        return predictions

    def score_ids(self, input_ids: list, target_ids: list) -> list[float]:
        size = self.config.batch_size
        return [
            s
            for start in range(0, len(input_ids), size)
            for s in self.score_batch(input_ids[start : start + size], target_ids[start : start + size])
        ]


def _host(array) -> np.ndarray:
    """A replicated result as a host array (every process holds a full copy)."""
    return np.asarray(array.addressable_data(0))


def check_fits(ids: Sequence[int], length: int, feature: str, where: str):
    """Scores are of whole sequences: one that does not fit (with its EOS) is an error, not a cut."""
    if len(ids) + 1 > length:
        raise InferenceError(
            f"{where}: its {feature} are {len(ids) + 1} tokens with EOS, more than TASK_FEATURE_LENGTHS['{feature}'] = "
            f"{length}; score with --gin.TASK_FEATURE_LENGTHS set to at least {len(ids) + 1} for {feature!r}."
        )


def decode_memory(model_config: T5Config, config: InferConfig, mesh) -> dict:
    """Per-device bytes of the compiled decode program for config's batch, lengths and beam size,
    compiled against abstract parameters (nothing is allocated): parameters, arguments, outputs,
    temporaries (the key/value cache and logits) and the peak."""
    layout = mesh_layout(model_config, mesh, config.mesh.fsdp, config.mesh.logical_axis_rules)
    partitioning.check_batch(config.batch_size, mesh, "INFER_BATCH_SIZE")
    decode = jax.jit(
        _decode_function(models.build(model_config), config),
        in_shardings=(layout.param_shardings, layout.rows, layout.replicated),
        out_shardings=layout.replicated,
    )
    inputs = jax.ShapeDtypeStruct((config.batch_size, config.input_length), jnp.int32, sharding=layout.rows)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=layout.replicated)
    start = time.time()
    with mesh, nn.logical_axis_rules(layout.rules):
        compiled = decode.lower(layout.abstract_params, inputs, rng).compile()
    memory = compiled.memory_analysis()
    sizes = {
        key: int(getattr(memory, f"{key}_size_in_bytes", 0)) if memory is not None else 0
        for key in ("argument", "output", "alias", "temp")
    }
    params = sum(
        int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * jnp.dtype(leaf.dtype).itemsize
        for leaf in jax.tree_util.tree_leaves(layout.abstract_params)
    )
    return {
        "decode_params_bytes": params,
        "decode_argument_bytes": sizes["argument"],
        "decode_output_bytes": sizes["output"],
        "decode_temp_bytes": sizes["temp"],
        "decode_peak_bytes": sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"],
        "decode_batch_size": config.batch_size,
        "decode_length": config.max_decode_length,
        "decode_beam_size": config.beam_size,
        "decode_compile_s": time.time() - start,
    }
