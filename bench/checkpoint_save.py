"""How long a checkpoint save blocks the training loop: a T5 1.1 base train state (parameters and
Adafactor's factored moments) saved by t5pod's TrainCheckpointer, asynchronously (the loop waits
only for the copy to host memory; Orbax writes in the background) and synchronously (the loop
waits for the whole write), a few times each.

    python -m bench.checkpoint_save [--model=models/t5_1_1/base.gin] [--repeats=3] [--dir=/tmp/...]
"""

import argparse
import shutil
import statistics
import tempfile
import time

import jax

from t5pod import checkpoints, configs, ginconf, partitioning, trainer


def measure(model_gin: str, repeats: int, folder: str) -> dict:
    ginconf.parse([model_gin], [])
    model_config = ginconf.model_config()
    step = configs.StepConfig(
        configs.BatchConfig({"inputs": 512, "targets": 114}, batch_size=1), mesh=configs.MeshConfig((1, 1))
    )
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    state = trainer.create_state(model_config, step, mesh).init(jax.random.PRNGKey(0))
    state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)))
    figures = {"model": model_gin, "state_bytes": state_bytes}
    for asynchronous in (True, False):
        blocked, total = [], []
        for repeat in range(repeats):
            run = tempfile.mkdtemp(dir=folder)
            checkpointer = checkpoints.TrainCheckpointer(run, keep=None, async_save=asynchronous)
            begin = time.perf_counter()
            checkpointer.save(1, state, {"bench": True})
            blocked.append(time.perf_counter() - begin)
            checkpointer.wait()
            total.append(time.perf_counter() - begin)
            checkpointer.close()
            shutil.rmtree(run)
        name = "async" if asynchronous else "sync"
        figures[f"{name}_blocked_s"] = statistics.median(blocked)
        figures[f"{name}_total_s"] = statistics.median(total)
        figures[f"{name}_blocked_all_s"] = blocked
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/t5_1_1/base.gin")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="a folder on the disk to measure")
    args = parser.parse_args()
    f = measure(args.model, args.repeats, args.dir)
    state = f"{f['state_bytes'] / 2**30:.2f} GiB (parameters and Adafactor state)"
    print(f"{f['model']}: state {state}, median of {args.repeats}")
    for name in ("async", "sync"):
        blocked = ", ".join(f"{s:.2f}" for s in f[f"{name}_blocked_all_s"])
        median, total = f[f"{name}_blocked_s"], f[f"{name}_total_s"]
        print(f"  {name:5s}: loop blocked {median:.2f} s ({blocked}); written after {total:.2f} s")


if __name__ == "__main__":
    main()
