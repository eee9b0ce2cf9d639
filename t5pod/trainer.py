"""The training driver, top to bottom: checks -> mesh -> data -> model and optimizer -> sharded
state -> restore -> compile -> loop (log, evaluate, checkpoint, preemption) -> final save."""

import dataclasses
import functools
import re
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

import optax
import tensorflow as tf
from jax.experimental import multihost_utils

from t5pod import (
    checkpoints, distributed, evaluation, flops, inference, metric_writers, models, optimizer, partitioning,
    progress, run_dir, run_lock, train_step,
)
from t5pod.configs import InferConfig, T5Config, TrainConfig
from t5pod.data import pipeline


class TrainingError(RuntimeError):
    pass


def validate(config: TrainConfig):
    """Checks that need no compilation: mesh against devices, batch against data parallelism."""
    mesh = partitioning.make_mesh(config.mesh_shape)  # raises a clear error if it does not divide
    data_parallel = mesh.shape[partitioning.DATA]
    if config.batch_size % data_parallel:
        raise ValueError(f"BATCH_SIZE {config.batch_size} is not divisible by the data-parallel mesh size "
                         f"{data_parallel}; use a multiple of {data_parallel}.")
    if config.batch_size % jax.process_count():
        raise ValueError(f"BATCH_SIZE {config.batch_size} is not divisible by the {jax.process_count()} processes.")
    if (config.batch_size // data_parallel) % config.num_microbatches:
        raise ValueError(f"NUM_MICROBATCHES {config.num_microbatches} does not divide the per-replica batch "
                         f"{config.batch_size // data_parallel}.")
    if config.trainable not in optimizer.TRAINABLE:
        raise ValueError(f"Unknown TRAINABLE {config.trainable!r}; use one of {optimizer.TRAINABLE}.")
    if config.train_steps <= 0 or config.log_period <= 0 or config.checkpoint_period <= 0:
        raise ValueError("TRAIN_STEPS, LOG_PERIOD and CHECKPOINT_PERIOD must be positive.")
    return mesh


def batch_sharding(mesh):
    return NamedSharding(mesh, PartitionSpec(partitioning.DATA))


def global_batch(local_batch: dict, mesh) -> dict:
    """The global batch from this process's rows (each process holds batch/process_count rows)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def _data_iterator(config: TrainConfig, model_config: T5Config, split: str, shuffle: bool, num_epochs=None):
    dataset = pipeline.get_dataset(config.mixture_or_task_name, config.task_feature_lengths, split, shuffle=shuffle,
                                   seed=config.random_seed, pack=config.pack, num_epochs=num_epochs,
                                   use_cached=config.use_cached,
                                   converter=models.feature_converter(model_config, config.pack))
    return pipeline.CheckpointableIterator(pipeline.batched(dataset, config.batch_size // jax.process_count()))


@dataclasses.dataclass(frozen=True)
class StateSetup:
    """A run's model, optimizer and sharded train state, described without allocating anything.

    abstract_state holds jax.ShapeDtypeStruct leaves carrying their shardings; init(rng) builds
    the state directly in those shardings (never whole on one device).
    """

    model: nn.Module
    optimizer: optax.GradientTransformation
    schedule: Callable
    rules: tuple
    abstract_state: train_step.TrainState
    shardings: train_step.TrainState
    init: Callable


def create_state(model_config: T5Config, config: TrainConfig, mesh) -> StateSetup:
    """The StateSetup of a run on mesh."""
    model = models.build(model_config)
    schedule = optimizer.learning_rate_schedule(config.schedule, config.learning_rate, config.warmup_steps)
    rules = partitioning.logical_rules(config.fsdp)
    lengths = config.task_feature_lengths
    features = models.dummy_features(model_config, 1, lengths["inputs"], lengths["targets"])

    boxed = jax.eval_shape(lambda rng: model.init(rng, **features)["params"], jax.random.PRNGKey(0))
    tx = make_optimizer(config, model_config, schedule, nn.unbox(boxed))

    def init(rng):
        params = nn.unbox(model.init(rng, **features)["params"])
        return train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    param_shardings = nn.unbox(partitioning.param_shardings(boxed, mesh, rules))
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = train_step.TrainState(
        step=partitioning.replicated(mesh), params=param_shardings,
        opt_state=partitioning.optimizer_state_shardings(abstract.opt_state, abstract.params, param_shardings, mesh))
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return StateSetup(model, tx, schedule, rules, abstract, shardings, jax.jit(init, out_shardings=shardings))


def make_optimizer(config: TrainConfig, model_config: T5Config, schedule, params):
    """Adafactor, restricted to the parameters the fine-tuning method trains."""
    num_layers = models.layers_per_stack(model_config)
    unfreeze_every = 0
    if config.gradual_unfreezing:
        unfreeze_every = -(-config.train_steps // max(num_layers.values()))  # equal episodes, one per layer
    return optimizer.fine_tuning_optimizer(lambda: optimizer.adafactor(schedule), params, trainable=config.trainable,
                                           unfreeze_every=unfreeze_every, num_layers=num_layers)


def _initial_params(path: str, model_config: T5Config, params, abstract_params):
    """Pretrained parameters from path; adapters the checkpoint lacks keep their initialisation."""
    try:
        return _read_initial_params(path, model_config, params, abstract_params)
    except checkpoints.CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds for a bad folder
        raise checkpoints.CheckpointError(
            f"INITIAL_CHECKPOINT_PATH {path} cannot be read ({checkpoints.describe_read_error(error)}); point it at a "
            "run's MODEL_DIR or a convert-hf OUT_DIR.") from None


def _read_initial_params(path: str, model_config: T5Config, params, abstract_params):
    _, metadata = checkpoints.read_metadata(path)
    if model_config.adapter_dim and not metadata.get("architecture", {}).get("adapter_dim", 0):
        without = dataclasses.replace(model_config, adapter_dim=0)
        restored = checkpoints.restore_params(path, without, _drop_adapters(abstract_params))
        return _overlay(params, restored)
    return checkpoints.restore_params(path, model_config, abstract_params)


def keep_fresh(initial, fresh, patterns: tuple):
    """initial's parameters, except those whose path ('decoder/layers_0/self_attention/query/kernel')
    fully matches one of patterns: those keep their value in fresh."""
    if not patterns:
        return initial
    paths = traverse_util.flatten_dict(fresh, sep="/")
    for pattern in patterns:
        if not any(re.fullmatch(pattern, path) for path in paths):
            examples = ", ".join(sorted(paths)[:3])
            raise ValueError(f"INITIAL_CHECKPOINT_SKIP pattern {pattern!r} matches no parameter; paths look like "
                             f"{examples}, e.g. 'decoder/.*' for the whole decoder.")
    kept = traverse_util.flatten_dict(initial, sep="/")
    chosen = {path: value if any(re.fullmatch(p, path) for p in patterns) else kept[path] for path, value in paths.items()}
    return traverse_util.unflatten_dict(chosen, sep="/")


def _drop_adapters(tree):
    if not isinstance(tree, dict):
        return tree
    return {k: _drop_adapters(v) for k, v in tree.items() if k != "adapter"}


def _overlay(base, update):
    if not isinstance(base, dict):
        return update
    return {k: _overlay(v, update[k]) if k in update else v for k, v in base.items()}


def make_train_step(config: TrainConfig, setup: StateSetup, mesh):
    """train_step jitted once with explicit shardings; the state is donated."""
    return jax.jit(
        functools.partial(train_step.train_step, model=setup.model, optimizer=setup.optimizer,
                          schedule=setup.schedule, z_loss=config.z_loss, label_smoothing=config.label_smoothing,
                          num_microbatches=config.num_microbatches,
                          loss_normalizing_factor=config.loss_normalizing_factor),
        in_shardings=(setup.shardings, batch_sharding(mesh), partitioning.replicated(mesh)),
        out_shardings=(setup.shardings, partitioning.replicated(mesh)), donate_argnums=(0,))


def compile_train_step(config: TrainConfig, model_config: T5Config, setup: StateSetup, mesh) -> tuple:
    """(the compiled train step, its report) before any data is read.

    The report, per device: argument, output, aliased (donated) and temporary bytes of the
    compiled program and its peak; the model FLOPs of one step (t5pod.flops, the figure MFU is
    measured against) and the compiler's own FLOP count; the compile time. Call inside the mesh
    and logical-rules context.
    """
    batch = models.batch_spec(model_config, config.batch_size, config.task_feature_lengths, config.pack)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh)) for k, v in batch.items()}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioning.replicated(mesh))
    start = time.time()
    compiled = make_train_step(config, setup, mesh).lower(setup.abstract_state, batch, rng).compile()
    compile_s = time.time() - start
    memory = compiled.memory_analysis()
    sizes = {key: int(getattr(memory, f"{key}_size_in_bytes", 0)) if memory is not None else 0
             for key in ("argument", "output", "alias", "temp")}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost or {}
    lengths = config.task_feature_lengths
    report = {
        "argument_bytes": sizes["argument"], "output_bytes": sizes["output"], "alias_bytes": sizes["alias"],
        "temp_bytes": sizes["temp"], "peak_bytes": sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"],
        "model_flops_per_step": flops.train_flops_per_example(model_config, lengths["inputs"], lengths["targets"])
        * config.batch_size,
        "compiled_flops_per_device": float(cost.get("flops", 0.0)), "compile_s": compile_s,
    }
    return compiled, report


def format_step_report(report: dict) -> str:
    gib = 2 ** 30
    return (f"Compiled the train step in {report['compile_s']:.1f} s; per device: arguments "
            f"{report['argument_bytes'] / gib:.3f} GiB, outputs {report['output_bytes'] / gib:.3f} GiB, temporaries "
            f"{report['temp_bytes'] / gib:.3f} GiB, peak {report['peak_bytes'] / gib:.3f} GiB; "
            f"{report['model_flops_per_step'] / 1e12:.4g} model TFLOP per step.")


class _Preemption:
    """SIGTERM (maintenance, spot reclaim) asks the loop to save and stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _first_batch(iterator, config: TrainConfig) -> dict:
    """One batch, read before anything is written: a task whose data cannot be read fails here."""
    try:
        return next(iterator)
    except StopIteration:
        raise TrainingError(f"{config.mixture_or_task_name} gave no full batch of {config.batch_size} examples; "
                            "check its data files or lower BATCH_SIZE.") from None
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        raise TrainingError(f"Reading the first batch of {config.mixture_or_task_name} failed: "
                            f"{' '.join(str(error).split())[:300]}") from None


def train(config: TrainConfig, model_config: T5Config, operative_config: str = "") -> dict:
    """Trains until config.train_steps (or SIGTERM); returns the last logged train metrics.

    Everything is checked before the first byte goes to MODEL_DIR: the mesh, the folder, the task
    and one batch of its data, the compiled step, the checkpoint to resume from or start from. A
    start that fails leaves MODEL_DIR as it was.
    """
    mesh = validate(config)
    if config.inference_eval and config.eval_period and not evaluation.tasks_with_metrics(
            config.mixture_or_task_name, config.eval_split):
        raise ValueError(f"INFERENCE_EVAL=True, but no task of {config.mixture_or_task_name} has metrics and a "
                         f"{config.eval_split!r} split; set --gin.INFERENCE_EVAL=False (loss-only evaluation).")
    run_dir.check_model_dir(config)
    is_writer = jax.process_index() == 0
    writer = metric_writers.MetricWriter(config.model_dir, enabled=is_writer, create=False)
    setup = create_state(model_config, config, mesh)
    abstract, shardings = setup.abstract_state, setup.shardings
    train_iterator = _data_iterator(config, model_config, "train", shuffle=True)
    first_batch = _first_batch(train_iterator, config)
    metadata = {"architecture": model_config.checkpoint_fields(), "mixture_or_task_name": config.mixture_or_task_name,
                "process_count": jax.process_count(),
                "data_settings": run_dir.stream_settings(config)}

    with mesh, nn.logical_axis_rules(setup.rules):
        # Compiled before any state exists, so that a step that does not fit fails first.
        step_fn, report = compile_train_step(config, model_config, setup, mesh)
        peak_flops = flops.peak_flops_per_device(jax.local_devices()[0]) * jax.device_count()
        resume_step, params, opt_state, saved, broken = run_dir.resume_point(config, model_config, abstract, writer)
        if resume_step is not None:
            state = train_step.TrainState(step=jax.device_put(jnp.asarray(resume_step, jnp.int32), shardings.step),
                                          params=params, opt_state=opt_state)
            first_batch = None  # the stream continues from the saved position instead
            if saved.get("process_count", 1) != jax.process_count():  # each process's shard changed
                writer.print(f"Warning: the checkpoint was written by {saved.get('process_count')} processes, this "
                             f"run has {jax.process_count()}; the input stream restarts from its seed.")
            elif config.restart_data_stream:
                writer.print("RESTART_DATA_STREAM=True: the input stream restarts from its seed.")
            else:
                run_dir.check_stream_settings(config, saved, resume_step)
                checkpoints.restore_data_position(config.model_dir, resume_step, train_iterator,
                                                  jax.process_index())
        else:
            state = setup.init(jax.random.PRNGKey(config.random_seed))
            if config.initial_checkpoint_path:
                params = _initial_params(config.initial_checkpoint_path, model_config, state.params, abstract.params)
                state = state.replace(params=keep_fresh(params, state.params, config.initial_checkpoint_skip))

        lease = run_lock.RunLease(config.model_dir, config.lease_timeout_s)
        preemption, checkpointer = _Preemption(), None
        try:
            # Everything is checked: from here on the run writes to MODEL_DIR. The other processes
            # must have read it first, or they could see process 0's first writes.
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("t5pod: all processes checked MODEL_DIR")
            if is_writer:
                lease.acquire()
                run_dir.write_operative_config(config.model_dir, operative_config, resume_step)
                for step_number, _ in broken:
                    writer.print(f"Moved unreadable checkpoint {step_number} to "
                                 f"{checkpoints.move_to_broken(config.model_dir, step_number)}.")
            writer.open()
            writer.write_run_settings(resume_step or 0, operative_config, {
                **{f"train/{k}": v for k, v in dataclasses.asdict(config).items()},
                **{f"model/{k}": v for k, v in dataclasses.asdict(model_config).items()}})
            checkpointer = checkpoints.TrainCheckpointer(config.model_dir, config.keep_checkpoints,
                                                         config.async_checkpointing)
            writer.print(f"Training {config.mixture_or_task_name} into {config.model_dir} on {jax.device_count()} "
                         f"{jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}.")
            writer.print(format_step_report(report) + f" {flops.describe_peak(jax.local_devices()[0])}.")
            if resume_step is not None:
                writer.print(f"Resumed from {config.model_dir}/{checkpoints.CHECKPOINTS_FOLDER}/{resume_step} "
                             f"(step {resume_step}).")
            elif config.initial_checkpoint_path:
                skipped = (f"; freshly initialised: {', '.join(config.initial_checkpoint_skip)}"
                           if config.initial_checkpoint_skip else "")
                writer.print(f"Initialised parameters from {config.initial_checkpoint_path} (optimizer reset{skipped}).")

            eval_fn = jax.jit(functools.partial(train_step.eval_step, model=setup.model, z_loss=config.z_loss),
                              in_shardings=(shardings.params, batch_sharding(mesh)),
                              out_shardings=partitioning.replicated(mesh))
            base_rng = jax.random.PRNGKey(config.random_seed)
            step = first_step = int(jax.device_get(state.step))
            writer.write(step, report, split="compile", summary=False)
            tokens_per_step = config.batch_size * sum(config.task_feature_lengths.values())
            replicated = partitioning.replicated(mesh)

            last_summary, pending, window_sums, predictor = {}, None, None, None
            window_start, window_steps, run_start = time.time(), 0, time.time()
            while step < config.train_steps:
                if first_batch is not None:
                    local_batch, first_batch = first_batch, None
                else:
                    local_batch = next(train_iterator)
                batch = global_batch(local_batch, mesh)
                rng = jax.device_put(jax.random.fold_in(base_rng, step), replicated)
                # Everything the step reads is already on the devices: a hidden host<->device copy
                # in the step or the metric sums is an error, not a silent slowdown.
                with jax.transfer_guard("disallow"):
                    state, metrics = step_fn(state, batch, rng)
                    # Sums over the logging window stay on the device until they are logged.
                    window_sums = metrics if window_sums is None else _add_sums(window_sums, metrics)
                # Look at the previous step's metrics while this one runs: no blocking on the device.
                if pending is not None:
                    _check_finite(pending)
                pending = (step + 1, metrics)
                step += 1
                window_steps += 1
                if step % config.log_period == 0 or step == config.train_steps or step == 1:
                    _check_finite(pending)
                    elapsed = time.time() - window_start
                    last_summary = train_step.summarize(jax.device_get(window_sums))
                    window_sums = None
                    last_summary["steps_per_s"] = window_steps / elapsed
                    last_summary["tokens_per_s"] = window_steps * tokens_per_step / elapsed
                    last_summary["mfu"] = report["model_flops_per_step"] * last_summary["steps_per_s"] / peak_flops
                    writer.write(step, last_summary)
                    eta = (config.train_steps - step) / max(last_summary["steps_per_s"], 1e-9)
                    speed = (f"{last_summary['steps_per_s']:.2f} steps/s  {last_summary['tokens_per_s']:.0f} tokens/s  "
                             f"MFU {last_summary['mfu']:.1%}  ETA {progress.format_duration(eta)}") \
                        if window_steps < step - first_step else "(first steps include the input pipeline's start-up)"
                    writer.print(f"step {step}/{config.train_steps}  loss {last_summary['loss']:.4f}  "
                                 f"acc {last_summary['accuracy']:.3f}  z_loss {last_summary['z_loss']:.2e}  "
                                 f"lr {last_summary['learning_rate']:.2e}  {speed}")
                    window_start, window_steps = time.time(), 0
                if config.eval_period and step % config.eval_period == 0:
                    _evaluate(config, model_config, eval_fn, state.params, mesh, writer, step)
                    if config.inference_eval:
                        predictor = predictor or _training_predictor(config, model_config, mesh, state.params)
                        predictor.params = state.params
                        evaluation.run(predictor, config.mixture_or_task_name, config.eval_split,
                                       config.task_feature_lengths, step, config.model_dir, writer,
                                       config.inference_eval_examples, config.use_cached)
                stopping = distributed.agree(preemption.requested)
                if step % config.checkpoint_period == 0 or step == config.train_steps or stopping:
                    checkpointer.save(step, state, metadata, train_iterator, jax.process_index())
                if stopping:
                    checkpointer.wait()
                    writer.print(f"Preempted (SIGTERM): saved a checkpoint at step {step}; run the same command "
                                 "to resume.")
                    break
        finally:
            preemption.restore()
            if checkpointer is not None:
                checkpointer.close()
            writer.close()
            lease.release()
        total = time.time() - run_start
        writer.print(f"Done at step {step} in {progress.format_duration(total)}. Checkpoints: "
                     f"{config.model_dir}/checkpoints; metrics: {config.model_dir}/metrics.jsonl; "
                     f"TensorBoard: tensorboard --logdir {config.model_dir}")
    return {"step": step, **last_summary}


@jax.jit
def _add_sums(totals: dict, metrics: dict) -> dict:
    # learning_rate and grad_norm are reported for the window's last step, the sums over all.
    return {k: totals[k] + v if k.endswith("_sum") else v for k, v in metrics.items()}


def _check_finite(pending):
    step, metrics = pending
    loss = float(jax.device_get(metrics["loss_sum"]))
    if not np.isfinite(loss):
        raise TrainingError(f"The loss became {loss} at step {step}; stopping. The last good checkpoint is kept; "
                            "lower LEARNING_RATE or check the data.")


def _training_predictor(config: TrainConfig, model_config: T5Config, mesh, params) -> inference.Predictor:
    """Greedy decoding of the evaluation split on the training mesh, with the training batch size."""
    infer_config = InferConfig(checkpoint_path=config.model_dir, task_feature_lengths=config.task_feature_lengths,
                               batch_size=config.batch_size, mesh_shape=config.mesh_shape, fsdp=config.fsdp)
    return inference.Predictor(model_config, infer_config, vocabulary=None, mesh=mesh, params=params)


def _evaluate(config: TrainConfig, model_config: T5Config, eval_fn, params, mesh, writer, step: int):
    """Teacher-forced loss and accuracy on EVAL_STEPS batches of the evaluation split."""
    iterator = _data_iterator(config, model_config, config.eval_split, shuffle=False, num_epochs=1)
    totals = None
    for _ in range(config.eval_steps):
        try:
            batch = global_batch(next(iterator), mesh)
        except StopIteration:
            break
        sums = eval_fn(params, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
        writer.print(f"Evaluation split {config.eval_split} gave no full batch; skipped.")
        return
    summary = train_step.summarize(jax.device_get(totals))
    writer.write(step, summary, split=config.eval_split)
    writer.print(f"eval {config.eval_split} at step {step}: loss {summary['loss']:.4f}  acc {summary['accuracy']:.3f}")
