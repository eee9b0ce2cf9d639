"""Training: schedule, Adafactor, sharded steps, exact resume, preemption, bad configuration."""

import dataclasses
import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import command_env, step_config, t5pod_command, train_config
from t5pod import tasks
from t5pod import checkpoints, optimizer, partitioning, train_loop, train_step, trainer
from t5pod.configs import T5Config

MODEL = T5Config(
    vocab_size=2176,
    d_model=32,
    d_kv=8,
    num_heads=4,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.1,
)


_SETTINGS = dict(task_feature_lengths={"inputs": 64, "targets": 16}, learning_rate=1.0, checkpoint_period=3)


def _config(model_dir, **overrides):
    """The shared small config with this file's longer rows and a checkpoint every 3 steps."""
    return train_config(model_dir, **{**_SETTINGS, **overrides})


def _step(**overrides):
    """The train step of _config, without a run."""
    return step_config(**{**_SETTINGS, **overrides})


def test_rsqrt_and_constant_schedules():
    rsqrt = optimizer.learning_rate_schedule("rsqrt", 1.0, 10_000)
    assert [float(rsqrt(s)) for s in (0, 10_000, 40_000)] == pytest.approx([0.01, 0.01, 0.005])
    assert float(optimizer.learning_rate_schedule("constant", 1e-3)(123)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="Unknown learning-rate schedule 'cosine'"):
        optimizer.learning_rate_schedule("cosine", 1.0)


def test_adafactor_first_update_by_hand():
    rng = np.random.default_rng(0)
    param = rng.normal(size=(4, 3)).astype(np.float32)
    grad = rng.normal(size=(4, 3)).astype(np.float32)
    tx = optimizer.adafactor(0.1, min_dim_size_to_factor=2)
    update, _ = tx.update(jnp.asarray(grad), tx.init(jnp.asarray(param)), jnp.asarray(param))
    # Step 1: decay 1 - 1^-0.8 = 0, so the moments are this gradient's. The larger axis (rows,
    # 4) is averaged away for the row factor's complement: v_row[i] = mean_j g^2, v_col[j] = mean_i g^2.
    g2 = grad.astype(np.float64) ** 2 + 1e-30
    v_row, v_col = g2.mean(axis=1), g2.mean(axis=0)
    v = np.outer(v_row, v_col) / v_row.mean()
    u = grad / np.sqrt(v)
    u = u / max(1.0, np.sqrt(np.mean(u**2)) / 1.0)  # clip the update's RMS at 1
    u = u * 0.1 * max(np.sqrt(np.mean(param.astype(np.float64) ** 2)), 1e-3)  # lr x parameter scale
    np.testing.assert_allclose(np.asarray(update), -u, rtol=1e-5)


def _fixed_batch(batch=8, inputs=64, targets=16):
    rng = np.random.default_rng(0)
    b = {
        "encoder_input_tokens": rng.integers(2, 2000, (batch, inputs)),
        "decoder_target_tokens": rng.integers(2, 2000, (batch, targets)),
    }
    b["encoder_input_tokens"][:, 50:] = 0
    b["decoder_target_tokens"][:, 12:] = 0
    b["decoder_input_tokens"] = np.pad(b["decoder_target_tokens"][:, :-1], ((0, 0), (1, 0)))
    b["decoder_loss_weights"] = (b["decoder_target_tokens"] > 0).astype(np.int32)
    return {k: v.astype(np.int32) for k, v in b.items()}


def _one_step(mesh_shape, fsdp=False, num_microbatches=1, model_config=MODEL):
    config = _step(mesh_shape=mesh_shape, fsdp=fsdp, num_microbatches=num_microbatches)
    mesh = partitioning.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])  # (1, 1): one device
    setup = trainer.create_state(model_config, config, mesh)
    with mesh, jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else mesh:
        from flax import linen as nn

        with nn.logical_axis_rules(setup.rules):
            state = setup.init(jax.random.PRNGKey(0))
            step = trainer.make_train_step(config, setup, mesh)
            batch = jax.device_put(_fixed_batch(), train_loop.batch_sharding(mesh))
            state, metrics = step(state, batch, jax.random.PRNGKey(1))
    return jax.device_get(state.params), train_step.summarize(jax.device_get(metrics)), state


@pytest.fixture(scope="module")
def single_device_step():
    return _one_step((1, 1))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape,fsdp", [((4, 2), False), ((8, 1), False), ((4, 2), True)])
