"""`make bench` (`python -m bench.run`): t5pod's speed and memory, side by side with the reference and the machine.

Prints a table and writes bench/results.json. Figures (see issue 7 for the goals):
  matmul_peak_flops       large float32 jnp.dot on this machine: the MFU denominator
  train_tokens_per_s, mfu tiny / small / base-width train steps (t5pod.flops counts the FLOPs)
  reference_speedup       t5pod tokens/s over transformers' T5 + Adafactor (PyTorch, CPU),
                          same config, batch and lengths, measured alternately
  scan_compile_ratio      train-step compile time, 24 layers over 2, with and without scan
  pipeline_feed_ratio     span-corruption rows/s on one core over rows/s the train step consumes
  xxl_peak_bytes          T5 1.1 XXL per-device peak on 64 fake devices (data 8, model 8)
  data_feed               span corruption 512/114 (32k vocabulary): rows/s on one core, and the
                          cores a TPU v3-8 host needs to feed T5 1.1 base at 50% MFU
  decode_speedup          greedy tokens/s of the Predictor (`infer`) over transformers' `generate`
                          (PyTorch, cache on), same weights, batch and lengths, measured alternately
                          (bench/decoding.py)
  profile                 where a T5 1.1 base train step's time goes, by part of the model, beside
                          each part's FLOP share (jax.profiler; bench/profile_step.py)

On a GPU or TPU it measures instead T5 1.1 base and large in bfloat16 at the batch that fills the
device (bench/accelerator.py). results.json keeps one section per platform, so figures from
several machines can sit side by side.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t5pod import flops, ginconf, partitioning  # noqa: E402

from bench import accelerator, profile_step  # noqa: E402
from bench.decoding import decode_figures  # noqa: E402
from t5pod.configs import BatchConfig, MeshConfig, StepConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK = os.environ.get("BENCH_QUICK") == "1"  # the test suite's smoke run


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        out = f(a, a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def model(name: str, **overrides):
    ginconf.parse([f"models/{name}.gin"])
    return dataclasses.replace(ginconf.model_config(), dropout_rate=0.0, **overrides)


def t5pod_step(config, batch, lengths) -> accelerator.TrainStepTimer:
    """The train step on one device, compiled and run once."""
    step = StepConfig(BatchConfig({"inputs": lengths[0], "targets": lengths[1]}, batch), mesh=MeshConfig((1, 1)))
    mesh = partitioning.make_mesh((1, 1), jax.devices()[:1])
    return accelerator.TrainStepTimer(config, step, mesh, accelerator.random_batch(2000, batch, lengths))


def reference_step(config, batch, lengths):
    """Seconds per step of transformers' T5 with its Adafactor, float32, CPU."""
    import torch
    import transformers
    from transformers.optimization import Adafactor

    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            d_kv=config.d_kv,
            d_ff=config.d_ff,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            num_decoder_layers=config.decoder_layers,
            feed_forward_proj=config.feed_forward_proj,
            tie_word_embeddings=config.tie_word_embeddings,
            dropout_rate=0.0,
        )
    ).train()
    optimizer = Adafactor(
        hf.parameters(),
        lr=1e-2,
        scale_parameter=True,
        relative_step=False,
        warmup_init=False,
        decay_rate=-0.8,
        clip_threshold=1.0,
    )
    data = {k: torch.tensor(v, dtype=torch.long) for k, v in accelerator.random_batch(2000, batch, lengths).items()}

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            loss = hf(
                input_ids=data["encoder_input_tokens"],
                decoder_input_ids=data["decoder_input_tokens"],
                labels=data["decoder_target_tokens"],
            ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return (time.perf_counter() - start) / n

    run(1)
    return run


def train_figures(name, config, batch, lengths, peak, with_reference):
    ours = t5pod_step(config, batch, lengths)
    reference = reference_step(config, batch, lengths) if with_reference else None
    mine, theirs = [], []
    for _ in range(2 if QUICK else 3):  # alternate, so both see the same machine state
        mine.append(statistics.mean(ours.seconds(1 if QUICK else 3)))
        if reference:
            theirs.append(reference(1 if QUICK else 3))
    step_s = statistics.median(mine)
    tokens = batch * sum(lengths)
    step_flops = flops.train_flops_per_example(config, *lengths) * batch
    row = {
        "config": name,
        "batch": batch,
        "lengths": list(lengths),
        "step_s": step_s,
        "train_tokens_per_s": tokens / step_s,
        "mfu": step_flops / step_s / peak,
        "compile_s": ours.compile_s,
    }
    if reference:
        row["reference_tokens_per_s"] = tokens / statistics.median(theirs)
        row["reference_speedup"] = row["train_tokens_per_s"] / row["reference_tokens_per_s"]
    return row


def compile_time(layers: int, scan: bool) -> float:
    config = model("tiny", num_layers=layers, num_decoder_layers=layers, scan_layers=scan, vocab_size=2176)
    return t5pod_step(config, 8, (64, 16)).compile_s


def pipeline_rows_per_s(task: str, lengths: dict, seconds: float = 5.0) -> float:
    import tensorflow as tf

    from t5pod import tasks  # noqa: F401
    from t5pod.data import pipeline

    dataset = pipeline.get_dataset(task, lengths, "train", seed=0, shard_index=0, num_shards=1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1  # one core
    iterator = iter(dataset.with_options(options))
    next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    return count / (time.perf_counter() - start)


SHARED_TEXT = os.path.join(os.path.dirname(HERE), "..", "shared", "data", "pretrain", "gutenberg")
V3_8_HOST = {"chips": 4, "peak_flops": 123e12, "vcpus": 96}  # TPU v3-8: 4 chips x 123 TFLOP/s bf16


def data_feed(seconds: float) -> dict:
    """Span corruption at 512/114 with a 32k-piece vocabulary trained on the shared books: packed
    rows per second on one core, and the cores a TPU v3-8 host needs to feed T5 1.1 base at 50% MFU."""
    import glob

    from t5pod import tasks
    from t5pod.data import text_sources, vocabularies

    files = sorted(glob.glob(os.path.join(SHARED_TEXT, "*.txt")))
    if not files:
        return {"skipped": f"no text at {SHARED_TEXT}"}
    vocabulary = os.path.join(os.path.expanduser("~/.cache/t5pod/bench"), "gutenberg-32k", "spiece.model")
    if not os.path.exists(vocabulary):  # trained once (a few minutes), then reused
        texts = (x["text"].decode("utf-8") for x in text_sources.text_dataset(files).as_numpy_iterator())
        vocabularies.train_vocabulary(texts, vocabulary, vocab_size=32000)
    tasks.register_all(vocabulary_path=vocabulary, text_file_pattern=os.path.join(SHARED_TEXT, "*.txt"))
    rows_per_core = pipeline_rows_per_s("text_span_corruption", {"inputs": 512, "targets": 114}, seconds)
    base = model("t5_1_1/base")
    per_example = flops.train_flops_per_example(base, 512, 114)
    needed = V3_8_HOST["chips"] * V3_8_HOST["peak_flops"] * 0.5 / per_example
    return {
        "vocabulary_pieces": 32000,
        "rows_per_s_one_core": rows_per_core,
        "t5_1_1_base_train_flops_per_row": per_example,
        "v3_8_rows_per_s_at_50pct_mfu": needed,
        "v3_8_cores_needed": needed / rows_per_core,
        "v3_8_vcpus": V3_8_HOST["vcpus"],
    }


def xxl_plan(remat: str, fsdp: bool) -> dict:
    flags = [
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/t5_1_1/xxl.gin",
        "--gin.MESH_SHAPE=(8, 8)",
        "--gin.BATCH_SIZE=64",
        f"--gin.FSDP={fsdp}",
        "--gin.t5pod.T5Config.scan_layers=True",
        f"--gin.t5pod.T5Config.remat_policy='{remat}'",
        "--gin.t5pod.T5Config.dtype='bfloat16'",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "t5pod", "plan", "--num_devices=64", "--json", *flags],
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, XLA_FLAGS=""),
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_profile(name: str, config, batch: int, lengths) -> dict:
    ours = t5pod_step(config, batch, lengths)
    result = profile_step.profile(ours.compiled, lambda: ours.seconds(1), config, batch, lengths, steps=1)
    return {"config": name, **result}


def cpu_results() -> dict:
    results = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "cpu_count": os.cpu_count(),
    }
    peak = matmul_peak()
    results["matmul_peak_flops"] = peak
    from t5pod import tasks

    tasks.register_all()
    sizes = [("tiny", model("tiny", vocab_size=2176), 8 if QUICK else 32, (64, 16) if QUICK else (128, 32), True)]
    if not QUICK:
        sizes += [
            ("t5_1_1/small", model("t5_1_1/small"), 4, (128, 32), True),
            ("base width, 2 layers", model("t5_1_1/base", num_layers=2, num_decoder_layers=2), 8, (128, 32), False),
        ]
    results["train"] = [train_figures(n, c, b, lengths, peak, ref) for n, c, b, lengths, ref in sizes]
    results["decode"] = (
        [decode_figures("tiny", model("tiny", vocab_size=2176), 8, 32, 8, 2)]
        if QUICK
        else [decode_figures("t5_1_1/small", model("t5_1_1/small"), batch, 128, 32, 5) for batch in (1, 8, 32)]
    )
    results["profile"] = (
        step_profile("tiny", model("tiny", vocab_size=2176), 8, (64, 16))
        if QUICK
        else step_profile("t5_1_1/base", model("t5_1_1/base", scan_layers=True), 2, (512, 114))
    )

    layers_big = 3 if QUICK else 24
    results["compile_s"] = {f"scan_{n}": compile_time(n, True) for n in (2, layers_big)}
    results["scan_compile_ratio_24_vs_2"] = results["compile_s"][f"scan_{layers_big}"] / results["compile_s"]["scan_2"]
    if not QUICK:  # the smoke run measures the scanned stack only
        results["compile_s"].update({f"unrolled_{n}": compile_time(n, False) for n in (2, layers_big)})
        results["unrolled_compile_ratio_24_vs_2"] = (
            results["compile_s"][f"unrolled_{layers_big}"] / results["compile_s"]["unrolled_2"]
        )

    demo_rows = pipeline_rows_per_s("demo_span_corruption", {"inputs": 128, "targets": 32}, 2 if QUICK else 5)
    tiny = results["train"][0]
    results["pipeline_feed_ratio"] = {"demo": demo_rows / (tiny["batch"] / tiny["step_s"])}
    if not QUICK:
        small = results["train"][1]
        small_rows = pipeline_rows_per_s("demo_span_corruption", {"inputs": 128, "targets": 32}, 5)
        results["pipeline_feed_ratio"]["small"] = small_rows / (small["batch"] / small["step_s"])
        results["data_feed"] = data_feed(20)
        results["xxl_peak_bytes"] = {
            "no remat, no FSDP": xxl_plan("none", False),
            "remat full": xxl_plan("full", False),
            "remat full + FSDP": xxl_plan("full", True),
        }
    print_table(results)
    return results


