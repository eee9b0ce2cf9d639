#!/usr/bin/env python3
"""Run t5pod on a Cloud TPU VM slice: create it, install, train on every worker, follow the log,
delete it. Every command prints the gcloud commands it runs; --dry-run only prints them.

  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a create --accelerator=v3-32
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a install --repo=https://example.org/t5pod.git
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a train --model_dir=gs://BUCKET/runs/base \\
      -- --gin_file=runs/pretrain.gin --gin_file=models/t5_1_1/base.gin --gin.MESH_SHAPE="(-1, 1)"
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a logs
  scripts/tpu_pod.py --name=t5pod-v3-32 --zone=europe-west4-a delete
"""

import argparse
import shlex
import subprocess
import sys

DEFAULT_VERSION = "tpu-ubuntu2204-base"
CHECKOUT = "t5pod"
LOG = "train.log"


def _gcloud_tpu(args, *words) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", *words, args.name, f"--zone={args.zone}"]
    if args.project:
        command.append(f"--project={args.project}")
    return command


def _on_workers(args, remote: str, worker: str = "all") -> list[str]:
    return _gcloud_tpu(args, "ssh") + [f"--worker={worker}", f"--command={remote}"]


def commands(args) -> list[list[str]]:
    if args.command == "create":
        command = _gcloud_tpu(args, "create") + [f"--accelerator-type={args.accelerator}", f"--version={args.version}"]
        return [command + (["--spot"] if args.spot else [])]
    if args.command == "install":
        remote = (
            f"(test -d {CHECKOUT} || git clone --branch {shlex.quote(args.branch)} {shlex.quote(args.repo)} "
            f"{CHECKOUT}) && cd {CHECKOUT} && git fetch && git checkout {shlex.quote(args.branch)} && "
            "git pull --ff-only && make install-tpu"
        )
        return [_on_workers(args, remote)]
    if args.command == "train":
        flags = " ".join(shlex.quote(f) for f in args.train_flags if f != "--")
        model_dir = shlex.quote(f"--gin.MODEL_DIR='{args.model_dir}'")
        remote = (
            f"cd {CHECKOUT} && nohup .venv/bin/python -m t5pod train --multihost {flags} {model_dir} > {LOG} 2>&1 &"
        )
        return [_on_workers(args, remote)]
    if args.command == "logs":
        return [_on_workers(args, f"tail -n 100 -f {CHECKOUT}/{LOG}", worker=str(args.worker))]
    if args.command == "delete":
        return [_gcloud_tpu(args, "delete") + ["--quiet"]]
    raise ValueError(args.command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", help="GCP project (default: gcloud's)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create the slice")
    create.add_argument("--accelerator", default="v3-32", help="e.g. v3-32, v4-64, v5litepod-16")
    create.add_argument("--version", default=DEFAULT_VERSION, help="TPU VM software version")
    create.add_argument("--spot", action="store_true", help="spot capacity (preemptible; training resumes)")
    install = sub.add_parser("install", help="clone or update the project on every worker and install it")
    install.add_argument("--repo", required=True, help="git URL of your t5pod repository")
    install.add_argument("--branch", default="main")
    train = sub.add_parser("train", help="start training on every worker (one process per worker)")
    train.add_argument("--model_dir", required=True, help="MODEL_DIR, normally gs://BUCKET/...")
    train.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- then t5pod train flags")
    logs = sub.add_parser("logs", help="follow a worker's training log")
    logs.add_argument("--worker", type=int, default=0)
    sub.add_parser("delete", help="delete the slice")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for command in commands(args):
        print(shlex.join(command), flush=True)
        if not args.dry_run:
            done = subprocess.run(command)
            if done.returncode:
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
