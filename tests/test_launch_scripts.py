"""The Cloud TPU launch script prints exactly the gcloud commands it would run."""

import shlex
import subprocess
import sys

import pytest

from conftest import REPO

SLICE = ["--name=t5pod-v3-32", "--zone=europe-west4-a", "--project=my-project", "--dry-run"]
SSH = [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "t5pod-v3-32",
    "--zone=europe-west4-a",
    "--project=my-project",
    "--worker=all",
]


def _dry_run(*args) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "tpu_pod.py"), *SLICE, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


@pytest.mark.e2e
def test_create_v3_32_slice():
    assert _dry_run("create", "--accelerator=v3-32", "--spot") == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "t5pod-v3-32",
            "--zone=europe-west4-a",
            "--project=my-project",
            "--accelerator-type=v3-32",
            "--version=tpu-ubuntu2204-base",
            "--spot",
        ]
    ]


@pytest.mark.e2e
def test_install_on_every_worker():
    (command,) = _dry_run("install", "--repo=https://example.org/t5pod.git")
    assert command[:-1] == SSH
    assert command[-1] == (
        "--command=(test -d t5pod || git clone --branch main https://example.org/t5pod.git t5pod) "
        "&& cd t5pod && git fetch && git checkout main && git pull --ff-only && make install-tpu"
    )


@pytest.mark.e2e
def test_train_on_every_worker_with_model_dir_on_a_bucket():
    (command,) = _dry_run(
        "train",
        "--model_dir=gs://bucket/runs/base",
        "--",
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/t5_1_1/base.gin",
        "--gin.MESH_SHAPE=(-1, 1)",
    )
    assert command[:-1] == SSH
    remote = shlex.split(command[-1][len("--command=") :])
    assert remote == [
        "cd",
        "t5pod",
        "&&",
        "nohup",
        ".venv/bin/python",
        "-m",
        "t5pod",
        "train",
        "--multihost",
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/t5_1_1/base.gin",
        "--gin.MESH_SHAPE=(-1, 1)",
        "--gin.MODEL_DIR='gs://bucket/runs/base'",
        ">",
        "train.log",
        "2>&1",
        "&",
    ]


@pytest.mark.e2e
def test_logs_and_delete():
    assert _dry_run("logs") == [SSH[:-1] + ["--worker=0", "--command=tail -n 100 -f t5pod/train.log"]]
    assert _dry_run("delete") == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "delete",
            "t5pod-v3-32",
            "--zone=europe-west4-a",
            "--project=my-project",
            "--quiet",
        ]
    ]