def accelerator_results() -> dict:
    """T5 1.1 base and large, bfloat16, at the batch that fills the device; on CPU (the test suite's
    run of this path) the tiny model at 64/16 in BENCH_DEVICE_MEMORY_BYTES."""
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    memory = int(os.environ.get("BENCH_DEVICE_MEMORY_BYTES", 0)) or accelerator.device_memory_bytes(device)
    if not memory:
        raise SystemExit(f"{device.device_kind} does not report its memory; set BENCH_DEVICE_MEMORY_BYTES.")
    if on_cpu:
        configs, lengths, min_rows, steps = [("tiny", model("tiny", vocab_size=2176))], (64, 16), 8, 2
    else:
        configs, lengths, min_rows, steps = [(n, model(n)) for n in accelerator.CONFIGS], accelerator.LENGTHS, 32, 5
    rows = [accelerator.measure(name, config, lengths, memory, steps, min_rows) for name, config in configs]
    print(accelerator.format_rows(rows))
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "devices": jax.device_count(),
        "peak_flops_per_device": flops.peak_flops_per_device(device),
        "train": rows,
    }


def main():
    platform = jax.devices()[0].platform
    forced = os.environ.get("BENCH_ACCELERATOR_PATH") == "1"
    if platform in ("gpu", "tpu") or forced:
        section, results = platform + (" (accelerator path)" if platform == "cpu" else ""), accelerator_results()
    else:
        section, results = platform, cpu_results()
    path = os.environ.get("BENCH_OUTPUT") or os.path.join(HERE, "results.json")
    everything = {}
    if os.path.exists(path):  # keep the other platforms' sections
        with open(path) as f:
            everything = json.load(f)
        if "device" in everything:  # the single-platform layout of earlier versions
            everything = {}
    everything[section] = results
    with open(path, "w") as f:
        json.dump(everything, f, indent=2)
    print(f"\nwrote {path} [{section!r}]")


