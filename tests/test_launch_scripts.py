"""The Cloud TPU launch script prints exactly the gcloud commands it would run."""

import re
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


def _script(*args, flags=SLICE) -> subprocess.CompletedProcess:
    script = [sys.executable, str(REPO / "scripts" / "tpu_pod.py")]
    return subprocess.run([*script, *flags, *args], capture_output=True, text=True, timeout=60)


def _dry_run(*args) -> list[list[str]]:
    done = _script(*args)
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


# Queued resources: spot and multi-slice capacity, and `supervise`, which restarts after a preemption.

QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]
WHERE = ["--zone=europe-west4-a", "--project=my-project"]
DESCRIBE = [*QUEUED, "describe", "t5pod-v3-32", *WHERE, "--format=value(state.state)"]
DELETE = [*QUEUED, "delete", "t5pod-v3-32", *WHERE, "--force", "--quiet"]
CREATE = [
    *QUEUED,
    "create",
    "t5pod-v3-32",
    *WHERE,
    "--accelerator-type=v3-32",
    "--runtime-version=tpu-ubuntu2204-base",
    "--node-id=t5pod-v3-32",
]
TRAIN_ARGS = ["--model_dir=gs://bucket/runs/base", "--", "--gin_file=runs/pretrain.gin"]
TRAIN_REMOTE = (
    "--command=cd t5pod && nohup .venv/bin/python -m t5pod train --multihost --gin_file=runs/pretrain.gin "
    "'--gin.MODEL_DIR='\"'\"'gs://bucket/runs/base'\"'\"'' > train.log 2>&1 &"
)
TRAIN = SSH + [TRAIN_REMOTE]


def _commands(stdout: str) -> list[list[str]]:
    """The printed commands, without the notes (lines that start with "# ")."""
    return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("# ")]


@pytest.mark.e2e
def test_queued_create_of_one_slice():
    assert _dry_run("create", "--queued") == [CREATE]


@pytest.mark.e2e
def test_queued_create_of_two_spot_slices_names_them_by_prefix():
    assert _dry_run("create", "--queued", "--slices=2", "--spot", "--accelerator=v4-32", "--queued_resource=my-qr") == [
        [
            *QUEUED,
            "create",
            "my-qr",
            *WHERE,
            "--accelerator-type=v4-32",
            "--runtime-version=tpu-ubuntu2204-base",
            "--node-count=2",
            "--node-prefix=t5pod-v3-32",
            "--spot",
        ]
    ]
    assert _dry_run("delete", "--queued", "--slices=2", "--queued_resource=my-qr") == [
        [*QUEUED, "delete", "my-qr", *WHERE, "--force", "--quiet"]
    ]


@pytest.mark.e2e
def test_every_slice_gets_install_and_train_and_logs_reach_any_slice():
    done = _script("train", "--slices=2", *TRAIN_ARGS)
    assert done.returncode == 0, done.stderr
    note = "# 2 slices: t5pod-v3-32-0, t5pod-v3-32-1; every worker of each gets the command"
    assert done.stdout.splitlines()[0] == note
    assert _commands(done.stdout) == [
        [*SSH[:5], "t5pod-v3-32-0", *SSH[6:], TRAIN_REMOTE],
        [*SSH[:5], "t5pod-v3-32-1", *SSH[6:], TRAIN_REMOTE],
    ]
    installs = _commands(_script("install", "--slices=2", "--repo=https://example.org/t5pod.git").stdout)
    assert [command[5] for command in installs] == ["t5pod-v3-32-0", "t5pod-v3-32-1"]
    assert _dry_run("logs", "--slices=2", "--slice=1", "--worker=3") == [
        [*SSH[:5], "t5pod-v3-32-1", *SSH[6:-1], "--worker=3", "--command=tail -n 100 -f t5pod/train.log"]
    ]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args,error",
    [
        (["create", "--queued", "--slices=0"], "--slices must be at least 1, got 0"),
        (["train", "--slices=-1", "--model_dir=gs://b/r"], "--slices must be at least 1, got -1"),
        (["create", "--slices=2"], "--slices 2 needs --queued: several slices are requested as one queued resource"),
        (["logs", "--slices=2", "--slice=2"], "--slice must be between 0 and 1, got 2"),
        (["supervise", "--max_restarts=-1", "--model_dir=gs://b/r"], "--max_restarts must be at least 0, got -1"),
        (["supervise", "--poll_s=0", "--model_dir=gs://b/r"], "--poll_s must be more than 0, got 0"),
    ],
)
def test_refused_values_get_one_line_and_print_no_command(args, error):
    done = _script(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"tpu_pod.py: error: {error}\n")


@pytest.mark.e2e
def test_dry_run_states_need_the_dry_run():
    done = _script("supervise", "--dry_run_states=ACTIVE", *TRAIN_ARGS, flags=SLICE[:-1])
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "tpu_pod.py: error: --dry_run_states only goes with --dry-run\n"


@pytest.mark.e2e
def test_supervise_dry_run_goes_through_a_preemption():
    """The default scripted states: PROVISIONING, ACTIVE, SUSPENDED (preempted), ACTIVE again."""
    done = _script("supervise", *TRAIN_ARGS)
    assert done.returncode == 0, done.stderr
    assert _commands(done.stdout) == [DESCRIBE, DESCRIBE, TRAIN, DESCRIBE, DELETE, CREATE, DESCRIBE, TRAIN]
    assert [line for line in done.stdout.splitlines() if line.startswith("# ")] == [
        "# PROVISIONING: waiting",
        "# ACTIVE: starting training",
        "# SUSPENDED: restart 1 of at most 10: delete, request again, resume",
        "# ACTIVE: starting training",
        "# stopped after 4 polls (the scripted states of the dry run)",
    ]


