"""The loop of training steps: each step runs the compiled train step on a global batch, adds its
metrics to a window kept on the device, then runs the hooks that are due (Levanter's
`add_hook(fn, every=N)`): logging, evaluation, checkpoints are hooks that trainer.py makes."""

import contextlib
import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from t5pod import distributed, partitioning, train_step


class TrainingError(RuntimeError):
    pass


def batch_sharding(mesh):
    return NamedSharding(mesh, PartitionSpec(partitioning.DATA))


def global_batch(local_batch: dict, mesh) -> dict:
    """The global batch from this process's rows (each process holds batch/process_count rows)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


@dataclasses.dataclass(frozen=True)
class Hook:
    """An action the loop runs after the steps `due` accepts: action(step, state). `part` names
    the goodput part its time counts as (goodput.PARTS; "productive": part of the steps)."""

    action: Callable
    due: Callable  # step -> bool
    part: str = "productive"


def _untimed(part: str):
    return contextlib.nullcontext()


def periodic(every: int, *also: int) -> Callable:
    """Due every `every` steps (0: never) and at the steps in `also`."""
    return lambda step: bool(every) and step % every == 0 or step in also


class MetricWindow:
    """The train metrics since the last log line, summed on the device step by step (no blocking);
    each step's loss is checked for NaN while the next step runs."""

    def __init__(self, report: dict, peak_flops: float, tokens_per_step: int, first_step: int):
        self.report, self.peak_flops, self.tokens_per_step = report, peak_flops, tokens_per_step
        self.first_step, self.sums, self.pending = first_step, None, None
        self.start, self.steps, self.first_window = time.time(), 0, True

    def add(self, step: int, metrics: dict):
        """step's metrics; call inside the transfer guard (the sums stay on the device)."""
        self.sums = metrics if self.sums is None else _add_sums(self.sums, metrics)
        previous, self.pending = self.pending, (step, metrics)
        self.steps += 1
        return previous

    def summary(self) -> dict:
        """The window's mean metrics, steps/s, tokens/s and MFU; starts a new window."""
        _check_finite(self.pending)
        elapsed = time.time() - self.start
        summary = train_step.summarize(jax.device_get(self.sums))
        summary["steps_per_s"] = self.steps / elapsed
        summary["tokens_per_s"] = self.steps * self.tokens_per_step / elapsed
        summary["mfu"] = self.report["model_flops_per_step"] * summary["steps_per_s"] / self.peak_flops
        self.first_window = self.steps == self.pending[0] - self.first_step  # it holds the pipeline's start-up
        self.sums, self.start, self.steps = None, time.time(), 0
        return summary


def loop(
    run,
    window: MetricWindow,
    hooks: list[Hook],
    stop_requested: Callable[[], bool],
    on_stop: Callable,
    timed: Callable = _untimed,
) -> int:
    """Steps run (a trainer.PreparedRun: its config, mesh, compiled step_fn, state, train_iterator
    and first_batch) from run.state to TRAIN_STEPS, running each hook when it is due. When
    stop_requested() on any process, every process calls on_stop(step, state) and returns early.
    timed(part) is a context manager around each batch's wait ("data_wait") and each hook (its
    part): goodput.Account.measure. Returns the last step; run.state is the last state."""
    config, mesh = run.config, run.mesh
    base_rng = jax.random.PRNGKey(config.random_seed)
    replicated = partitioning.replicated(mesh)
    state, first_batch = run.state, run.first_batch
    step = int(jax.device_get(state.step))
    while step < config.train_steps:
        with timed("data_wait"):
            local_batch, first_batch = (
                (first_batch, None) if first_batch is not None else (next(run.train_iterator), None)
            )
            batch = global_batch(local_batch, mesh)
        rng = jax.device_put(jax.random.fold_in(base_rng, step), replicated)
        # Everything the step reads is already on the devices: a hidden host<->device copy in the
        # step or the metric sums is an error, not a silent slowdown.
        with jax.transfer_guard("disallow"):
            state, metrics = run.step_fn(state, batch, rng)
            previous = window.add(step + 1, metrics)
        if previous is not None:  # the previous step's loss, read while this step runs
            _check_finite(previous)
        step += 1
        run.state = state
        for hook in hooks:
            if hook.due(step):
                with timed(hook.part):
                    hook.action(step, state)
        if distributed.agree(stop_requested()):
            on_stop(step, state)
            break
    return step


@jax.jit
def _add_sums(totals: dict, metrics: dict) -> dict:
    # learning_rate and grad_norm are reported for the window's last step, the sums over all.
    return {k: totals[k] + v if k.endswith("_sum") else v for k, v in metrics.items()}


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


def check_state_finite(step: int, params):
    """Refuses to go on (and so to checkpoint) parameters that became NaN or infinite: a save keeps
    only the newest checkpoints, so a poisoned one would push out the good ones."""
    if not bool(jax.device_get(_all_finite(params))):
        raise TrainingError(
            f"The parameters became NaN or infinite by step {step}; stopping before saving them. The last "
            "good checkpoint is kept; lower LEARNING_RATE or check the data."
        )


def _check_finite(pending):
    step, metrics = pending
    loss = float(jax.device_get(metrics["loss_sum"]))
    if not np.isfinite(loss):
        raise TrainingError(
            f"The loss became {loss} at step {step}; stopping. The last good checkpoint is kept; "
            "lower LEARNING_RATE or check the data."
        )