def test_sharded_steps_equal_one_device(single_device_step, mesh_shape, fsdp):
    want_params, want_metrics, _ = single_device_step
    params, metrics, state = _one_step(mesh_shape, fsdp)
    assert metrics["loss"] == pytest.approx(want_metrics["loss"], abs=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want_params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]
    expected = jax.sharding.PartitionSpec("data" if fsdp else None, "model")
    assert wi.sharding.spec == expected


@pytest.mark.slow
def test_microbatches_give_the_same_step():
    no_dropout = dataclasses.replace(MODEL, dropout_rate=0.0)  # microbatches draw their own dropout masks
    want_params, want_metrics, _ = _one_step((1, 1), model_config=no_dropout)
    params, metrics, _ = _one_step((1, 1), num_microbatches=4, model_config=no_dropout)
    assert metrics["loss"] == pytest.approx(want_metrics["loss"], abs=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want_params)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def _rows(model_dir, split="train"):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


@pytest.mark.slow
def test_restore_onto_another_mesh(tmp_path):
    tasks.register_all()
    no_dropout = dataclasses.replace(MODEL, dropout_rate=0.0)  # dropout masks follow the mesh's layout
    trainer.train(_config(tmp_path / "straight", train_steps=4, mesh_shape=(4, 2)), no_dropout)
    trainer.train(_config(tmp_path / "run", train_steps=3, mesh_shape=(4, 2)), no_dropout)
    summary = trainer.train(_config(tmp_path / "run", train_steps=4, mesh_shape=(2, 4)), no_dropout)
    assert summary["step"] == 4
    straight = {r["step"]: r["loss"] for r in _rows(tmp_path / "straight")}
    moved = {r["step"]: r["loss"] for r in _rows(tmp_path / "run")}
    assert sorted(moved) == [1, 2, 3, 4] and len(set(straight.values())) == 4
    # The same parameters and batches on another layout: equal up to the order of float sums.
    np.testing.assert_allclose([moved[s] for s in range(1, 5)], [straight[s] for s in range(1, 5)], rtol=1e-5)


def test_another_models_directory_is_refused(pretrained_demo_run):
    tasks.register_all()
    before = sorted(os.listdir(pretrained_demo_run / "checkpoints"))
    # The shared run holds the demo's tiny model (d_model 128, d_ff 256); MODEL is another.
    with pytest.raises(checkpoints.CheckpointError, match="holds checkpoints of another model.*d_ff"):
        trainer.train(_config(pretrained_demo_run, train_steps=4), MODEL)
    assert sorted(os.listdir(pretrained_demo_run / "checkpoints")) == before


def test_bad_mesh_and_batch_are_clear_errors_before_anything_is_written(tmp_path):
    for overrides, message in [
        ({"mesh_shape": (3, 2)}, "does not divide the 8 available devices"),
        ({"mesh_shape": (4, 2), "batch_size": 6}, "BATCH_SIZE 6 is not divisible by the data-parallel mesh size 4"),
        ({"trainable": "adapter"}, "Unknown TRAINABLE 'adapter'"),
    ]:
        with pytest.raises(ValueError, match=message):
            trainer.train(_config(tmp_path / "run", **overrides), MODEL)
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def _nan_from_step(monkeypatch, first_nan_step: int):
    """A schedule whose learning rate is NaN from the update of step first_nan_step on (the
    settings refuse a NaN LEARNING_RATE, so the schedule itself is replaced)."""
    monkeypatch.setattr(
        trainer.optimizer,
        "learning_rate_schedule",
        lambda *args, **kwargs: lambda step: jnp.where(step + 1 >= first_nan_step, jnp.nan, 1e-3),
    )


def test_nan_loss_stops_naming_the_step(tmp_path, monkeypatch):
    tasks.register_all()
    # A NaN learning rate makes the first update NaN, so the second step's loss is NaN.
    _nan_from_step(monkeypatch, 1)
    with pytest.raises(trainer.TrainingError, match="became (nan|NaN).* by step 1|became nan at step 2"):
        trainer.train(_config(tmp_path / "run", train_steps=3, checkpoint_period=100), MODEL)


@pytest.mark.slow
def test_a_poisoned_state_is_never_checkpointed_so_the_last_good_one_survives_pruning(tmp_path, monkeypatch):
    tasks.register_all()
    _nan_from_step(monkeypatch, 3)  # steps 1 and 2 update with 1e-3; step 3's update is NaN
    config = _config(tmp_path / "run", train_steps=5, checkpoint_period=1, keep_checkpoints=1)
    with pytest.raises(trainer.TrainingError, match="parameters became NaN or infinite by step 3"):
        trainer.train(config, MODEL)
    assert checkpoints.run_steps(str(tmp_path / "run")) == [2]
    mesh = partitioning.make_mesh((-1, 1))
    abstract = trainer.create_state(MODEL, config.step, mesh).abstract_state
    params, _, _ = checkpoints.restore_train_state(str(tmp_path / "run"), 2, abstract)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(params))


