"""What each fine-tuning method costs: trainable parameters, optimizer-state bytes and the train
step's time, for one model and batch (docs/finetuning.md's table). Random tokens: the step's time
does not depend on them.

    python -m bench.finetuning_methods [--model=models/tiny.gin] [--vocab_size=8192] [--steps=20]
"""

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np
from flax import linen as nn

from t5pod import ginconf, partitioning, train_loop, trainer
from t5pod.configs import BatchConfig, MeshConfig, OptimizerConfig, StepConfig

# (name, T5Config fields, TRAINABLE): the settings of docs/finetuning.md's measured table.
METHODS = (
    ("all parameters", {}, "all"),
    ("adapters, d = 32", {"adapter_dim": 32}, "adapters"),
    ("LoRA, rank 8, query and value", {"lora_rank": 8}, "lora"),
    ("prompt tuning, 20 vectors", {"prompt_length": 20}, "prompt"),
)


def _batch(rows: int, lengths: dict, vocab_size: int) -> dict:
    rng = np.random.default_rng(0)
    targets = rng.integers(2, vocab_size, (rows, lengths["targets"]))
    batch = {
        "encoder_input_tokens": rng.integers(2, vocab_size, (rows, lengths["inputs"])),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": np.ones_like(targets),
    }
    return {k: v.astype(np.int32) for k, v in batch.items()}


def measure(model_config, method_fields: dict, trainable: str, batch_size: int, lengths: dict, steps: int) -> dict:
    config = dataclasses.replace(model_config, **method_fields)
    step_config = StepConfig(
        BatchConfig(lengths, batch_size=batch_size, pack=False),
        OptimizerConfig(learning_rate=1e-3, schedule="constant", trainable=trainable),
        mesh=MeshConfig((1, 1)),
    )
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    setup = trainer.create_state(config, step_config, mesh)
    with mesh, nn.logical_axis_rules(setup.rules):
        state = setup.init(jax.random.PRNGKey(0))
        params_before = jax.device_get(state.params)
        step = trainer.make_train_step(step_config, setup, mesh)
        batch = jax.device_put(_batch(batch_size, lengths, config.vocab_size), train_loop.batch_sharding(mesh))
        state, _ = step(state, batch, jax.random.PRNGKey(0))  # compiles
        jax.block_until_ready(state)
        times = []
        for i in range(steps):
            begin = time.perf_counter()
            state, metrics = step(state, batch, jax.random.PRNGKey(i + 1))
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - begin)
    after = jax.device_get(state.params)
    moved = sum(
        np.size(a)
        for a, b in zip(jax.tree_util.tree_leaves(params_before), jax.tree_util.tree_leaves(after))
        if not np.array_equal(a, b)
    )
    return {
        "parameters": sum(np.size(x) for x in jax.tree_util.tree_leaves(after)),
        "trained": moved,  # parameters that changed over the steps: what the method trains
        "optimizer_bytes": sum(x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state)),
        "step_s": statistics.median(times),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny.gin")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    ginconf.parse([args.model], [f"t5pod.T5Config.vocab_size = {args.vocab_size}", "t5pod.T5Config.dropout_rate = 0.0"])
    model_config = ginconf.model_config()
    lengths = {"inputs": args.inputs, "targets": args.targets}
    print(f"{args.model}, vocab {args.vocab_size}, batch {args.batch_size} x {lengths}, median of {args.steps} steps")
    print("| method | parameters | trained | optimizer state | step time |")
    print("|---|---|---|---|---|")
    baseline = None
    for name, fields, trainable in METHODS:
        f = measure(model_config, fields, trainable, args.batch_size, lengths, args.steps)
        baseline = baseline or f["step_s"]
        print(
            f"| {name} | {f['parameters']:,} | {f['trained']:,} ({f['trained'] / f['parameters']:.1%}) | "
            f"{f['optimizer_bytes'] / 1024:,.1f} KiB | {f['step_s'] * 1e3:.1f} ms ({f['step_s'] / baseline:.2f}x) |"
        )


if __name__ == "__main__":
    main()
