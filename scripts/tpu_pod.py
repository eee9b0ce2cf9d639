#!/usr/bin/env python3
"""Run t5pod on Cloud TPU VM slices: create them, install, train on every worker, follow the log,
delete them, or supervise a queued (spot) request that restarts training after each preemption.
Every command prints the gcloud commands it runs; --dry-run only prints them. A printed line that
starts with "# " is a note, not a command. docs/launching.md has the walk-through.

  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a create --accelerator=v3-32
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a install --repo=https://example.org/t5pod.git
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a train --model_dir=gs://BUCKET/runs/base \\
      -- --gin_file=runs/pretrain.gin --gin_file=models/t5_1_1/base.gin --gin.MESH_SHAPE="(-1, 1)"
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a logs
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a delete

Queued resources (how spot and multi-slice capacity is requested): `create --queued [--slices N]
[--spot]`, `delete --queued`; with N slices the nodes are NAME-0 ... NAME-(N-1), and install,
train and logs take the same --slices N. `supervise` requests the slices, installs, trains, and
after a preemption deletes the request, asks again and restarts the same train command, which
resumes from the newest checkpoint in MODEL_DIR.
"""

import argparse
import itertools
import shlex
import subprocess
import sys
import time

DEFAULT_VERSION = "tpu-ubuntu2204-base"
CHECKOUT = "t5pod"
LOG = "train.log"
# States of a queued resource (gcloud ... queued-resources describe, state.state). SUSPENDING (its
# TPU VMs are being deleted: preempted, reclaimed) is waited out until SUSPENDED.
WAITING = {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "DELETING", "SUSPENDING"}
LOST = {"FAILED", "SUSPENDED"}
# The states `supervise --dry-run` goes through unless --dry_run_states names others: one preemption.
DRY_RUN_STATES = "PROVISIONING,ACTIVE,SUSPENDED,ACTIVE"


def _gcloud(args, group: list[str], verb: str, name: str) -> list[str]:
    command = ["gcloud", "compute", "tpus", *group, verb, name, f"--zone={args.zone}"]
    if args.project:
        command.append(f"--project={args.project}")
    return command


def _gcloud_tpu(args, verb: str, node: str | None = None) -> list[str]:
    return _gcloud(args, ["tpu-vm"], verb, node or args.name)


def _gcloud_queued(args, verb: str) -> list[str]:
    return _gcloud(args, ["queued-resources"], verb, args.queued_resource or args.name)


def nodes(args) -> list[str]:
    """The TPU VM of each slice: NAME, or NAME-0 ... NAME-(N-1) (the names --node-prefix gives)."""
    return [args.name] if args.slices == 1 else [f"{args.name}-{index}" for index in range(args.slices)]


def _on_workers(args, remote: str, node: str | None = None, worker: str = "all") -> list[str]:
    return _gcloud_tpu(args, "ssh", node) + [f"--worker={worker}", f"--command={remote}"]


def create_commands(args) -> list[list[str]]:
    spot = ["--spot"] if args.spot else []
    if not args.queued:
        command = _gcloud_tpu(args, "create") + [f"--accelerator-type={args.accelerator}", f"--version={args.version}"]
        return [command + spot]
    command = _gcloud_queued(args, "create") + [f"--accelerator-type={args.accelerator}"]
    command.append(f"--runtime-version={args.version}")
    if args.slices == 1:
        command.append(f"--node-id={args.name}")
    else:
        command += [f"--node-count={args.slices}", f"--node-prefix={args.name}"]
    return [command + spot]


def install_commands(args) -> list[list[str]]:
    remote = (
        f"(test -d {CHECKOUT} || git clone --branch {shlex.quote(args.branch)} {shlex.quote(args.repo)} "
        f"{CHECKOUT}) && cd {CHECKOUT} && git fetch && git checkout {shlex.quote(args.branch)} && "
        "git pull --ff-only && make install-tpu"
    )
    return [_on_workers(args, remote, node) for node in nodes(args)]


def train_commands(args) -> list[list[str]]:
    """The same command on every worker of every slice. With several slices, jax.distributed.initialize()
    (t5pod's --multihost) reads the slice count, this slice's index and the coordinator from the TPU VM's
    metadata (MEGASCALE_* in tpu-env, which multi-slice queued resources set), so nothing is added."""
    flags = " ".join(shlex.quote(f) for f in args.train_flags if f != "--")
    model_dir = shlex.quote(f"--gin.MODEL_DIR='{args.model_dir}'")
    remote = f"cd {CHECKOUT} && nohup .venv/bin/python -m t5pod train --multihost {flags} {model_dir} > {LOG} 2>&1 &"
    return [_on_workers(args, remote, node) for node in nodes(args)]


