"""FLOP counting, the plan command, and bfloat16 training against float32."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import SMALL_MODEL, train_config
from t5pod import tasks
from t5pod import flops, ginconf, models, planning, train_loop, trainer
from t5pod.configs import T5Config


def test_flops_of_t5_1_1_base():
    ginconf.parse(["models/t5_1_1/base.gin"])
    assert flops.train_flops_per_example(ginconf.model_config(), 512, 114) == pytest.approx(0.4252e12, rel=1e-3)


def test_flops_by_hand():
    # One layer each side, d=4, heads*kv=4, ReLU d_ff=8, vocab 10; inputs 3, targets 2 tokens.
    config = T5Config(vocab_size=10, d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1)
    encoder_layer = 4 * 16 + 2 * 32  # q,k,v,o + wi,wo
    cross_kv, cross_qo = 2 * 16, 2 * 16
    decoder_layer = 4 * 16 + 2 * 32
    dense = 6 * ((encoder_layer + cross_kv) * 3 + (decoder_layer + cross_qo + 4 * 10) * 2)
    attention = 12 * 4 * (9 + (4 / 2 + 6))
    assert flops.train_flops_per_example(config, 3, 2) == dense + attention
    # The decoder-only model: one stack over all 5 tokens, causal attention.
    lm = dataclasses.replace(config, architecture="decoder_only")
    assert flops.train_flops_per_example(lm, 3, 2) == 6 * (encoder_layer + 4 * 10) * 5 + 12 * 4 * 25 / 2


def _plan(*flags):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "t5pod",
            "plan",
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/tiny.gin",
            "--gin.BATCH_SIZE=16",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
            "--num_devices=8",
            "--json",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, XLA_FLAGS=""),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.e2e
def test_plan_reports_per_device_memory():
    ginconf.parse(["models/tiny.gin"])
    total = models.count_parameters(ginconf.model_config()) * 4
    text, replicated = _plan("--gin.MESH_SHAPE=(8, 1)", "--hbm_gib=16")
    assert replicated["devices"] == 8 and replicated["params_bytes"] == total  # data parallel: a full copy each
    assert "fits in 16 GiB" in text and replicated["peak_bytes"] >= total
    # Decoding: the same parameter layout, BATCH_SIZE rows x the targets length, a full copy each.
    assert replicated["decode_params_bytes"] == total and replicated["decode_peak_bytes"] >= total
    assert (replicated["decode_batch_size"], replicated["decode_length"], replicated["decode_beam_size"]) == (16, 16, 1)
    assert "decoding 16 rows x 16 tokens" in text
    text, split = _plan("--gin.MESH_SHAPE=(2, 4)", "--gin.FSDP=True", "--hbm_gib=0.000001")
    assert split["params_bytes"] < total / 4  # model axis 4 and FSDP over data 2
    assert split["decode_params_bytes"] == split["params_bytes"]
    assert "does NOT fit" in text


@pytest.mark.slow
@pytest.mark.e2e
def test_plan_fit_batch_finds_the_largest_batch_that_fits():
    lengths = "TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 16}"
    tasks.register_all()
    ginconf.parse(
        ["tasks.gin", "runs/pretrain.gin", "models/tiny.gin"], ["MESH_SHAPE=(8, 1)", lengths], unneeded=["MODEL_DIR"]
    )
    model, config = ginconf.model_config(), ginconf.step_config()
    peaks = {
        batch: planning.plan(model, planning.with_batch_size(config, batch))["peak_bytes"] for batch in (8, 16, 32)
    }
    assert peaks[8] < peaks[16] < peaks[32]
    # 90% of the memory falls between the peaks of 16 and 32 rows: 16 is the answer.
    hbm_gib = (peaks[16] + peaks[32]) / 2 / 0.9 / 2**30
    text, fitted = _plan(
        "--gin.MESH_SHAPE=(8, 1)", f"--gin.{lengths}", "--fit_batch", "--min_rows_per_device=1", f"--hbm_gib={hbm_gib}"
    )
    assert "--gin.BATCH_SIZE=16 " in text and "with remat 'none'" in text
    assert fitted["fit_tried"] == [["none", 8, peaks[8]], ["none", 16, peaks[16]], ["none", 32, peaks[32]]]
    assert fitted["peak_bytes"] == peaks[16] and fitted["decode_batch_size"] == 16  # the plan shown is 16's
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "t5pod",
            "plan",
            "--gin_file=runs/pretrain.gin",
            "--gin_file=models/tiny.gin",
            "--fit_batch",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, XLA_FLAGS=""),
    )
    assert done.returncode == 2 and "needs the memory per device: add --hbm_gib" in done.stderr


@pytest.mark.slow
def test_bfloat16_training_tracks_float32(tmp_path):
    tasks.register_all()
    model = T5Config(
        vocab_size=2176,
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
    )
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = train_config(
            tmp_path / dtype,
            task_feature_lengths={"inputs": 64, "targets": 16},
            train_steps=50,
            batch_size=16,
            log_period=10,
            checkpoint_period=50,
        )
        losses[dtype] = trainer.train(config, dataclasses.replace(model, dtype=dtype))["loss"]
    assert losses["float32"] < 7.0  # it learned something (ln 2176 = 7.7)
    assert abs(losses["bfloat16"] - losses["float32"]) / losses["float32"] < 0.01


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_quick_run(tmp_path):
    from conftest import REPO

    env = dict(os.environ, XLA_FLAGS="", BENCH_QUICK="1", BENCH_OUTPUT=str(tmp_path / "results.json"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the benchmark measures compilation
    done = subprocess.run(
        [sys.executable, "-m", "bench.run"], capture_output=True, text=True, timeout=900, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(tmp_path / "results.json"))["cpu"]
    (tiny,) = results["train"]
    assert tiny["train_tokens_per_s"] > 0 and 0 < tiny["mfu"] < 1 and tiny["reference_speedup"] > 0
    assert results["scan_compile_ratio_24_vs_2"] > 0 and results["pipeline_feed_ratio"]["demo"] > 0
    assert "speedup" in done.stdout and "pipeline_feed_ratio" in done.stdout
    # The profile: every op's time lands in some part, each part of the model took some.
    parts = results["profile"]["parts"]
    assert sum(p["time_share"] for p in parts.values()) == pytest.approx(1.0)
    assert sum(p["flop_share"] for p in parts.values()) == pytest.approx(1.0)
    for part in (
        "attention projections",
        "attention scores and values",
        "feed-forward",
        "output layer",
        "loss (cross entropy)",
        "optimizer",
    ):
        assert parts[part]["time_share"] > 0, part
    assert "where the step's time goes" in done.stdout


def _tiny_run_config(tmp_path, **overrides):
    settings = dict(task_feature_lengths={"inputs": 64, "targets": 16}, train_steps=2, mesh_shape=(4, 2))
    return train_config(tmp_path, **{**settings, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["decoder_only", "prefix_lm"])
def test_plan_gives_the_memory_of_the_step_that_trains_decoder_only_models(tmp_path, architecture):
    tasks.register_all()
    model = T5Config(
        vocab_size=2176,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        dropout_rate=0.0,
        architecture=architecture,
    )
    config = _tiny_run_config(tmp_path)
    planned = planning.plan(model, config.step)
    trainer.train(config, model)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    (compiled,) = [r for r in rows if r["split"] == "compile"]
    for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes", "model_flops_per_step"):
        assert planned[key] == compiled[key], key
    # By hand: the step reads the state (parameters, optimizer state, the int32 step) and at most the
    # six PrefixLM features of [2 rows per device, 64 + 16] int32 and the uint32[2] key (jit drops
    # the arguments a model does not read, e.g. decoder_causal_attention for the plain LM).
    state_bytes = planned["params_bytes"] + planned["opt_state_bytes"] + 4
    assert state_bytes < planned["argument_bytes"] <= state_bytes + 6 * 2 * (64 + 16) * 4 + 8
    # The encoder-decoder features of the same lengths are another program (what plan compiled before).
    other = planning.plan(dataclasses.replace(model, architecture="encoder_decoder"), config.step)
    assert other["argument_bytes"] != planned["argument_bytes"]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2] and all(0 < r["mfu"] < 1 for r in train_rows)


@pytest.mark.slow
def test_the_train_loop_refuses_hidden_host_to_device_copies(tmp_path, monkeypatch):
    tasks.register_all()
    model = SMALL_MODEL
    # A metric sum that adds a host array copies it to the device on every step.
    monkeypatch.setattr(
        train_loop, "_add_sums", lambda totals, metrics: {k: v + np.ones((), np.float32) for k, v in metrics.items()}
    )
    # Steps 2 and 3 share a logging window, so step 3 adds its sums to step 2's.
    with pytest.raises(jax.errors.JaxRuntimeError, match="Disallowed host-to-device transfer"):
        trainer.train(_tiny_run_config(tmp_path, train_steps=3, log_period=3), model)


def test_peak_flops_table_and_measured_cpu_peak():
    class Device:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert flops.peak_flops_per_device(Device()) == 989e12
    Device.device_kind = "TPU v5 lite"
    assert flops.peak_flops_per_device(Device()) == 197e12
    cpu = jax.devices("cpu")[0]
    measured = flops.peak_flops_per_device(cpu)
    assert 1e8 < measured < 1e13 and flops.peak_flops_per_device(cpu) == measured  # measured once
    # The training log says which kind of peak its MFU divides by.
    assert (
        flops.describe_peak(Device()) == "MFU is against 197 TFLOP/s per device, the data sheet's dense bfloat16 peak"
    )
    assert flops.describe_peak(cpu) == (
        f"MFU is against {round(measured / 1e9)} GFLOP/s per device, a float32 matmul "
        "timed at start-up (it moves with the machine's load)"
    )


def test_the_checkpoint_save_benchmark_times_both_modes_of_a_whole_state(tmp_path):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("checkpoint_save", REPO / "bench" / "checkpoint_save.py")
    checkpoint_save = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkpoint_save)
    figures = checkpoint_save.measure("models/tiny.gin", 1, str(tmp_path))
    # The whole state: the float32 parameters (counted here from the model's shapes) and Adafactor's
    # moments, factored for matrices (a few percent more).
    from flax import linen as nn

    from t5pod import ginconf, models

    ginconf.parse(["models/tiny.gin"], [])
    shapes = nn.unbox(models.abstract_variables(ginconf.model_config())["params"])
    parameter_bytes = 4 * sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))
    assert parameter_bytes < figures["state_bytes"] < 1.1 * parameter_bytes
    for mode in ("async", "sync"):
        assert 0 < figures[f"{mode}_blocked_s"] <= figures[f"{mode}_total_s"]
    assert list(tmp_path.iterdir()) == []  # every measured run removed


@pytest.mark.slow
def test_the_finetuning_methods_benchmark_counts_what_each_method_trains():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("finetuning_methods", REPO / "bench" / "finetuning_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from t5pod import ginconf

    ginconf.parse(["models/tiny.gin"], ["t5pod.T5Config.dropout_rate = 0.0"])
    model = ginconf.model_config()  # d_model 128, 4 heads of 32, 2 + 2 layers, gated feed-forward
    lengths = {"inputs": 32, "targets": 8}
    figures = {
        trainable: bench.measure(model, fields, trainable, 4, lengths, steps=1)
        for _, fields, trainable in bench.METHODS
    }
    # By hand: adapters 4 x (128 x 32 + 32 x 128) plus 12 layer norms of 128 (2 x 2 + 1 in the
    # encoder, 2 x 3 + 1 in the decoder); LoRA 6 attentions x (query, value) x 8 x (128 + 4 x 32);
    # prompt 20 x 128. Two steps, so LoRA's A (still at rest while B is zero) has moved too.
    assert figures["adapters"]["trained"] == 4 * 2 * 128 * 32 + 12 * 128
    assert figures["lora"]["trained"] == 6 * 2 * 8 * (128 + 128)
    assert figures["prompt"]["trained"] == 20 * 128
    assert figures["all"]["trained"] == figures["all"]["parameters"]
    # Adafactor keeps no first moment; the second is factored for matrices of both sides >= 128 and
    # full otherwise: the prompt's [20, 128] moment is 20 x 128 float32 plus a few counters.
    assert 4 * 20 * 128 <= figures["prompt"]["optimizer_bytes"] <= 4 * 20 * 128 + 64
    assert figures["all"]["optimizer_bytes"] > 10 * figures["lora"]["optimizer_bytes"]
    assert all(f["step_s"] > 0 for f in figures.values())
