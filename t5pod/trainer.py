"""The training driver, top to bottom: checks -> mesh -> data -> model and optimizer -> sharded
state -> restore -> compile -> loop (log, evaluate, checkpoint, preemption) -> final save."""

import dataclasses
import functools
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from t5pod import checkpoints, metric_writers, network, optimizer, partitioning, train_step
from t5pod.data import pipeline
from t5pod.config import T5Config


class TrainingError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model. Gin binds it from the run macros."""

    model_dir: str
    mixture_or_task_name: str
    task_feature_lengths: dict
    train_steps: int
    batch_size: int
    learning_rate: float = 1.0
    schedule: str = "rsqrt"
    warmup_steps: int = 10_000
    checkpoint_period: int = 1000
    keep_checkpoints: int | None = None
    log_period: int = 100
    eval_period: int = 0  # 0: no evaluation during training
    eval_steps: int = 20
    eval_split: str = "validation"
    initial_checkpoint_path: str | None = None
    mesh_shape: tuple = (-1, 1)
    fsdp: bool = False
    random_seed: int = 0
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    num_microbatches: int = 1
    loss_normalizing_factor: float | None = None
    pack: bool = True
    use_cached: bool = False
    # Paper §3.5.1 fine-tuning methods: 'adapters' trains only adapters and layer norms;
    # gradual_unfreezing unfreezes one layer per stack (from the top) in equal episodes.
    trainable: str = "all"
    gradual_unfreezing: bool = False
    async_checkpointing: bool = True


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


def _batch_sharding(mesh):
    return NamedSharding(mesh, PartitionSpec(partitioning.DATA))


def _global_batch(local_batch: dict, mesh) -> dict:
    """The global batch from this process's rows (each process holds batch/process_count rows)."""
    sharding = _batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def _data_iterator(config: TrainConfig, model_config: T5Config, split: str, shuffle: bool, num_epochs=None):
    dataset = pipeline.get_dataset(config.mixture_or_task_name, config.task_feature_lengths, split, shuffle=shuffle,
                               seed=config.random_seed, pack=config.pack, num_epochs=num_epochs,
                               use_cached=config.use_cached, decoder_only=model_config.is_decoder_only)
    return pipeline.CheckpointableIterator(pipeline.batched(dataset, config.batch_size // jax.process_count()))


def create_state_fns(model_config: T5Config, config: TrainConfig, mesh):
    """(abstract state, state shardings, jitted init) without allocating anything."""
    model = network.build(model_config)
    schedule = optimizer.learning_rate_schedule(config.schedule, config.learning_rate, config.warmup_steps)
    rules = partitioning.logical_rules(config.fsdp)
    lengths = config.task_feature_lengths
    features = network.dummy_features(model_config, 1, lengths["inputs"], lengths["targets"])

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
    return model, tx, schedule, rules, abstract, shardings, jax.jit(init, out_shardings=shardings)


def make_optimizer(config: TrainConfig, model_config: T5Config, schedule, params):
    """Adafactor, restricted to the parameters the fine-tuning method trains."""
    if model_config.is_decoder_only:
        num_layers = {"": model_config.num_layers}
    else:
        num_layers = {"encoder": model_config.num_layers, "decoder": model_config.decoder_layers,
                      "shared": model_config.num_layers}
    unfreeze_every = 0
    if config.gradual_unfreezing:
        unfreeze_every = -(-config.train_steps // max(num_layers.values()))  # equal episodes, one per layer
    return optimizer.fine_tuning_optimizer(lambda: optimizer.adafactor(schedule), params, trainable=config.trainable,
                                           unfreeze_every=unfreeze_every, num_layers=num_layers)


def _initial_params(path: str, model_config: T5Config, params, abstract_params):
    """Pretrained parameters from path; adapters the checkpoint lacks keep their initialisation."""
    _, metadata = checkpoints.read_metadata(path)
    if model_config.adapter_dim and not metadata.get("architecture", {}).get("adapter_dim", 0):
        without = dataclasses.replace(model_config, adapter_dim=0)
        restored = checkpoints.restore_params(path, without, _drop_adapters(abstract_params))
        return _overlay(params, restored)
    return checkpoints.restore_params(path, model_config, abstract_params)


def _drop_adapters(tree):
    if not isinstance(tree, dict):
        return tree
    return {k: _drop_adapters(v) for k, v in tree.items() if k != "adapter"}


def _overlay(base, update):
    if not isinstance(base, dict):
        return update
    return {k: _overlay(v, update[k]) if k in update else v for k, v in base.items()}


def make_train_step(config: TrainConfig, model, tx, schedule, shardings, mesh):
    """train_step jitted once with explicit shardings; the state is donated."""
    return jax.jit(
        functools.partial(train_step.train_step, model=model, optimizer=tx, schedule=schedule,
                          z_loss=config.z_loss, label_smoothing=config.label_smoothing,
                          num_microbatches=config.num_microbatches,
                          loss_normalizing_factor=config.loss_normalizing_factor),
        in_shardings=(shardings, _batch_sharding(mesh), partitioning.replicated(mesh)),
        out_shardings=(shardings, partitioning.replicated(mesh)), donate_argnums=(0,))


class _Preemption:
    """SIGTERM (maintenance, spot reclaim) asks the loop to save and stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _check_model_dir(config: TrainConfig, model_config: T5Config) -> int | None:
    """The step to resume from, refusing a MODEL_DIR that holds another model."""
    step = checkpoints.latest_step(config.model_dir) if checkpoints._isdir(os.path.join(config.model_dir, "checkpoints")) else None
    if step is not None:
        _, metadata = checkpoints.read_metadata(config.model_dir, step)
        try:
            checkpoints.check_architecture(metadata, model_config, config.model_dir)
        except checkpoints.CheckpointError as error:
            raise checkpoints.CheckpointError(
                f"MODEL_DIR {config.model_dir} holds checkpoints of another model; refusing to overwrite or "
                f"restore them. Use a new MODEL_DIR or the model.gin that matches. ({error})") from None
    return step


def train(config: TrainConfig, model_config: T5Config, operative_config: str = "") -> dict:
    """Trains until config.train_steps (or SIGTERM); returns the last logged train metrics."""
    mesh = validate(config)
    resume_step = _check_model_dir(config, model_config)
    is_writer = jax.process_index() == 0
    writer = metric_writers.MetricWriter(config.model_dir, enabled=is_writer)
    if is_writer and operative_config:
        metric_writers.write_text(os.path.join(config.model_dir, "config.gin"), operative_config)

    writer.print(f"Training {config.mixture_or_task_name} into {config.model_dir} on {jax.device_count()} "
                 f"{jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}.")
    model, tx, schedule, rules, abstract, shardings, init_fn = create_state_fns(model_config, config, mesh)
    train_iterator = _data_iterator(config, model_config, "train", shuffle=True)
    checkpointer = checkpoints.TrainCheckpointer(config.model_dir, config.keep_checkpoints, config.async_checkpointing)
    metadata = {"architecture": model_config.checkpoint_fields(), "mixture_or_task_name": config.mixture_or_task_name,
                "process_count": jax.process_count()}

    with mesh, nn.logical_axis_rules(rules):
        if resume_step is not None:
            params, opt_state, saved = checkpointer.restore(resume_step, abstract)
            state = train_step.TrainState(step=jax.device_put(jnp.asarray(resume_step, jnp.int32), shardings.step),
                                          params=params, opt_state=opt_state)
            if saved.get("process_count", 1) == jax.process_count():
                train_iterator.restore(checkpointer.data_position(resume_step, jax.process_index()))
            else:  # each process's shard of the stream changed: the position no longer applies
                writer.print(f"Warning: the checkpoint was written by {saved.get('process_count')} processes, this "
                             f"run has {jax.process_count()}; the input stream restarts from its seed.")
            writer.print(f"Resumed from {config.model_dir}/checkpoints/{resume_step} (step {resume_step}).")
        else:
            state = init_fn(jax.random.PRNGKey(config.random_seed))
            if config.initial_checkpoint_path:
                params = _initial_params(config.initial_checkpoint_path, model_config, state.params, abstract.params)
                state = state.replace(params=params)
                writer.print(f"Initialised parameters from {config.initial_checkpoint_path} (optimizer reset).")

        step_fn = make_train_step(config, model, tx, schedule, shardings, mesh)
        eval_fn = jax.jit(functools.partial(train_step.eval_step, model=model, z_loss=config.z_loss),
                          in_shardings=(shardings.params, _batch_sharding(mesh)),
                          out_shardings=partitioning.replicated(mesh))
        base_rng = jax.random.PRNGKey(config.random_seed)
        step = first_step = int(jax.device_get(state.step))
        tokens_per_step = config.batch_size * sum(config.task_feature_lengths.values())

        preemption = _Preemption()
        last_summary, pending, window_sums = {}, None, None
        window_start, window_steps, run_start = time.time(), 0, time.time()
        try:
            while step < config.train_steps:
                batch = _global_batch(next(train_iterator), mesh)
                state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step))
                # Look at the previous step's metrics while this one runs: no blocking on the device.
                if pending is not None:
                    _check_finite(pending)
                pending = (step + 1, metrics)
                # Sums over the logging window stay on the device until they are logged.
                window_sums = metrics if window_sums is None else _add_sums(window_sums, metrics)
                step += 1
                window_steps += 1
                if step % config.log_period == 0 or step == config.train_steps or step == 1:
                    _check_finite(pending)
                    elapsed = time.time() - window_start
                    last_summary = train_step.summarize(jax.device_get(window_sums))
                    window_sums = None
                    last_summary["steps_per_s"] = window_steps / elapsed
                    last_summary["tokens_per_s"] = window_steps * tokens_per_step / elapsed
                    writer.write(step, last_summary)
                    eta = (config.train_steps - step) / max(last_summary["steps_per_s"], 1e-9)
                    speed = (f"{last_summary['steps_per_s']:.2f} steps/s  {last_summary['tokens_per_s']:.0f} tokens/s  "
                             f"ETA {metric_writers.format_duration(eta)}") if window_steps < step - first_step else \
                        "(first steps include compilation)"
                    writer.print(f"step {step}/{config.train_steps}  loss {last_summary['loss']:.4f}  "
                                 f"acc {last_summary['accuracy']:.3f}  z_loss {last_summary['z_loss']:.2e}  "
                                 f"lr {last_summary['learning_rate']:.2e}  {speed}")
                    window_start, window_steps = time.time(), 0
                if config.eval_period and step % config.eval_period == 0:
                    _evaluate(config, model_config, eval_fn, state.params, mesh, writer, step)
                stopping = _agree(preemption.requested)
                if step % config.checkpoint_period == 0 or step == config.train_steps or stopping:
                    checkpointer.save(step, state, metadata, train_iterator, jax.process_index())
                if stopping:
                    checkpointer.wait()
                    writer.print(f"Preempted (SIGTERM): saved a checkpoint at step {step}; run the same command "
                                 "to resume.")
                    break
        finally:
            preemption.restore()
            checkpointer.close()
            writer.close()
        total = time.time() - run_start
        writer.print(f"Done at step {step} in {metric_writers.format_duration(total)}. Checkpoints: "
                     f"{config.model_dir}/checkpoints; metrics: {config.model_dir}/metrics.jsonl; "
                     f"TensorBoard: tensorboard --logdir {config.model_dir}")
    return {"step": step, **last_summary}


@jax.jit
def _add_sums(totals: dict, metrics: dict) -> dict:
    # learning_rate and grad_norm are reported for the window's last step, the sums over all.
    return {k: totals[k] + v if k.endswith("_sum") else v for k, v in metrics.items()}


def _agree(flag: bool) -> bool:
    """Every process stops together if any was asked to (SIGTERM may reach only some)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.array([flag], np.int32))))


def _check_finite(pending):
    step, metrics = pending
    loss = float(jax.device_get(metrics["loss_sum"]))
    if not np.isfinite(loss):
        raise TrainingError(f"The loss became {loss} at step {step}; stopping. The last good checkpoint is kept; "
                            "lower LEARNING_RATE or check the data.")


def _evaluate(config: TrainConfig, model_config: T5Config, eval_fn, params, mesh, writer, step: int):
    """Teacher-forced loss and accuracy on EVAL_STEPS batches of the evaluation split."""
    iterator = _data_iterator(config, model_config, config.eval_split, shuffle=False, num_epochs=1)
    totals = None
    for _ in range(config.eval_steps):
        try:
            batch = _global_batch(next(iterator), mesh)
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
