"""Multi-host training for real: several processes on localhost joined by jax.distributed."""

import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from t5pod import checkpoints, cli

HERE = os.path.dirname(__file__)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
    )


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("as_slices", [False, True], ids=["one_slice", "two_slices"])
def test_two_processes_equal_one_process(tmp_path, as_slices):
    """Two processes of 4 devices, as two hosts of one slice or as two slices joined by DCN
    (DCN_MESH_SHAPE (2, 1), processes standing for slices), train as one process of 8 devices."""
    port = _port()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "helpers", "multihost_worker.py"),
                str(tmp_path / "two.npz"),
                "2",
                str(i),
                str(port),
                *(["slices"] if as_slices else []),
            ],
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output
    # The one-process reference runs in this test process (8 fake devices, as conftest sets), after
    # the workers: beside them it slowed one worker's compile past gloo's fixed 30 s wait for its
    # peer at the first collective.
    argv, sys.argv = sys.argv, ["multihost_worker.py", str(tmp_path / "one.npz"), "1", "0", "0"]
    try:
        runpy.run_path(os.path.join(HERE, "helpers", "multihost_worker.py"), run_name="__main__")
    finally:
        sys.argv = argv
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    np.testing.assert_allclose(two["losses"], one["losses"], atol=1e-5)
    assert len(set(one["losses"].tolist())) == 3
    assert sorted(two.files) == sorted(one.files)
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], atol=1e-5, err_msg=name)