def print_table(r):
    print(
        f"device: {r['device']} ({r['platform']}, {r['cpu_count']} cores); "
        f"float32 matmul peak {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'config':24} {'batch':>5} {'lengths':>9} {'step s':>8} {'tokens/s':>9} {'MFU':>6} "
        f"{'ref tok/s':>9} {'speedup':>7}"
    )
    for row in r["train"]:
        print(
            f"{row['config']:24} {row['batch']:5d} {str(tuple(row['lengths'])):>9} {row['step_s']:8.3f} "
            f"{row['train_tokens_per_s']:9.0f} {row['mfu']:6.3f} "
            f"{row.get('reference_tokens_per_s', float('nan')):9.0f} "
            f"{row.get('reference_speedup', float('nan')):7.2f}"
        )
    for row in r["decode"]:
        print(
            f"greedy decoding {row['config']}, batch {row['batch']}, {row['input_length']} -> {row['decode_length']} "
            f"tokens: {row['decode_tokens_per_s']:.0f} tokens/s vs generate {row['reference_tokens_per_s']:.0f} "
            f"(decode_speedup {row['decode_speedup']:.2f}; same predictions {row['same_predictions']})"
        )
    print(profile_step.format_profile(r["profile"]["config"], r["profile"]))
    print("compile seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["compile_s"].items()))
    print(
        f"scan_compile_ratio_24_vs_2 {r['scan_compile_ratio_24_vs_2']:.2f} "
        f"(unrolled: {r.get('unrolled_compile_ratio_24_vs_2', float('nan')):.2f})"
    )
    print("pipeline_feed_ratio " + ", ".join(f"{k} {v:.1f}" for k, v in r["pipeline_feed_ratio"].items()))
    feed = r.get("data_feed", {})
    if "rows_per_s_one_core" in feed:
        print(
            f"span corruption 512/114, 32k vocabulary: {feed['rows_per_s_one_core']:.1f} rows/s on one core; "
            f"a TPU v3-8 host feeding T5 1.1 base at 50% MFU needs {feed['v3_8_rows_per_s_at_50pct_mfu']:.0f} rows/s "
            f"= {feed['v3_8_cores_needed']:.1f} of its {feed['v3_8_vcpus']} vCPUs"
        )
    for name, plan in r.get("xxl_peak_bytes", {}).items():
        peak = plan.get("peak_bytes")
        print(
            f"T5 1.1 XXL on 64 devices (8x8), {name}: "
            + (f"peak {peak / 2**30:.2f} GiB/device" if peak else plan.get("error", "?"))
        )


if __name__ == "__main__":
    main()
