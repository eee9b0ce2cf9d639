"""FLOP counting, the plan command, and bfloat16 training against float32."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import tasks
from t5pod import flops, ginconf, network, trainer
from t5pod.config import T5Config


def test_flops_of_t5_1_1_base():
    ginconf.parse(["models/t5_1_1/base.gin"])
    assert flops.train_flops_per_example(ginconf.model_config(), 512, 114) == pytest.approx(0.4252e12, rel=1e-3)


def test_flops_by_hand():
    # One layer each side, d=4, heads*kv=4, ReLU d_ff=8, vocab 10; inputs 3, targets 2 tokens.
    config = T5Config(vocab_size=10, d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1)
    encoder_layer = 4 * 16 + 2 * 32          # q,k,v,o + wi,wo
    cross_kv, cross_qo = 2 * 16, 2 * 16
    decoder_layer = 4 * 16 + 2 * 32
    dense = 6 * ((encoder_layer + cross_kv) * 3 + (decoder_layer + cross_qo + 4 * 10) * 2)
    attention = 12 * 4 * (9 + (4 / 2 + 6))
    assert flops.train_flops_per_example(config, 3, 2) == dense + attention
    # The decoder-only model: one stack over all 5 tokens, causal attention.
    lm = dataclasses.replace(config, architecture="decoder_only")
    assert flops.train_flops_per_example(lm, 3, 2) == 6 * (encoder_layer + 4 * 10) * 5 + 12 * 4 * 25 / 2


def _plan(*flags):
    done = subprocess.run([sys.executable, "-m", "t5pod", "plan", "--gin_file=runs/pretrain.gin",
                           "--gin_file=models/tiny.gin", "--gin.MODEL_DIR='/unused'", "--gin.BATCH_SIZE=16",
                           "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--num_devices=8", "--json",
                           *flags], capture_output=True, text=True, timeout=600, env=dict(os.environ, XLA_FLAGS=""))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_plan_reports_per_device_memory():
    ginconf.parse(["models/tiny.gin"])
    total = network.count_parameters(ginconf.model_config()) * 4
    text, replicated = _plan("--gin.MESH_SHAPE=(8, 1)", "--hbm_gib=16")
    assert replicated["devices"] == 8 and replicated["params_bytes"] == total  # data parallel: a full copy each
    assert "fits in 16 GiB" in text and replicated["peak_bytes"] >= total
    text, split = _plan("--gin.MESH_SHAPE=(2, 4)", "--gin.FSDP=True", "--hbm_gib=0.000001")
    assert split["params_bytes"] < total / 4  # model axis 4 and FSDP over data 2
    assert "does NOT fit" in text


@pytest.mark.slow
def test_bfloat16_training_tracks_float32(tmp_path):
    tasks.register_all()
    model = T5Config(vocab_size=2176, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = trainer.TrainConfig(
            model_dir=str(tmp_path / dtype), mixture_or_task_name="demo_span_corruption",
            task_feature_lengths={"inputs": 64, "targets": 16}, train_steps=50, batch_size=16, warmup_steps=100,
            log_period=10, checkpoint_period=50, mesh_shape=(-1, 1), async_checkpointing=False)
        losses[dtype] = trainer.train(config, dataclasses.replace(model, dtype=dtype))["loss"]
    assert losses["float32"] < 7.0  # it learned something (ln 2176 = 7.7)
    assert abs(losses["bfloat16"] - losses["float32"]) / losses["float32"] < 0.01


@pytest.mark.slow
def test_bench_quick_run(tmp_path):
    from conftest import REPO

    env = dict(os.environ, XLA_FLAGS="", BENCH_QUICK="1", BENCH_OUTPUT=str(tmp_path / "results.json"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the benchmark measures compilation
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py")], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(tmp_path / "results.json"))
    (tiny,) = results["train"]
    assert tiny["train_tokens_per_s"] > 0 and 0 < tiny["mfu"] < 1 and tiny["reference_speedup"] > 0
    assert results["scan_compile_ratio_24_vs_2"] > 0 and results["pipeline_feed_ratio"]["demo"] > 0
    assert "speedup" in done.stdout and "pipeline_feed_ratio" in done.stdout
