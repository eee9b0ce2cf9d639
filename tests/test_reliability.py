"""No fault loses a run: one run per MODEL_DIR, unreadable checkpoints skipped and kept, resumes
that change the input stream refused, kill -9 at random moments, and sampling's distribution."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import SMALL_MODEL, command_env, run_cli, t5pod_command, train_config
from t5pod import tasks
from t5pod import checkpoints, decoding, partitioning, run_dir, run_lock, trainer

MODEL = SMALL_MODEL


_config = train_config


def _rows(model_dir, split="train"):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def _losses(model_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _rows(model_dir)}  # a re-run step keeps its last row


def _truncate_arrays(step_dir):
    for dirpath, _, files in os.walk(os.path.join(step_dir, "params")):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.getsize(path) > 64 and not name.endswith(("json", "_METADATA")) and "manifest" not in name:
                open(path, "r+b").truncate(32)


@pytest.mark.slow
def test_an_unreadable_checkpoint_or_input_position_is_named_kept_and_the_run_resumes_from_the_one_before(
    tmp_path, capsys
):
    tasks.register_all()
    trainer.train(_config(tmp_path / "straight"), MODEL)
    trainer.train(_config(tmp_path / "run", train_steps=4), MODEL)
    shutil.copytree(tmp_path / "run", tmp_path / "position_cut")
    _truncate_arrays(tmp_path / "run" / "checkpoints" / "4")
    for data_file in (tmp_path / "position_cut" / "data_positions" / "4").glob("process_0.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:100])  # the parameters are whole, the position is not
    for run, reason in [("run", "cannot be read"), ("position_cut", "its input position cannot be read")]:
        capsys.readouterr()
        trainer.train(_config(tmp_path / run), MODEL)
        out = capsys.readouterr().out
        assert "checkpoint 4 in" in out and reason in out and "resumes from step 2" in out
        assert "Resumed from" in out and "/checkpoints/2 (step 2)" in out
        # Kept, out of the run's way; the run went on from step 2 exactly as an uninterrupted one.
        assert (tmp_path / run / "broken_checkpoints" / "4" / "params").is_dir()
        assert checkpoints.all_steps(str(tmp_path / run)) == [2, 4, 6]  # step 4 trained and saved again
        assert _losses(tmp_path / run) == _losses(tmp_path / "straight")
    assert len(set(_losses(tmp_path / "straight").values())) == 6
    # Bit for bit: the resumed run's final parameters are the uninterrupted run's.
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    abstract = trainer.create_state(MODEL, _config(tmp_path / "run"), mesh).abstract_state
    for a, b in zip(
        jax.tree_util.tree_leaves(checkpoints.restore_train_state(str(tmp_path / "run"), 6, abstract)[0]),
        jax.tree_util.tree_leaves(checkpoints.restore_train_state(str(tmp_path / "straight"), 6, abstract)[0]),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_resume_keeps_the_previous_config_and_refuses_a_changed_stream(tmp_path):
    tasks.register_all()
    trainer.train(_config(tmp_path / "run", train_steps=2), MODEL, operative_config="# first\n")
    before = sorted(os.listdir(tmp_path / "run"))
    for change, named in [
        ({"batch_size": 16}, "BATCH_SIZE 8 -> 16"),
        ({"task_feature_lengths": {"inputs": 32, "targets": 16}}, "TASK_FEATURE_LENGTHS"),
        ({"mixture_or_task_name": "demo_iid_denoising"}, "MIXTURE_OR_TASK_NAME"),
    ]:
        with pytest.raises(run_dir.RunDirError, match=f"{named}.*RESTART_DATA_STREAM=True"):
            trainer.train(_config(tmp_path / "run", train_steps=4, **change), MODEL)
        assert sorted(os.listdir(tmp_path / "run")) == before
    summary = trainer.train(
        _config(tmp_path / "run", train_steps=4, batch_size=16, restart_data_stream=True),
        MODEL,
        operative_config="# second\n",
    )
    assert summary["step"] == 4
    assert (tmp_path / "run" / "config.gin").read_text() == "# second\n"
    assert (tmp_path / "run" / "config-2.gin").read_text() == "# first\n"


@pytest.mark.slow
def test_keep_checkpoints_prunes_old_steps_and_their_data_positions_and_keep_period_keeps_multiples(tmp_path):
    tasks.register_all()
    trainer.train(_config(tmp_path / "run", train_steps=5, checkpoint_period=1, keep_checkpoints=2), MODEL)
    assert checkpoints.all_steps(str(tmp_path / "run")) == [4, 5]
    assert sorted(os.listdir(tmp_path / "run" / "data_positions")) == ["4", "5"]
    # KEEP_PERIOD=3 besides the newest 2: steps 3 and 6 are kept for good, 7 and 8 as the newest.
    trainer.train(
        _config(tmp_path / "kept", train_steps=8, checkpoint_period=1, keep_checkpoints=2, keep_period=3), MODEL
    )
    assert checkpoints.all_steps(str(tmp_path / "kept")) == [3, 6, 7, 8]
    assert sorted(os.listdir(tmp_path / "kept" / "data_positions"), key=int) == ["3", "6", "7", "8"]


@pytest.mark.e2e
def test_a_live_lease_refuses_and_an_expired_or_dead_one_is_taken_over(tmp_path):
    now = time.time()
    lease = {"owner": "x", "host": "elsewhere", "pid": 1, "started": now - 100, "heartbeat": now - 10, "timeout_s": 60}
    (tmp_path / run_lock.LEASE_FILE).write_text(json.dumps(lease))
    with pytest.raises(run_lock.RunLockError, match="in use by another run \\(host elsewhere, pid 1"):
        run_lock.RunLease(str(tmp_path), 60).acquire()
    lease["heartbeat"] = now - 61  # its owner stopped beating more than its timeout ago
    (tmp_path / run_lock.LEASE_FILE).write_text(json.dumps(lease))
    taken = run_lock.RunLease(str(tmp_path), 60).acquire()
    assert taken.taken_over["owner"] == "x" and run_lock.read_lease(str(tmp_path))["owner"] == taken.owner
    taken.release()
    assert not (tmp_path / run_lock.LEASE_FILE).exists()
    # A lease of a process of this host that no longer exists is free at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease.update(host=socket.gethostname(), pid=dead.pid, heartbeat=time.time())
    (tmp_path / run_lock.LEASE_FILE).write_text(json.dumps(lease))
    assert not run_lock.is_live(lease)
    run_lock.RunLease(str(tmp_path), 60).acquire().release()


def _cli(model_dir, *flags):
    command = t5pod_command(
        "train",
        "--gin_file=demo.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        "--gin.BATCH_SIZE=4",
        "--gin.EVAL_PERIOD=0",
        "--gin.LOG_PERIOD=1",
        *flags,
    )
    return command, command_env(PYTHONUNBUFFERED="1")


def _wait_for_training(model_dir, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(os.path.join(model_dir, "metrics.jsonl")) and _rows(model_dir):
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.mark.slow
@pytest.mark.e2e
def test_a_second_run_on_the_same_model_dir_is_refused_naming_the_first(tmp_path):
    command, env = _cli(tmp_path / "run", "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_PERIOD=100000")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_for_training(tmp_path / "run", first)
        second = subprocess.run(
            _cli(tmp_path / "run", "--gin.TRAIN_STEPS=3")[0], capture_output=True, text=True, env=env, timeout=300
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by another run (host {socket.gethostname()}, pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr and first.poll() is None
    finally:
        first.kill()
        first.communicate()
    # Killed: its lease names a process that is gone, so a new run may take over at once.
    lease = run_lock.read_lease(str(tmp_path / "run"))
    assert lease["pid"] == first.pid and not run_lock.is_live(lease)
    assert run_lock.refusal(str(tmp_path / "run"), 120) is None


@pytest.mark.slow
@pytest.mark.e2e
def test_sigkill_at_random_moments_leaves_a_run_that_resumes_and_finishes_as_an_uninterrupted_one(tmp_path):
    steps = 16  # more than three kills' windows (at most 1.2 s, about 3 steps/s) can reach
    flags = [f"--gin.TRAIN_STEPS={steps}", "--gin.CHECKPOINT_PERIOD=1", "--gin.KEEP_CHECKPOINTS=2"]
    command, env = _cli(tmp_path / "straight", *flags)
    assert subprocess.run(command, capture_output=True, env=env, timeout=600).returncode == 0
    chooser = random.Random(1234)
    kills = 0
    while kills < 3:
        command, env = _cli(tmp_path / "run", *flags)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        if kills:  # the first kill lands before training starts (start-up, compilation)
            _wait_for_training(tmp_path / "run", process)
        # Every step saves, so a moment in the loop is often mid-save or mid-prune.
        time.sleep(chooser.uniform(0.0, 1.2) if kills else chooser.uniform(1.0, 4.0))
        if process.poll() is not None:  # finished before the kill: nothing left to test
            break
        process.send_signal(signal.SIGKILL)
        process.communicate()
        kills += 1
    command, env = _cli(tmp_path / "run", *flags)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert kills == 3
    assert checkpoints.latest_step(str(tmp_path / "run")) == steps
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")


def test_sampling_draws_from_the_tempered_and_truncated_distribution():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.asarray(np.broadcast_to(np.log(probs), (40_000, 4)), jnp.float32)

    def frequencies(temperature, top_k):
        ids = np.asarray(decoding.choose_tokens(logits, jax.random.PRNGKey(0), temperature, top_k))
        return np.bincount(ids, minlength=4) / len(ids)

    # Temperature T draws from p^(1/T) / sum(p^(1/T)); top-k renormalises the k most likely.
    np.testing.assert_allclose(frequencies(1.0, 0), probs, atol=0.01)
    squared = probs**2 / np.sum(probs**2)  # T = 0.5: [0.676, 0.243, 0.061, 0.007]
    np.testing.assert_allclose(frequencies(0.5, 0), squared, atol=0.01)
    np.testing.assert_allclose(frequencies(1.0, 2), [0.625, 0.375, 0, 0], atol=0.01)
    assert frequencies(0.0, 0).tolist() == [1.0, 0.0, 0.0, 0.0]  # temperature 0 is greedy


def test_a_lease_of_this_host_holds_while_its_process_lives_however_old_its_heartbeat(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = time.time() - 3600  # a stopped (SIGSTOP) or paused run: no heartbeat for an hour
        lease = {
            "owner": "x",
            "host": socket.gethostname(),
            "pid": sleeper.pid,
            "started": old,
            "heartbeat": old,
            "timeout_s": 60,
        }
        (tmp_path / run_lock.LEASE_FILE).write_text(json.dumps(lease))
        with pytest.raises(run_lock.RunLockError, match=f"pid {sleeper.pid}"):
            run_lock.RunLease(str(tmp_path), 60).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # A lease naming this very process's pid was left by an earlier boot or container: free.
    lease.update(pid=os.getpid(), heartbeat=time.time())
    assert not run_lock.is_live(lease)
    # Another host's heartbeat far in the future (a clock that jumped) is stale; a little ahead is live.
    far = {"owner": "y", "host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() + 3600, "timeout_s": 60}
    assert not run_lock.is_live(far)
    near = dict(far, heartbeat=time.time() + 30)
    (tmp_path / run_lock.LEASE_FILE).write_text(json.dumps(near))
    with pytest.raises(run_lock.RunLockError, match="heartbeat 30 s in the future by this host's clock"):
        run_lock.RunLease(str(tmp_path), 60).acquire()


def test_a_run_that_lost_its_lease_stops_before_writing_and_never_overwrites_the_new_owner(tmp_path):
    lease = run_lock.RunLease(str(tmp_path), timeout_s=0.4).acquire()  # beats every 0.1 s
    lease.check()  # still ours
    other = {"owner": "other", "host": "elsewhere", "pid": 7, "started": 0, "heartbeat": time.time(), "timeout_s": 60}
    (tmp_path / run_lock.LEASE_FILE).write_text(json.dumps(other))
    time.sleep(0.5)
    assert run_lock.read_lease(str(tmp_path))["owner"] == "other"  # the heartbeat did not write over it
    with pytest.raises(run_lock.RunLockError, match="lost MODEL_DIR .* to another run \\(host elsewhere, pid 7\\)"):
        lease.check()
    lease.release()
    assert run_lock.read_lease(str(tmp_path))["owner"] == "other"  # release leaves the new owner's lease


def test_a_lease_write_cut_short_does_not_make_the_folder_foreign(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / f"{run_lock.LEASE_FILE}.host-123-abcd.tmp").write_text("{")
    assert run_dir._model_dir_problem(train_config(tmp_path)) is None


@pytest.mark.slow
def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_writing_and_the_run_resumes(tmp_path, monkeypatch):
    tasks.register_all()
    trainer.train(_config(tmp_path / "straight", train_steps=4), MODEL)
    trainer.train(_config(tmp_path / "run", train_steps=2), MODEL)
    # The small model's state (parameters and Adafactor's factored moments) is about 0.1 MiB: 1 MiB
    # of room is less than that plus the 16 MiB kept for the input position.
    monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 2**20)
    with pytest.raises(
        checkpoints.CheckpointWriteError, match="Checkpoint 4 needs about 0.02 GiB .* has 0.00 GiB free"
    ):
        trainer.train(_config(tmp_path / "run", train_steps=4), MODEL)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]  # not even a temporary folder
    assert sorted(os.listdir(tmp_path / "run" / "data_positions")) == ["2"]
    assert not (tmp_path / "run" / run_lock.LEASE_FILE).exists()  # let go for the next run
    monkeypatch.undo()
    trainer.train(_config(tmp_path / "run", train_steps=4), MODEL)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.e2e
def test_a_write_that_fails_mid_checkpoint_is_one_error_and_the_run_resumes_from_the_one_before(
    tmp_path, pretrained_demo_run
):
    """A disk that fills while a checkpoint is written (here: a file size limit of 1 MB, as on a full
    disk; the embedding alone is 1.1 MB, so some file of the checkpoint always fails, the input
    position's at about 0.8 MB or one of Orbax's): the run stops with one error line naming the
    intact checkpoint, lets go of MODEL_DIR, and the same command later finishes from there."""
    shutil.copytree(pretrained_demo_run, tmp_path / "run")
    command = [
        "train",
        "--gin_file=demo.gin",
        f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
        "--gin.TRAIN_STEPS=4",
        "--gin.BATCH_SIZE=4",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        "--gin.LOG_PERIOD=1",
        "--gin.EVAL_PERIOD=0",
    ]
    failed = run_cli(*command, file_size_limit=1_000_000)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr  # not Orbax's threads' hundred-odd, nor TensorStore's
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("t5pod train: error: Checkpoint 4 could not be written to") and "File too large" in last
    assert (
        "The checkpoints before it are intact (newest: 2): Free space" in last
        and "run the same command to resume" in last
    )
    assert checkpoints.all_steps(str(tmp_path / "run")) == [2]
    assert not (tmp_path / "run" / run_lock.LEASE_FILE).exists()
    finished = run_cli(*command)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resumed from" in finished.stdout and checkpoints.all_steps(str(tmp_path / "run"))[-1] == 4