def _cli(model_dir, *flags, env_extra=None):
    command = t5pod_command(
        "train",
        "--gin_file=demo.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
        "--gin.BATCH_SIZE=8",
        "--gin.EVAL_PERIOD=0",
        *flags,
    )
    return command, command_env(PYTHONUNBUFFERED="1", **(env_extra or {}))


def _wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early: {process.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_saves_and_exits_zero(tmp_path, signal_number):
    command, env = _cli(
        tmp_path / "run", "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=100000", "--gin.LOG_PERIOD=1"
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists() and len(_rows(tmp_path / "run")) >= 3, process)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "KeyboardInterrupt" not in output, output
    assert f"Preempted ({signal.Signals(signal_number).name}): saved a checkpoint at step" in output
    reached = _rows(tmp_path / "run")[-1]["step"]
    assert checkpoints.latest_step(str(tmp_path / "run")) == reached


def _counting_run(train_steps: int, nan_at: int | None = None):
    """A run for train_loop.loop whose step adds 1 to the state's step; the metrics of step n: a
    loss sum of n over 2 target tokens (NaN at nan_at), 1 correct, learning rate n."""
    import types

    mesh = partitioning.make_mesh((-1, 1))

    @jax.jit
    def step_fn(state, batch, rng):
        n = (state.step + 1).astype(jnp.float32)
        loss = jnp.where(n == (nan_at or -1), jnp.nan, n)
        metrics = {
            "loss_sum": loss + 0 * batch["x"].sum(),
            "z_loss_sum": 0 * n,
            "correct_sum": 0 * n + 1,
            "weight_sum": 0 * n + 2,
            "learning_rate": n,
        }
        return state.replace(step=state.step + 1), metrics

    state = jax.device_put(
        train_step.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()), partitioning.replicated(mesh)
    )
    batches = iter([{"x": np.ones((8, 2), np.float32)}] * (train_steps + 1))
    config = types.SimpleNamespace(train_steps=train_steps, random_seed=0)
    return types.SimpleNamespace(
        config=config, mesh=mesh, step_fn=step_fn, state=state, train_iterator=batches, first_batch=next(batches)
    )


def test_the_loop_runs_each_hook_when_due_in_order_and_stops_when_asked():
    run, calls = _counting_run(10), []
    window = train_loop.MetricWindow({"model_flops_per_step": 1.0}, 1.0, 1, first_step=0)

    def log(step, state):
        summary = window.summary()  # the mean of the window's losses: (sum of its steps) / (2 per step)
        calls.append(("log", step, int(state.step), summary["loss"], summary["learning_rate"]))

    hooks = [
        train_loop.Hook(log, train_loop.periodic(3, 1, 10)),
        train_loop.Hook(lambda step, state: calls.append(("save", step)), train_loop.periodic(4, 10)),
    ]
    assert train_loop.loop(run, window, hooks, lambda: False, on_stop=None) == 10
    # Logs at 1, 3, 6, 9, 10: windows {1}, {2, 3}, {4, 5, 6}, {7, 8, 9}, {10}; saves at 4, 8, 10 after the log.
    assert calls == [
        ("log", 1, 1, 0.5, 1.0),
        ("log", 3, 3, 1.25, 3.0),
        ("save", 4),
        ("log", 6, 6, 2.5, 6.0),
        ("save", 8),
        ("log", 9, 9, 4.0, 9.0),
        ("log", 10, 10, 5.0, 10.0),
        ("save", 10),
    ]
    assert int(run.state.step) == 10

    run, calls = _counting_run(10), []
    window = train_loop.MetricWindow({"model_flops_per_step": 1.0}, 1.0, 1, first_step=0)
    asked = lambda: int(run.state.step) >= 5  # noqa: E731
    stopped = train_loop.loop(run, window, hooks[1:], asked, lambda step, state: calls.append(("stop", step)))
    assert stopped == 5 and calls == [("save", 4), ("stop", 5)]


def test_the_loop_names_the_step_whose_loss_is_not_finite():
    run = _counting_run(10, nan_at=3)
    window = train_loop.MetricWindow({"model_flops_per_step": 1.0}, 1.0, 1, first_step=0)
    with pytest.raises(train_loop.TrainingError, match="The loss became nan at step 3"):
        train_loop.loop(run, window, [], lambda: False, on_stop=None)
    assert int(run.state.step) == 3  # found while step 4 ran: its state is never handed to a hook
