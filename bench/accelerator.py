"""`make bench` on a GPU or TPU: T5 1.1 base and large at 512/114 as they train on accelerators.

Parameters stay float32 and activations and matmuls run in bfloat16, as T5X trains. For each
model, `planning.fit_batch` finds the largest batch whose compiled step fits the device's memory
and the cheapest remat policy that fits it; the step is then timed, and MFU is the model FLOPs
(t5pod.flops) per second over the device's bfloat16 peak (flops.PEAK_BF16_FLOPS). Greedy decoding
is timed at the same batch (inputs of 512 tokens, up to 114 new ones).

BENCH_ACCELERATOR_PATH=1 runs this path on CPU too, with the tiny model, short sequences and the
memory in BENCH_DEVICE_MEMORY_BYTES: how the test suite keeps it working without an accelerator.
"""

import dataclasses
import re
import statistics
import time

import jax
import numpy as np
from flax import linen as nn

from t5pod import flops, inference, partitioning, planning, train_loop, trainer
from t5pod.configs import BatchConfig, InferConfig, MeshConfig, StepConfig

CONFIGS = ("t5_1_1/base", "t5_1_1/large")
LENGTHS = (512, 114)


def device_memory_bytes(device: jax.Device) -> int | None:
    """The memory JAX may use on the device (None where the platform does not say, e.g. CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def matmul_dtypes(lowered_text: str) -> list[str]:
    """The result element types of the dot products in a lowered (StableHLO) program: the dtype
    policy as written, before a backend rewrites it (XLA:CPU computes bfloat16 dots in float32)."""
    return sorted(set(re.findall(r"stablehlo\.dot_general .*-> tensor<(?:\d+x)*(\w+)>", lowered_text)))


def random_batch(high: int, batch: int, lengths) -> dict:
    """Train features [batch, length] int32 of random token ids in [2, high), fully weighted."""
    rng = np.random.default_rng(0)
    b = {
        "encoder_input_tokens": rng.integers(2, high, (batch, lengths[0])),
        "decoder_target_tokens": rng.integers(2, high, (batch, lengths[1])),
    }
    b["decoder_input_tokens"] = np.pad(b["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
    b["decoder_loss_weights"] = np.ones_like(b["decoder_target_tokens"])
    return {k: v.astype(np.int32) for k, v in b.items()}


class TrainStepTimer:
    """A compiled train step on `mesh`, run once on `batch` (random_batch's features); then
    `seconds(n)` runs n more steps and returns each one's seconds. `lowered`, `compiled` and
    `compile_s` (lowering and compiling) are kept for the figures; `state` is the latest."""

    def __init__(self, model_config, step: StepConfig, mesh, batch: dict):
        self.mesh = mesh
        setup = trainer.create_state(model_config, step, mesh)
        self.rules = setup.rules
        with mesh, nn.logical_axis_rules(self.rules):
            self.state = setup.init(jax.random.PRNGKey(0))
            train_step = trainer.make_train_step(step, setup, mesh)
            self.data = train_loop.global_batch(batch, mesh)
            start = time.perf_counter()
            self.lowered = train_step.lower(self.state, self.data, jax.random.PRNGKey(0))
            self.compiled = self.lowered.compile()
            self.compile_s = time.perf_counter() - start
        self.seconds(1)  # the first call also sets up the run's buffers

    def seconds(self, n: int) -> list[float]:
        times = []
        with self.mesh, nn.logical_axis_rules(self.rules):
            for i in range(n):
                start = time.perf_counter()
                self.state, metrics = self.compiled(self.state, self.data, jax.random.PRNGKey(i))
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - start)
        return times


def measure(name: str, model_config, lengths, memory_bytes: int, steps: int, min_rows_per_device: int) -> dict:
    """Fits the batch, then times train steps and greedy decoding on all devices (data axis)."""
    devices = jax.devices()
    model_config = dataclasses.replace(model_config, dtype="bfloat16", dropout_rate=0.0, scan_layers=True)
    step = StepConfig(
        BatchConfig({"inputs": lengths[0], "targets": lengths[1]}, len(devices)), mesh=MeshConfig((len(devices), 1))
    )
    fit = planning.fit_batch(model_config, step, memory_bytes, min_rows_per_device=min_rows_per_device)
    model_config = dataclasses.replace(model_config, remat_policy=fit["remat_policy"])
    step = planning.with_batch_size(step, fit["batch_size"])
    mesh = partitioning.make_mesh(step.mesh.shape, devices)
    timer = TrainStepTimer(model_config, step, mesh, random_batch(model_config.vocab_size, fit["batch_size"], lengths))
    times = timer.seconds(steps)
    params = timer.state.params
    step_s = statistics.median(times)
    peak = flops.peak_flops_per_device(devices[0]) * len(devices)
    step_flops = flops.train_flops_per_example(model_config, *lengths) * fit["batch_size"]
    row = {
        "config": name,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "dtypes": {
            "params": sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(params)}),
            "matmuls": matmul_dtypes(timer.lowered.as_text()),
        },
        "memory_bytes_per_device": memory_bytes,
        "remat_policy": fit["remat_policy"],
        "batch": fit["batch_size"],
        "planned_peak_bytes": fit["plan"]["peak_bytes"],
        "tried": fit["tried"],
        "lengths": list(lengths),
        "step_s": step_s,
        "train_tokens_per_s": fit["batch_size"] * sum(lengths) / step_s,
        "peak_flops": peak,
        "mfu": step_flops / step_s / peak,
    }
    row.update(decode_speed(model_config, params, mesh, fit["batch_size"], lengths))
    return row


def decode_speed(model_config, params, mesh, batch: int, lengths) -> dict:
    """Greedy tokens/s of the Predictor (what `infer` runs) on the run's parameters: a batch of
    random full-length inputs, up to lengths[1] new tokens each; tokens after a row's EOS are not counted."""
    config = InferConfig(
        checkpoint_path="",  # the parameters are given
        batch_size=batch,
        mesh=MeshConfig(tuple(mesh.devices.shape)),
        task_feature_lengths={"inputs": lengths[0], "targets": lengths[1]},
    )
    predictor = inference.Predictor(model_config, config, vocabulary=None, mesh=mesh, params=params)
    rows = random_batch(model_config.vocab_size, batch, lengths)["encoder_input_tokens"][:, :-1].tolist()
    start = time.perf_counter()
    predictions = predictor.predict_batch(rows)  # compiles
    compile_s = time.perf_counter() - start
    generated = sum(min(len(p) + 1, lengths[1]) for p in predictions)  # each EOS included
    times = []
    for _ in range(3):
        start = time.perf_counter()
        predictor.predict_batch(rows)
        times.append(time.perf_counter() - start)
    return {
        "decode_batch": batch,
        "decode_compile_s": compile_s,
        "decode_generated_tokens": generated,
        "decode_tokens_per_s": generated / statistics.median(times),
    }


def format_rows(rows: list[dict]) -> str:
    lines = [
        f"{'config':14} {'device':24} {'dtype':>9} {'remat':>9} {'batch':>5} {'step s':>7} {'tokens/s':>9} "
        f"{'MFU':>6} {'decode tok/s':>12}"
    ]
    for r in rows:
        lines.append(
            f"{r['config']:14} {r['device_kind'][:24]:24} {'bf16/f32':>9} {r['remat_policy']:>9} "
            f"{r['batch']:5d} {r['step_s']:7.3f} {r['train_tokens_per_s']:9.0f} {r['mfu']:6.1%} "
            f"{r['decode_tokens_per_s']:12.0f}"
        )
    return "\n".join(lines)