def delete_commands(args) -> list[list[str]]:
    if args.queued:  # --force deletes the request's TPU VMs first
        return [_gcloud_queued(args, "delete") + ["--force", "--quiet"]]
    return [_gcloud_tpu(args, "delete") + ["--quiet"]]


def describe_command(args) -> list[str]:
    return _gcloud_queued(args, "describe") + ["--format=value(state.state)"]


def training_check_command(args) -> list[str]:
    """Exit 0 while worker 0 of the first slice runs `t5pod train`, 1 once it has stopped."""
    return _on_workers(args, "pgrep -f '[t]5pod train' > /dev/null", nodes(args)[0], worker="0")


def slices_note(args) -> list[str]:
    """With several slices, which TPU VMs the install and train commands go to."""
    if args.slices == 1:
        return []
    return [f"# {args.slices} slices: {', '.join(nodes(args))}; every worker of each gets the command"]


def commands(args) -> list[list[str]]:
    if args.command == "create":
        return create_commands(args)
    if args.command == "install":
        return install_commands(args)
    if args.command == "train":
        return train_commands(args)
    if args.command == "logs":
        node = nodes(args)[args.slice]
        return [_on_workers(args, f"tail -n 100 -f {CHECKOUT}/{LOG}", node, worker=str(args.worker))]
    if args.command == "delete":
        return delete_commands(args)
    raise ValueError(args.command)


def supervise(args, query, run, sleep, polls: int | None = None) -> int:
    """Watches the queued resource every --poll_s seconds. ACTIVE: install (with --repo) and start
    training once per request, then check that it still runs; waiting states (SUSPENDING too):
    wait; FAILED or SUSPENDED (preempted, reclaimed): delete the request, ask again, and train again
    once it is ACTIVE (t5pod resumes from the newest checkpoint in MODEL_DIR), at most
    --max_restarts times. A describe that fails on the first poll means there is no request yet:
    supervise makes it. Stops when training is no longer running (0), after --max_restarts (1), when
    a command fails (its status), or after `polls` polls (0; the dry run's scripted states).

    query(command) -> its output, or None when it failed; run(command) -> its exit status;
    sleep(seconds). main() passes ones that print each command first (and in a dry run run
    nothing); tests pass their own."""
    restarts, started = 0, False
    for poll in itertools.count() if polls is None else range(polls):
        if poll:
            sleep(args.poll_s)
        state = query(describe_command(args))
        state = None if state is None else state.strip()
        if state is None and poll == 0:
            _say("# no queued resource yet: requesting it")
            if status := _run_all(run, create_commands(args)):
                return status
        elif state == "ACTIVE" and not started:
            install = install_commands(args) if args.repo else []
            _say(f"# ACTIVE: {'installing and ' if install else ''}starting training", *slices_note(args))
            if status := _run_all(run, install + train_commands(args)):
                return status
            started = True
        elif state == "ACTIVE":
            if run(training_check_command(args)) == 1:
                _say(f"# training no longer runs on {nodes(args)[0]} worker 0 (finished or stopped): see `logs`")
                return 0
        elif state in LOST:
            if restarts >= args.max_restarts:
                _say(f"# {state} after {restarts} restarts: giving up (--max_restarts={args.max_restarts})")
                return 1
            restarts += 1
            _say(f"# {state}: restart {restarts} of at most {args.max_restarts}: delete, request again, resume")
            if status := _run_all(run, delete_commands(args) + create_commands(args)):
                return status
            started = False
        elif state in WAITING:
            _say(f"# {state}: waiting")
        else:
            _say(f"# state {state or 'unknown (describe failed)'}: asking again in {args.poll_s:g} s")
    _say(f"# stopped after {polls} polls (the scripted states of the dry run)")
    return 0


def _run_all(run, commands_to_run) -> int:
    for command in commands_to_run:
        if status := run(command):
            _say(f"# that command failed with exit status {status}: stopping")
            return status
    return 0


def _say(*lines: str):
    for line in lines:
        print(line, flush=True)