def _train(model_dir, num_processes, port, steps, extra=()):
    base = [
        sys.executable,
        "-m",
        "t5pod",
        "train",
        "--gin_file=demo.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
        "--gin.BATCH_SIZE=8",
        "--gin.MESH_SHAPE=(4, 2)",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.CHECKPOINT_PERIOD=2",
        "--gin.LOG_PERIOD=1",
        "--gin.EVAL_PERIOD=0",
        *extra,
    ]
    if num_processes == 1:
        return [
            subprocess.Popen(base, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        ]
    return [
        subprocess.Popen(
            base + [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        for i in range(2)
    ]


def _finish(processes, timeout=600):
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    return outputs


@pytest.mark.slow
@pytest.mark.e2e
def test_train_command_as_two_slices_and_checkpoints_across_process_counts_and_layouts(tmp_path):
    """Two processes standing for two slices (a (2, 2) mesh in each, DCN_MESH_SHAPE (2, 1)), then
    resumed by one process with the same (4, 2) mesh in one slice."""
    run = tmp_path / "run"
    outputs = _finish(_train(run, 2, _port(), 4, ["--gin.MESH_SHAPE=(2, 2)", "--gin.DCN_MESH_SHAPE=(2, 1)"]))
    assert "mesh {'data': 4, 'model': 2}" in outputs[0]
    assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]  # only process 0 reports
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [(r["split"], r["step"]) for r in rows if r["split"] != "goodput"] == [
        ("compile", 0),
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("train", 4),
    ]  # one writer
    goodput_steps = [r["step"] for r in rows if r["split"] == "goodput"]
    assert goodput_steps == sorted(goodput_steps) and goodput_steps[-1] == 4  # one writer's account
    assert checkpoints.all_steps(str(run)) == [2, 4]
    assert sorted(os.listdir(run / "data_positions" / "4")) == [
        "process_0.data-00000-of-00001",
        "process_0.index",
        "process_1.data-00000-of-00001",
        "process_1.index",
    ]
    # Saved by two processes, restored by one with 8 devices (this test process, as conftest sets;
    # the other direction, one process's checkpoint restored by two, is the multi-host eval test's).
    assert (
        cli.main(
            [
                "train",
                "--gin_file=demo.gin",
                f"--gin.MODEL_DIR='{run}'",
                "--gin.TRAIN_STEPS=6",
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
                "--gin.BATCH_SIZE=8",
                "--gin.MESH_SHAPE=(4, 2)",
                "--gin.CHECKPOINT_PERIOD=2",
                "--gin.LOG_PERIOD=1",
                "--gin.EVAL_PERIOD=0",
            ]
        )
        == 0
    )
    assert checkpoints.latest_step(str(run)) == 6
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_dead_process_stops_the_other_with_a_clear_error(tmp_path):
    processes = _train(tmp_path / "run", 2, _port(), 100000, ["--heartbeat_timeout_s=10"])
    deadline = time.time() + 300
    metrics = tmp_path / "run" / "metrics.jsonl"
    while not metrics.exists() or '"split": "train"' not in metrics.read_text():  # training has started
        assert time.time() < deadline and processes[0].poll() is None
        time.sleep(0.5)
    processes[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    output, _ = processes[0].communicate(timeout=120)
    assert processes[0].returncode not in (0, None)
    assert time.time() - killed_at < 60
    # Whichever notices first stops the process: a failed collective (t5pod's message), JAX's
    # coordination service (missing heartbeats), or gloo itself when the peer died mid-transfer
    # (a C++ abort no Python code can turn into a message).
    assert (
        "another process of this multi-host job stopped" in output
        or "This most likely indicates that another task died" in output
        or "Received data size doesn't match expected size" in output
    ), output[-3000:]


def _command_flags(kind, *flags):
    return [
        kind,
        "--gin_file=models/tiny.gin",
        "--gin.t5pod.T5Config.vocab_size=2176",
        "--gin.VOCABULARY_PATH='demo'",
        "--gin.INFER_BATCH_SIZE=8",
        "--gin.MESH_SHAPE=(4, 2)",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}",
        *flags,
    ]


def _command(kind, num_processes, port, process_id, *flags):
    """One of num_processes (2) processes of a multi-host infer or eval, 4 devices each."""
    command = [
        sys.executable,
        "-m",
        "t5pod",
        *_command_flags(kind, *flags),
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
    ]
    return subprocess.Popen(command, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


@pytest.mark.slow
@pytest.mark.e2e
def test_infer_and_eval_as_two_processes_equal_one_process(pretrained_demo_run, benchmark_rows, tmp_path):
    """Each process encodes its half of every batch; process 0 writes the same files as one process."""
    rows = tmp_path / "rows.txt"
    rows.write_text("".join(f"sentence number {i} of the test <extra_id_0> here\n" for i in range(21)))  # 3 batches
    for kind, flags in (
        ("infer", [f"--gin.CHECKPOINT_PATH='{pretrained_demo_run}'", f"--input_file={rows}"]),
        (
            "eval",
            [
                f"--gin.CHECKPOINT_PATH='{pretrained_demo_run}'",
                f"--gin.GLUE_DIR='{benchmark_rows / 'glue'}'",
                "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_v002'",
            ],
        ),
    ):
        out = {n: tmp_path / f"{kind}{n}" for n in (1, 2)}
        where = {
            n: [f"--output_file={out[n]}.jsonl"] if kind == "infer" else [f"--gin.EVAL_OUTPUT_DIR='{out[n]}'"]
            for n in (1, 2)
        }
        port = _port()
        processes = [_command(kind, 2, port, i, *flags, *where[2]) for i in range(2)]
        # One process with 8 devices: this test process itself (conftest fakes 8 CPU devices).
        assert cli.main(_command_flags(kind, *flags, *where[1])) == 0
        _finish(processes)
        if kind == "infer":
            one, two = (open(f"{out[n]}.jsonl").read() for n in (1, 2))
            assert len(one.splitlines()) == 21 and two == one
        else:
            for name in ("glue_sst2_v002-2.jsonl", "glue_sst2_v002-metrics.jsonl"):
                one, two = ((out[n] / "inference_eval" / name).read_text() for n in (1, 2))
                assert two == one and one
            assert len((out[1] / "inference_eval" / "glue_sst2_v002-2.jsonl").read_text().splitlines()) == 24
