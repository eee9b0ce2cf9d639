"""What many tests share: the t5pod command run as its own process, a small training config on the
demo task, and the small model most training tests use. Worker scripts that tests start as
processes (multihost_worker.py, text_shard_worker.py) and the Hugging Face reference model
(hf_reference.py) live beside this file."""

import os
import pathlib
import subprocess
import sys

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


def run_cli(*args: str, devices: int = 1, cwd=REPO, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """`python -m t5pod ARGS` to completion, output captured as text."""
    return subprocess.run(
        t5pod_command(*args), capture_output=True, text=True, env=command_env(devices, **env), timeout=timeout, cwd=cwd
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


def train_config(model_dir, **overrides) -> TrainConfig:
    """Six steps of demo span corruption, 8 rows of 32 + 8 tokens, a checkpoint every 2 steps,
    a log line every step, checkpoints written synchronously; overrides replace any field."""
    settings = dict(
        model_dir=str(model_dir),
        mixture_or_task_name="demo_span_corruption",
        task_feature_lengths={"inputs": 32, "targets": 8},
        train_steps=6,
        batch_size=8,
        warmup_steps=100,
        checkpoint_period=2,
        log_period=1,
        async_checkpointing=False,
    )
    return TrainConfig(**{**settings, **overrides})