def _printed(function):
    def call(command):
        print(shlex.join(command), flush=True)
        return function(command)

    return call


def _read(command) -> str | None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        return None
    return done.stdout


def check(args) -> str | None:
    """A one-line refusal of flag values argparse lets through, or None."""
    if args.slices < 1:
        return f"--slices must be at least 1, got {args.slices}"
    if args.command in ("create", "delete") and args.slices > 1 and not args.queued:
        return f"--slices {args.slices} needs --queued: several slices are requested as one queued resource"
    if args.command == "logs" and not 0 <= args.slice < args.slices:
        return f"--slice must be between 0 and {args.slices - 1}, got {args.slice}"
    if args.command == "supervise":
        if args.max_restarts < 0:
            return f"--max_restarts must be at least 0, got {args.max_restarts}"
        if not args.poll_s > 0:
            return f"--poll_s must be more than 0, got {args.poll_s:g}"
        if args.dry_run_states and not args.dry_run:
            return "--dry_run_states only goes with --dry-run"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="TPU VM name (with --slices N: the prefix of NAME-0 ...)")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", help="GCP project (default: gcloud's)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    slices = argparse.ArgumentParser(add_help=False)
    slices.add_argument("--slices", type=int, default=1, help="number of slices (multi-slice: needs --queued)")
    queued = argparse.ArgumentParser(add_help=False)
    queued.add_argument("--queued_resource", help="ID of the queued resource (default: --name)")
    shape = argparse.ArgumentParser(add_help=False)
    shape.add_argument("--accelerator", default="v3-32", help="per slice, e.g. v3-32, v4-64, v5litepod-16")
    shape.add_argument("--version", default=DEFAULT_VERSION, help="TPU VM software (runtime) version")
    shape.add_argument("--spot", action="store_true", help="spot capacity (preemptible; training resumes)")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--model_dir", required=True, help="MODEL_DIR, normally gs://BUCKET/...")
    training.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then t5pod train flags")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", parents=[slices, queued, shape], help="create the slice(s)")
    create.add_argument("--queued", action="store_true", help="request them as a queued resource")
    install = sub.add_parser("install", parents=[slices], help="clone or update t5pod on every worker and install it")
    install.add_argument("--repo", required=True, help="git URL of your t5pod repository")
    install.add_argument("--branch", default="main")
    sub.add_parser("train", parents=[slices, training], help="start training on every worker (one process each)")
    logs = sub.add_parser("logs", parents=[slices], help="follow a worker's training log")
    logs.add_argument("--slice", type=int, default=0, help="which slice's worker (with --slices N)")
    logs.add_argument("--worker", type=int, default=0)
    delete = sub.add_parser("delete", parents=[slices, queued], help="delete the slice(s)")
    delete.add_argument("--queued", action="store_true", help="delete the queued resource and its TPU VMs")
    supervise_parser = sub.add_parser(
        "supervise",
        parents=[slices, queued, shape, training],
        help="request queued slices, train, and after each preemption request them again and resume",
    )
    supervise_parser.add_argument("--repo", help="install from this git URL after each (re)request (new VMs are empty)")
    supervise_parser.add_argument("--branch", default="main")
    supervise_parser.add_argument("--max_restarts", type=int, default=10, help="re-requests before giving up")
    supervise_parser.add_argument("--poll_s", type=float, default=60.0, help="seconds between state checks")
    supervise_parser.add_argument(
        "--dry_run_states", help=f"with --dry-run: the states describe returns, in order (default {DRY_RUN_STATES})"
    )
    supervise_parser.set_defaults(queued=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if problem := check(args):
        print(f"tpu_pod.py: error: {problem}", file=sys.stderr)
        return 2
    run = _printed((lambda command: 0) if args.dry_run else (lambda command: subprocess.run(command).returncode))
    if args.command == "supervise":
        if not args.dry_run:
            return supervise(args, _printed(_read), run, time.sleep)
        states = (args.dry_run_states or DRY_RUN_STATES).split(",")
        scripted = iter(states)  # what describe answers, one state a poll; no sleeping
        return supervise(args, _printed(lambda command: next(scripted)), run, lambda seconds: None, len(states))
    if args.command in ("install", "train"):
        _say(*slices_note(args))
    return _run_all(run, commands(args))


if __name__ == "__main__":
    sys.exit(main())