@pytest.mark.e2e
def test_supervise_reinstalls_every_slice_after_a_preemption():
    done = _script(
        "supervise",
        "--slices=2",
        "--spot",
        "--repo=https://example.org/t5pod.git",
        "--dry_run_states=ACTIVE,SUSPENDING,SUSPENDED,WAITING_FOR_RESOURCES,ACTIVE",
        *TRAIN_ARGS,
    )
    assert done.returncode == 0, done.stderr
    verbs = [command[4] if command[3] == "queued-resources" else command[5] for command in _commands(done.stdout)]
    install, train = ["t5pod-v3-32-0", "t5pod-v3-32-1"], ["t5pod-v3-32-0", "t5pod-v3-32-1"]
    assert verbs == [
        "describe", *install, *train,
        "describe",  # SUSPENDING: waited out
        "describe", "delete", "create",  # SUSPENDED
        "describe",
        "describe", *install, *train,
    ]  # fmt: skip
    create = next(command for command in _commands(done.stdout) if command[4] == "create")
    assert create[-3:] == ["--node-count=2", "--node-prefix=t5pod-v3-32", "--spot"]


@pytest.mark.e2e
def test_supervise_gives_up_after_max_restarts():
    done = _script("supervise", "--max_restarts=2", "--dry_run_states=ACTIVE,FAILED,FAILED,FAILED,ACTIVE", *TRAIN_ARGS)
    assert done.returncode == 1
    assert _commands(done.stdout) == [DESCRIBE, TRAIN] + [DESCRIBE, DELETE, CREATE] * 2 + [DESCRIBE]
    assert done.stdout.splitlines()[-1] == "# FAILED after 2 restarts: giving up (--max_restarts=2)"
    zero = _script("supervise", "--max_restarts=0", "--dry_run_states=FAILED", *TRAIN_ARGS)
    assert (zero.returncode, _commands(zero.stdout)) == (1, [DESCRIBE])


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tpu_pod", REPO / "scripts" / "tpu_pod.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_supervise_creates_watches_restarts_and_stops_when_training_ends(capsys):
    """The loop as it runs for real (no poll limit), with gcloud faked: no request yet, so it makes
    one; training starts on ACTIVE and is checked while ACTIVE; a preemption re-requests; the run
    ends when worker 0 no longer runs `t5pod train` (the check's exit status 1)."""
    tpu_pod = _load_script()
    args = tpu_pod.build_parser().parse_args([*SLICE, "supervise", "--poll_s=30", *TRAIN_ARGS])
    states = iter([None, "WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "SUSPENDED", "PROVISIONING", "ACTIVE", "ACTIVE"])
    checks = iter([0, 1])  # running, then no longer
    log, sleeps = [], []

    def query(command):
        log.append(command)
        return next(states)

    def run(command):
        log.append(command)
        return next(checks) if "--worker=0" in command else 0

    assert tpu_pod.supervise(args, query, run, sleeps.append) == 0
    check = [*SSH[:-1], "--worker=0", "--command=pgrep -f '[t]5pod train' > /dev/null"]
    assert log == [
        DESCRIBE, CREATE,
        DESCRIBE,
        DESCRIBE, TRAIN,
        DESCRIBE, check,
        DESCRIBE, DELETE, CREATE,
        DESCRIBE,
        DESCRIBE, TRAIN,
        DESCRIBE, check,
    ]  # fmt: skip
    assert sleeps == [30.0] * 7
    assert capsys.readouterr().out.splitlines()[-1] == (
        "# training no longer runs on t5pod-v3-32 worker 0 (finished or stopped): see `logs`"
    )


def test_supervise_stops_when_a_command_fails(capsys):
    tpu_pod = _load_script()
    args = tpu_pod.build_parser().parse_args([*SLICE, "supervise", *TRAIN_ARGS])
    log = []
    status = tpu_pod.supervise(args, lambda command: "FAILED", lambda command: log.append(command) or 7, print)
    assert (status, log) == (7, [DELETE])
    assert capsys.readouterr().out.splitlines()[-1] == "# that command failed with exit status 7: stopping"


def _launching_page_commands() -> list[str]:
    page = (REPO / "docs" / "launching.md").read_text()
    return [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", page, flags=re.S)
        for line in block.splitlines()
        if line.strip().startswith("python scripts/tpu_pod.py ")
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("command", _launching_page_commands())
def test_launching_page_commands_print_only_gcloud_commands_and_notes(command):
    """Each command of docs/launching.md, with --dry-run: it prints gcloud commands and "# " notes."""
    argv = shlex.split(command)[2:]
    done = _script(*argv, flags=[] if "--dry-run" in argv else ["--dry-run"])
    assert done.returncode == 0, done.stderr
    assert done.stdout and all(line.startswith(("gcloud ", "# ")) for line in done.stdout.splitlines())


@pytest.mark.e2e
def test_every_printed_line_is_a_gcloud_command_or_a_note():
    runs = [
        ["create", "--accelerator=v3-32", "--spot"],
        ["create", "--queued", "--slices=3", "--spot"],
        ["install", "--slices=2", "--repo=https://example.org/t5pod.git"],
        ["train", "--slices=2", *TRAIN_ARGS],
        ["logs"],
        ["delete", "--queued"],
        ["supervise", "--slices=2", "--repo=https://example.org/t5pod.git", *TRAIN_ARGS],
        ["supervise", "--dry_run_states=FAILED,FAILED", "--max_restarts=1", *TRAIN_ARGS],
    ]
    for args in runs:
        lines = _script(*args).stdout.splitlines()
        assert lines and all(line.startswith(("gcloud ", "# ")) for line in lines), args
