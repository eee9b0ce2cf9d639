"""What many tests share: the t5pod command run as its own process, a small training config on the
demo task, and the small model most training tests use. Worker scripts that tests start as
processes (multihost_worker.py, text_shard_worker.py) and the Hugging Face reference model
(hf_reference.py) live beside this file."""

import dataclasses
import os
import pathlib
import subprocess
import sys

from t5pod import configs
from t5pod.configs import T5Config, TrainConfig

# Not conftest's REPO: worker processes import this module, and conftest sets the test process's
# 8 fake devices when imported.
REPO = pathlib.Path(__file__).resolve().parent.parent.parent

# A 2-layer model small enough for a test step in milliseconds, with the demo vocabulary's size.
SMALL_MODEL = T5Config(vocab_size=2176, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, dropout_rate=0.0)


def command_env(devices: int = 1, **extra) -> dict:
    """The environment of a t5pod process: `devices` fake CPU devices (the tests' own 8 are not
    passed on unless asked for), plus extra variables."""
    flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return dict(os.environ, XLA_FLAGS=flags, **extra)


def t5pod_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "t5pod", *args]


def run_cli(
    *args: str, devices: int = 1, cwd=REPO, timeout: int = 600, file_size_limit: int | None = None, **env
) -> subprocess.CompletedProcess:
    """`python -m t5pod ARGS` to completion, output captured as text. file_size_limit: no file the
    process writes may grow past this many bytes; a write beyond fails as on a full disk (EFBIG),
    which needs no privileges, unlike mounting a small file system."""
    command = t5pod_command(*args)
    if file_size_limit:
        # Set in a fresh interpreter that then becomes t5pod (exec keeps the limit and the ignored
        # signal), not in a fork of this multithreaded test process.
        limit = (
            "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # fail, not die
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit})); "
            "os.execv(sys.executable, sys.argv[1:])"
        )
        command = [sys.executable, "-c", limit, *command]
    return subprocess.run(
        command, capture_output=True, text=True, env=command_env(devices, **env), timeout=timeout, cwd=cwd
    )


def start_cli(*args: str, devices: int = 1, cwd=REPO, **env) -> subprocess.Popen:
    """`python -m t5pod ARGS` started in the background, stdout and stderr together as text."""
    return subprocess.Popen(
        t5pod_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=command_env(devices, PYTHONUNBUFFERED="1", **env),
        cwd=cwd,
    )


# The flat names of the run macros, mapped onto the part of TrainConfig that holds each setting.
_PARTS = {
    "mixture_or_task_name": ("data", "mixture_or_task_name"),
    "use_cached": ("data", "use_cached"),
    "restart_data_stream": ("data", "restart_data_stream"),
    "task_feature_lengths": ("batch", "task_feature_lengths"),
    "batch_size": ("batch", "batch_size"),
    "pack": ("batch", "pack"),
    **{f.name: ("optimizer", f.name) for f in dataclasses.fields(configs.OptimizerConfig)},
    "mesh_shape": ("mesh", "shape"),
    "dcn_mesh_shape": ("mesh", "dcn_shape"),
    "fsdp": ("mesh", "fsdp"),
    "checkpoint_period": ("checkpoint", "period"),
    "keep_checkpoints": ("checkpoint", "keep"),
    "keep_period": ("checkpoint", "keep_period"),
    "async_checkpointing": ("checkpoint", "asynchronous"),
    "initial_checkpoint_path": ("checkpoint", "initial_path"),
    "initial_checkpoint_skip": ("checkpoint", "initial_skip"),
    "initial_optimizer_state": ("checkpoint", "initial_optimizer_state"),
    "eval_period": ("eval", "period"),
    "eval_steps": ("eval", "steps"),
    "eval_split": ("eval", "split"),
    "inference_eval": ("eval", "inference"),
    "inference_eval_examples": ("eval", "inference_examples"),
}
_PART_CLASSES = {
    "data": configs.DataConfig,
    "batch": configs.BatchConfig,
    "optimizer": configs.OptimizerConfig,
    "mesh": configs.MeshConfig,
    "checkpoint": configs.CheckpointConfig,
    "eval": configs.TrainEvalConfig,
}


def train_config(model_dir, **overrides) -> TrainConfig:
    """Six steps of demo span corruption, 8 rows of 32 + 8 tokens, a checkpoint every 2 steps,
    a log line every step, checkpoints written synchronously. overrides replace any setting, by
    its flat name (batch_size=4, mesh_shape=(4, 2), checkpoint_period=3: the names of _PARTS) or
    by TrainConfig's own fields (train_steps, random_seed, ...)."""
    settings = dict(
        mixture_or_task_name="demo_span_corruption",
        task_feature_lengths={"inputs": 32, "targets": 8},
        train_steps=6,
        batch_size=8,
        warmup_steps=100,
        checkpoint_period=2,
        log_period=1,
        async_checkpointing=False,
    )
    settings.update(overrides)
    parts, top = {name: {} for name in _PART_CLASSES}, {}
    for name, value in settings.items():
        if name in _PARTS:
            part, field = _PARTS[name]
            parts[part][field] = value
        else:
            top[name] = value
    return TrainConfig(
        model_dir=str(model_dir), **top, **{name: cls(**parts[name]) for name, cls in _PART_CLASSES.items()}
    )


def step_config(**overrides) -> configs.StepConfig:
    """The train step of train_config(**overrides), for tests that compile a step without a run."""
    return train_config("never-written", **overrides).step
