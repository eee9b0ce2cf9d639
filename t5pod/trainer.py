"""The training driver, top to bottom: prepare (checks -> mesh -> data -> model and optimizer ->
sharded state -> compile -> restore), then a loop of steps that runs hooks when they are due (log,
evaluate, decode the evaluation split, checkpoint) and stops early on preemption."""

import dataclasses
import functools
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

import optax
import tensorflow as tf
from jax.experimental import multihost_utils

from t5pod import (
    checkpoints,
    configs,
    evaluation,
    flops,
    goodput,
    inference,
    metric_writers,
    models,
    optimizer,
    partitioning,
    progress,
    run_dir,
    run_lock,
    train_loop,
    train_step,
)
from t5pod.configs import InferConfig, StepConfig, T5Config, TrainConfig
from t5pod.train_loop import TrainingError
from t5pod.data import pipeline


def make_mesh(step: StepConfig):
    """The mesh of step.mesh on the available devices, once the batch is known to split over it:
    evenly over the data axis, the processes, and each replica's slice into microbatches."""
    mesh = partitioning.mesh_of(step.mesh)  # raises a clear error if it does not divide
    batch_size, data_parallel = step.batch.batch_size, mesh.shape[partitioning.DATA]
    partitioning.check_batch(batch_size, mesh, "BATCH_SIZE")
    if batch_size % jax.process_count():
        raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by the {jax.process_count()} processes.")
    if (batch_size // data_parallel) % step.optimizer.num_microbatches:
        raise ValueError(
            f"NUM_MICROBATCHES {step.optimizer.num_microbatches} does not divide the per-replica batch "
            f"{batch_size // data_parallel}."
        )
    return mesh


def _data_iterator(config: TrainConfig, model_config: T5Config, split: str, shuffle: bool, num_epochs=None):
    batch = config.batch
    dataset = pipeline.get_dataset(
        config.data.mixture_or_task_name,
        batch.task_feature_lengths,
        split,
        shuffle=shuffle,
        seed=config.random_seed,
        pack=batch.pack,
        num_epochs=num_epochs,
        use_cached=config.data.use_cached,
        converter=models.feature_converter(model_config, batch.pack),
    )
    return pipeline.CheckpointableIterator(pipeline.batched(dataset, batch.batch_size // jax.process_count()))


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


def create_state(model_config: T5Config, step: StepConfig, mesh) -> StateSetup:
    """The StateSetup of a train step on mesh."""
    model = models.build(model_config)
    settings = step.optimizer
    schedule = optimizer.learning_rate_schedule(settings.schedule, settings.learning_rate, settings.warmup_steps)
    rules = partitioning.logical_rules(step.mesh.fsdp, step.mesh.logical_axis_rules)
    lengths = step.batch.task_feature_lengths
    features = models.dummy_features(model_config, 1, lengths["inputs"], lengths["targets"])

    boxed = jax.eval_shape(lambda rng: model.init(rng, **features)["params"], jax.random.PRNGKey(0))
    tx = optimizer.for_run(
        schedule,
        nn.unbox(boxed),
        trainable=settings.trainable,
        gradual_unfreezing=settings.gradual_unfreezing,
        train_steps=step.train_steps,
        num_layers=models.layers_per_stack(model_config),
    )

    def init(rng):
        params = nn.unbox(model.init(rng, **features)["params"])
        return train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    param_shardings = nn.unbox(partitioning.param_shardings(boxed, mesh, rules))
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = train_step.TrainState(
        step=partitioning.replicated(mesh),
        params=param_shardings,
        opt_state=partitioning.optimizer_state_shardings(abstract.opt_state, abstract.params, param_shardings, mesh),
    )
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return StateSetup(model, tx, schedule, rules, abstract, shardings, jax.jit(init, out_shardings=shardings))


def make_train_step(step: StepConfig, setup: StateSetup, mesh):
    """train_step jitted once with explicit shardings; the state is donated."""
    settings = step.optimizer
    return jax.jit(
        functools.partial(
            train_step.train_step,
            model=setup.model,
            optimizer=setup.optimizer,
            schedule=setup.schedule,
            z_loss=settings.z_loss,
            label_smoothing=settings.label_smoothing,
            num_microbatches=settings.num_microbatches,
            loss_normalizing_factor=settings.loss_normalizing_factor,
        ),
        in_shardings=(setup.shardings, train_loop.batch_sharding(mesh), partitioning.replicated(mesh)),
        out_shardings=(setup.shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,),
    )


def compile_train_step(step: StepConfig, model_config: T5Config, setup: StateSetup, mesh) -> tuple:
    """(the compiled train step, its report) before any data is read.

    The report, per device: argument, output, aliased (donated) and temporary bytes of the
    compiled program and its peak; the model FLOPs of one step (t5pod.flops, the figure MFU is
    measured against) and the compiler's own FLOP count; the compile time. Call inside the mesh
    and logical-rules context.
    """
    lengths, batch_size = step.batch.task_feature_lengths, step.batch.batch_size
    batch = models.batch_spec(model_config, batch_size, lengths, step.batch.pack)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=train_loop.batch_sharding(mesh)) for k, v in batch.items()
    }
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioning.replicated(mesh))
    start = time.time()
    compiled = make_train_step(step, setup, mesh).lower(setup.abstract_state, batch, rng).compile()
    compile_s = time.time() - start
    memory = compiled.memory_analysis()
    sizes = {
        key: int(getattr(memory, f"{key}_size_in_bytes", 0)) if memory is not None else 0
        for key in ("argument", "output", "alias", "temp")
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost or {}
    report = {
        "argument_bytes": sizes["argument"],
        "output_bytes": sizes["output"],
        "alias_bytes": sizes["alias"],
        "temp_bytes": sizes["temp"],
        "peak_bytes": sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"],
        "model_flops_per_step": flops.train_flops_per_example(model_config, lengths["inputs"], lengths["targets"])
        * batch_size,
        "compiled_flops_per_device": float(cost.get("flops", 0.0)),
        "compile_s": compile_s,
    }
    return compiled, report


def format_step_report(report: dict) -> str:
    gib = 2**30
    return (
        f"Compiled the train step in {report['compile_s']:.1f} s; per device: arguments "
        f"{report['argument_bytes'] / gib:.3f} GiB, outputs {report['output_bytes'] / gib:.3f} GiB, temporaries "
        f"{report['temp_bytes'] / gib:.3f} GiB, peak {report['peak_bytes'] / gib:.3f} GiB; "
        f"{report['model_flops_per_step'] / 1e12:.4g} model TFLOP per step."
    )


class _Preemption:
    """SIGTERM (maintenance, spot reclaim) or Ctrl-C (SIGINT) asks the loop to save and stop after
    the current step; a second Ctrl-C while it saves is left to wait for the save as well."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = None  # the signal's name, once one came
        self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def _handle(self, signum, frame):
        self.requested = self.requested or signal.Signals(signum).name

    def restore(self):
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def _first_batch(iterator, config: TrainConfig) -> dict:
    """One batch, read before anything is written: a task whose data cannot be read fails here."""
    try:
        return next(iterator)
    except StopIteration:
        raise TrainingError(
            f"{config.data.mixture_or_task_name} gave no full batch of {config.batch.batch_size} examples; "
            "check its data files or lower BATCH_SIZE."
        ) from None
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        problem = " ".join(str(error).split())[:300]
        raise TrainingError(
            f"Reading the first batch of {config.data.mixture_or_task_name} failed: {problem}"
        ) from None


@dataclasses.dataclass
class PreparedRun:
    """A run ready to loop: everything checked, the state built or restored, the step compiled;
    nothing written to MODEL_DIR yet."""

    config: TrainConfig
    model_config: T5Config
    mesh: jax.sharding.Mesh
    setup: StateSetup
    step_fn: Callable  # (state, batch, rng) -> (state, metrics), compiled
    report: dict  # compile_train_step's
    state: train_step.TrainState
    train_iterator: pipeline.CheckpointableIterator
    first_batch: dict | None  # read during the checks; None when resuming (the stream continues)
    resume_step: int | None
    broken: list  # (step, error) of unreadable checkpoints, moved aside once the run may write
    metadata: dict  # saved with each checkpoint


def prepare(config: TrainConfig, model_config: T5Config, writer: metric_writers.MetricWriter) -> PreparedRun:
    """Every check a run makes before it writes: the mesh, MODEL_DIR, the task and one batch of its
    data, the compiled step (before any state exists, so that a step that does not fit fails
    first), then the state: restored from MODEL_DIR, or initialised (from INITIAL_CHECKPOINT_PATH)."""
    mesh = make_mesh(config.step)
    name, split = config.data.mixture_or_task_name, config.eval.split
    if config.eval.inference and config.eval.period and not evaluation.tasks_with_metrics(name, split):
        raise ValueError(
            f"INFERENCE_EVAL=True, but no task of {name} has metrics and a {split!r} split; set "
            "--gin.INFERENCE_EVAL=False (loss-only evaluation)."
        )
    run_dir.check_model_dir(config)
    setup = create_state(model_config, config.step, mesh)
    train_iterator = _data_iterator(config, model_config, "train", shuffle=True)
    first_batch = _first_batch(train_iterator, config)
    metadata = {
        "architecture": model_config.checkpoint_fields(),
        "mixture_or_task_name": config.data.mixture_or_task_name,
        "process_count": jax.process_count(),
        "data_settings": run_dir.stream_settings(config),
    }
    with mesh, nn.logical_axis_rules(setup.rules):
        step_fn, report = compile_train_step(config.step, model_config, setup, mesh)
        resume_step, params, opt_state, saved, broken = run_dir.resume_point(
            config, model_config, setup.abstract_state, writer
        )
        if resume_step is not None:
            state = train_step.TrainState(
                step=jax.device_put(jnp.asarray(resume_step, jnp.int32), setup.shardings.step),
                params=params,
                opt_state=opt_state,
            )
            first_batch = None
            if saved.get("process_count", 1) != jax.process_count():  # each process's shard changed
                writer.print(
                    f"Warning: the checkpoint was written by {saved.get('process_count')} processes, this "
                    f"run has {jax.process_count()}; the input stream restarts from its seed."
                )
            elif config.data.restart_data_stream:
                writer.print("RESTART_DATA_STREAM=True: the input stream restarts from its seed.")
            else:
                run_dir.check_stream_settings(config, saved, resume_step)
                _restore_data_position(config, resume_step, train_iterator)
        else:
            state = setup.init(jax.random.PRNGKey(config.random_seed))
            initial = config.checkpoint
            if initial.initial_path:
                params = checkpoints.read_initial_params(
                    initial.initial_path, model_config, state.params, setup.abstract_state.params
                )
                state = state.replace(params=checkpoints.keep_fresh(params, state.params, initial.initial_skip))
                if initial.initial_optimizer_state:
                    state = state.replace(opt_state=_initial_optimizer_state(config, setup, state.opt_state))
    return PreparedRun(
        config,
        model_config,
        mesh,
        setup,
        step_fn,
        report,
        state,
        train_iterator,
        first_batch,
        resume_step,
        broken,
        metadata,
    )


def standard_hooks(
    run: PreparedRun,
    writer,
    window: train_loop.MetricWindow,
    checkpointer,
    logged: dict,
    fence=lambda: None,
    account: goodput.Account | None = None,
) -> list[train_loop.Hook]:
    """Log (steps 1, every LOG_PERIOD, the last), evaluate and decode the evaluation split (every
    EVAL_PERIOD), checkpoint (every CHECKPOINT_PERIOD, the last): in this order after a step.
    fence() runs before each of them writes (MODEL_DIR's lease check: a run that lost it stops).
    With `account`, each log line also writes the attempt's goodput row."""
    config, model_config, mesh = run.config, run.model_config, run.mesh

    def log(step: int, state):
        fence()
        logged.clear()
        logged.update(window.summary())
        writer.write(step, logged)
        if account is not None:
            writer.write(step, account.row(step), split="goodput")
        eta = (config.train_steps - step) / max(logged["steps_per_s"], 1e-9)
        speed = (
            "(first steps include the input pipeline's start-up)"
            if window.first_window
            else f"{logged['steps_per_s']:.2f} steps/s  {logged['tokens_per_s']:.0f} tokens/s  "
            f"MFU {logged['mfu']:.1%}  ETA {progress.format_duration(eta)}"
        )
        writer.print(
            f"step {step}/{config.train_steps}  loss {logged['loss']:.4f}  acc {logged['accuracy']:.3f}  "
            f"z_loss {logged['z_loss']:.2e}  lr {logged['learning_rate']:.2e}  {speed}"
        )

    eval_fn = jax.jit(
        functools.partial(train_step.eval_step, model=run.setup.model, z_loss=config.optimizer.z_loss),
        in_shardings=(run.setup.shardings.params, train_loop.batch_sharding(mesh)),
        out_shardings=partitioning.replicated(mesh),
    )

    def evaluate(step: int, state):
        fence()
        _evaluate(config, model_config, eval_fn, state.params, mesh, writer, step)

    predictor = None

    def inference_eval(step: int, state):
        nonlocal predictor
        fence()
        predictor = predictor or _training_predictor(config, model_config, mesh, state.params)
        predictor.params = state.params
        evaluation.run(
            predictor,
            config.data.mixture_or_task_name,
            config.eval.split,
            config.batch.task_feature_lengths,
            step,
            config.model_dir,
            writer,
            config.eval.inference_examples,
            config.data.use_cached,
        )

    def save(step: int, state):
        fence()
        train_loop.check_state_finite(step, state.params)
        checkpointer.save(step, state, run.metadata, run.train_iterator, jax.process_index())

    hooks = [
        train_loop.Hook(log, train_loop.periodic(config.log_period, 1, config.train_steps)),
        train_loop.Hook(evaluate, train_loop.periodic(config.eval.period), "evaluation"),
    ]
    if config.eval.inference:
        hooks.append(train_loop.Hook(inference_eval, train_loop.periodic(config.eval.period), "inference_evaluation"))
    saves = train_loop.periodic(config.checkpoint.period, config.train_steps)
    return hooks + [train_loop.Hook(save, saves, "checkpoint")]


def train(config: TrainConfig, model_config: T5Config, operative_config: str = "") -> dict:
    """Trains until config.train_steps (or SIGTERM); returns the last logged train metrics.

    Everything is checked before the first byte goes to MODEL_DIR (prepare): a start that fails
    leaves MODEL_DIR as it was. Then the run takes MODEL_DIR's lease, writes its settings and loops
    with the standard hooks; SIGTERM saves a checkpoint and returns.
    """
    is_writer = jax.process_index() == 0
    writer = metric_writers.MetricWriter(config.model_dir, enabled=is_writer, create=False)
    run = prepare(config, model_config, writer)
    with run.mesh, nn.logical_axis_rules(run.setup.rules):
        lease = run_lock.RunLease(config.model_dir, config.lease_timeout_s)
        preemption, checkpointer, logged = _Preemption(), None, {}
        account, step = goodput.Account(int(jax.device_get(run.state.step))), None
        try:
            # Everything is checked: from here on the run writes to MODEL_DIR. The other processes
            # must have read it first, or they could see process 0's first writes.
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("t5pod: all processes checked MODEL_DIR")
            if is_writer:
                lease.acquire()
                run_dir.write_operative_config(config.model_dir, operative_config, run.resume_step)
                for step_number, _ in run.broken:
                    writer.print(
                        f"Moved unreadable checkpoint {step_number} to "
                        f"{checkpoints.move_to_broken(config.model_dir, step_number)}."
                    )
            writer.open()
            writer.write_run_settings(
                run.resume_step or 0,
                operative_config,
                {**configs.flat(config, "train/"), **configs.flat(model_config, "model/")},
            )
            checkpointer = checkpoints.TrainCheckpointer(
                config.model_dir, config.checkpoint.keep, config.checkpoint.asynchronous, config.checkpoint.keep_period
            )
            _print_start(run, writer)
            first_step = int(jax.device_get(run.state.step))
            writer.write(first_step, run.report, split="compile", summary=False)
            peak_flops = flops.peak_flops_per_device(jax.local_devices()[0]) * jax.device_count()
            window = train_loop.MetricWindow(
                run.report,
                peak_flops,
                config.batch.batch_size * sum(config.batch.task_feature_lengths.values()),
                first_step,
            )
            fence = lease.check if is_writer else lambda: None
            hooks = standard_hooks(run, writer, window, checkpointer, logged, fence, account)
            saves = hooks[-1]

            def stop(step: int, state):
                with account.measure("checkpoint"):
                    if not saves.due(step):
                        saves.action(step, state)
                    checkpointer.wait()
                writer.print(
                    f"Preempted ({preemption.requested}): saved a checkpoint at step {step}; run the same command "
                    "to resume."
                )

            run_start = time.time()
            account.loop_started()
            step = train_loop.loop(run, window, hooks, lambda: bool(preemption.requested), stop, account.measure)
            account.loop_ended()
        finally:
            preemption.restore()
            try:
                if checkpointer is not None:
                    with account.measure("checkpoint"):
                        checkpointer.close()  # the last save's failure, if any, surfaces here
            finally:
                last = step if step is not None else account.first_step  # None: stopped by an error
                final = account.row(last)
                if writer.opened:  # the attempt's last goodput row
                    writer.write(last, final, split="goodput")
                writer.close()
                lease.release()
        writer.print(
            f"Done at step {step} in {progress.format_duration(time.time() - run_start)}. Checkpoints: "
            f"{config.model_dir}/checkpoints; metrics: {config.model_dir}/metrics.jsonl; "
            f"TensorBoard: tensorboard --logdir {config.model_dir}"
        )
        writer.print(f"This attempt's {goodput.format_line(final)} (t5pod goodput MODEL_DIR: every attempt)")
    return {"step": step, **logged}


def _restore_data_position(config: TrainConfig, step: int, train_iterator):
    """The input stream's position saved with checkpoint `step`, or one line naming the fixes."""
    try:
        checkpoints.restore_data_position(config.model_dir, step, train_iterator, jax.process_index())
    except (FileNotFoundError, IndexError, ValueError, tf.errors.OpError) as error:
        where = checkpoints.data_position_path(config.model_dir, step, jax.process_index())
        raise checkpoints.CheckpointError(
            f"The input position saved with checkpoint {step} ({where}) cannot be read "
            f"({type(error).__name__}: {' '.join(str(error).split())[:150]}). Resume with "
            "--gin.RESTART_DATA_STREAM=True (the stream restarts from its seed), or move "
            f"{config.model_dir}/{checkpoints.CHECKPOINTS_FOLDER}/{step} aside to resume from the checkpoint before it."
        ) from None


def _initial_optimizer_state(config: TrainConfig, setup: StateSetup, fresh):
    """INITIAL_CHECKPOINT_PATH's Adafactor moments (and their count, which sets their decay, as T5X
    continues it) with the rest of `fresh`, this run's initial state: its schedule starts at 0."""
    if config.optimizer.trainable != "all" or config.optimizer.gradual_unfreezing:
        raise ValueError(
            "INITIAL_OPTIMIZER_STATE=True needs TRAINABLE='all' without GRADUAL_UNFREEZING (the saved state "
            "is of one Adafactor over every parameter)."
        )
    restored = checkpoints.read_initial_optimizer_state(config.checkpoint.initial_path, setup.abstract_state.opt_state)
    return (restored[0], *fresh[1:])


def _print_start(run: PreparedRun, writer):
    config = run.config
    writer.print(
        f"Training {config.data.mixture_or_task_name} into {config.model_dir} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), mesh {dict(run.mesh.shape)}, {run.model_config.dtype} "
        "activations (t5pod.T5Config.dtype)."
    )
    writer.print(format_step_report(run.report) + f" {flops.describe_peak(jax.local_devices()[0])}.")
    if run.resume_step is not None:
        writer.print(
            f"Resumed from {config.model_dir}/{checkpoints.CHECKPOINTS_FOLDER}/{run.resume_step} "
            f"(step {run.resume_step})."
        )
    elif config.checkpoint.initial_path:
        skip = config.checkpoint.initial_skip
        skipped = f"; freshly initialised: {', '.join(skip)}" if skip else ""
        writer.print(f"Initialised parameters from {config.checkpoint.initial_path} (optimizer reset{skipped}).")


def _training_predictor(config: TrainConfig, model_config: T5Config, mesh, params) -> inference.Predictor:
    """Greedy decoding of the evaluation split on the training mesh, with the training batch size."""
    infer_config = InferConfig(
        checkpoint_path=config.model_dir,
        task_feature_lengths=config.batch.task_feature_lengths,
        batch_size=config.batch.batch_size,
        mesh=config.mesh,
    )
    return inference.Predictor(model_config, infer_config, vocabulary=None, mesh=mesh, params=params)


def _evaluate(config: TrainConfig, model_config: T5Config, eval_fn, params, mesh, writer, step: int):
    """Teacher-forced loss and accuracy on EVAL_STEPS batches of the evaluation split."""
    split = config.eval.split
    iterator = _data_iterator(config, model_config, split, shuffle=False, num_epochs=1)
    totals = None
    for _ in range(config.eval.steps):
        try:
            batch = train_loop.global_batch(next(iterator), mesh)
        except StopIteration:
            break
        sums = eval_fn(params, batch)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    if totals is None:
        writer.print(f"Evaluation split {split} gave no full batch; skipped.")
        return
    summary = train_step.summarize(jax.device_get(totals))
    writer.write(step, summary, split=split)
    writer.print(f"eval {split} at step {step}: loss {summary['loss']:.4f}  acc {summary['accuracy']:.3f}")
