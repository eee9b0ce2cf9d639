"""The parts of the accelerator benchmark that do not need an accelerator: the batch that fills a
device, the bfloat16 policy, the peak table, the FLOP split and the profile's grouping of ops."""

import json
import os
import subprocess
import sys

import pytest

from bench import profile_step
from conftest import REPO
from t5pod import flops, planning
from t5pod.configs import BatchConfig, StepConfig, T5Config


MODEL = T5Config(
    vocab_size=256, d_model=64, d_kv=16, num_heads=4, d_ff=256, num_layers=4, dropout_rate=0.0, scan_layers=True
)
CONFIG = StepConfig(BatchConfig({"inputs": 256, "targets": 8}, batch_size=8))  # data 8 on the 8 fake devices


@pytest.fixture
def fake_peaks(monkeypatch):
    """plan() replaced by a table of peak bytes per (remat policy, global batch): the test sets the
    memory, so the expected choice follows from the table by hand."""
    peaks = {
        ("none", 8): 300,
        ("none", 16): 500,
        ("none", 32): 900,
        ("save_dots", 8): 200,
        ("save_dots", 16): 350,
        ("save_dots", 32): 600,
        ("full", 8): 150,
        ("full", 16): 250,
        ("full", 32): 450,
    }
    calls = []

    def plan(model_config, config, decode=None):
        calls.append((model_config.remat_policy, config.batch.batch_size))
        return {"peak_bytes": peaks[(model_config.remat_policy, config.batch.batch_size)]}

    monkeypatch.setattr(planning, "plan", plan)
    return calls


def test_fit_batch_takes_the_largest_batch_without_remat_when_it_fits(fake_peaks):
    fit = planning.fit_batch(MODEL, CONFIG, 500, min_rows_per_device=1, max_rows_per_device=4, headroom=1.0)
    assert (fit["remat_policy"], fit["batch_size"], fit["plan"]["peak_bytes"]) == ("none", 16, 500)
    assert fit["tried"] == [["none", 8, 300], ["none", 16, 500], ["none", 32, 900]]
    # At 90% of 1000 bytes the batch of 32 (900) fits too, and max_rows_per_device=4 stops the search.
    fit = planning.fit_batch(MODEL, CONFIG, 1000, min_rows_per_device=1, max_rows_per_device=4)
    assert (fit["remat_policy"], fit["batch_size"]) == ("none", 32) and len(fit["tried"]) == 3


def test_fit_batch_turns_to_remat_only_when_no_remat_cannot_fit_the_smallest_batch(fake_peaks):
    # 'none' needs 300 bytes for 8 rows; 'save_dots' fits 8 (200) but not 16 (350).
    fit = planning.fit_batch(MODEL, CONFIG, 260, min_rows_per_device=1, max_rows_per_device=4, headroom=1.0)
    assert (fit["remat_policy"], fit["batch_size"]) == ("save_dots", 8)
    assert fit["tried"] == [["none", 8, 300], ["save_dots", 8, 200], ["save_dots", 16, 350]]
    # With 2 rows per device at least (global 16), 'none' (500) and 'save_dots' (350) are out; 'full'
    # fits 16 (250) but not 32 (450).
    fit = planning.fit_batch(MODEL, CONFIG, 300, min_rows_per_device=2, max_rows_per_device=4, headroom=1.0)
    assert (fit["remat_policy"], fit["batch_size"]) == ("full", 16)


def test_fit_batch_says_when_nothing_fits(fake_peaks):
    with pytest.raises(ValueError, match=r"does not fit .* under any remat policy"):
        planning.fit_batch(MODEL, CONFIG, 100, min_rows_per_device=1, headroom=1.0)
    assert fake_peaks == [("none", 8), ("save_dots", 8), ("full", 8)]
    fake_peaks.clear()
    for bad in (
        dict(memory_bytes=0),
        dict(memory_bytes=500, headroom=0.0),
        dict(memory_bytes=500, headroom=1.5),
        dict(memory_bytes=500, min_rows_per_device=0),
        dict(memory_bytes=500, min_rows_per_device=8, max_rows_per_device=4),
    ):
        with pytest.raises(ValueError, match="fit_batch needs"):
            planning.fit_batch(MODEL, CONFIG, **bad)
    assert not fake_peaks  # refused before compiling anything


def test_peak_table_matches_the_device_kinds_jax_reports():
    class Device:
        platform = "gpu"

    for kind, peak in [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("TPU v4", 275e12),
        ("TPU v3", 61.5e12),
        ("TPU v5p", 459e12),
        ("TPU v5 lite", 197e12),
        ("TPU v6 lite", 918e12),
    ]:
        Device.device_kind = kind
        assert flops.peak_flops_per_device(Device()) == peak, kind


def test_flops_by_part_by_hand():
    # One layer each side, d=4, heads*kv=4, ReLU d_ff=8, vocab 10; inputs 3, targets 2 tokens.
    config = T5Config(vocab_size=10, d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1)
    parts = flops.train_flops_by_part(config, 3, 2)
    assert parts == {
        # encoder q,k,v,o on 3 tokens; cross k,v on the 3 encoder tokens; decoder self q,k,v,o and cross q,o on 2
        "attention projections": 6 * (4 * 16 * 3 + 2 * 16 * 3 + (4 * 16 + 2 * 16) * 2),
        "attention scores and values": 12 * 4 * (3 * 3 + 2 * 2 / 2 + 3 * 2),
        "feed-forward": 6 * (2 * 32) * (3 + 2),
        "output layer": 6 * 4 * 10 * 2,
    }
    assert sum(parts.values()) == flops.train_flops_per_example(config, 3, 2)


HLO = """\
ENTRY %main.1 (p0: f32[8,16]) -> (f32[8,16], s32[]) {
  %ynn_fusion.3 = f32[8,16]{1,0} fusion(%p0), kind=kCustom, calls=%fc.3, metadata={op_name="jit(train_step)/jvp(Transformer)/Transformer.encode/encoder/layers_0/layers_0.attend/attention/dot_product/bqhd,bhkd->bhqk/dot_general"}
  %fusion.7 = f32[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fc.7, metadata={op_name="jit(train_step)/transpose(jvp(cross_entropy))/reduce_sum"}
  %dot.2 = f32[8,16]{1,0} dot(%p0, %p0), metadata={op_name="jit(train_step)/transpose(jvp(Transformer))/Transformer.decode/decoder/logits/dot_general"}
  %while.4 = (s32[], f32[8,16]{1,0}) while(%tuple.1), condition=%cond, body=%body, metadata={op_name="jit(train_step)/jvp(Transformer)/Transformer.encode/encoder/layers/while"}
  %fusion.9 = f32[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fc.9, metadata={op_name="jit(train_step)/optimizer/mul"}
  %fusion.10 = f32[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fc.10, metadata={op_name="jit(train_step)/jvp(Transformer)/Transformer.decode/decoder/layers_1/pre_self_attention_layer_norm/mul"}
  %fusion.11 = f32[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fc.11, metadata={op_name="jit(train_step)/jvp(Transformer)/Transformer.decode/decoder/layers_1/self_attention/bqe,ehd->bqhd/dot_general"}
  %copy.5 = f32[8,16]{0,1} copy(%p0)
  ROOT %fusion.12 = f32[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fc.12, metadata={op_name="jit(train_step)/jvp(Transformer)/Transformer.decode/decoder/layers_1/mlp/wi/dot_general"}
}
"""


def test_profile_groups_ops_by_the_scope_that_made_them():
    assert profile_step.instruction_parts(HLO) == {
        "ynn_fusion.3": "attention scores and values",
        "fusion.7": "loss (cross entropy)",
        "dot.2": "output layer",
        "while.4": None,
        "fusion.9": "optimizer",
        "fusion.10": profile_step.PARTS[-1],
        "fusion.11": "attention projections",
        "copy.5": profile_step.PARTS[-1],
        "fusion.12": "feed-forward",
    }


@pytest.mark.slow
@pytest.mark.e2e
def test_the_accelerator_path_runs_on_cpu(tmp_path):
    """bench/run.py's GPU/TPU path, forced on CPU with the tiny model at 64/16 and 200 MB per device."""
    output = tmp_path / "results.json"
    output.write_text(json.dumps({"gpu": {"device": "NVIDIA H200", "train": []}}))  # another machine's section
    memory = 200_000_000
    env = dict(
        os.environ,
        XLA_FLAGS="",
        BENCH_QUICK="1",
        BENCH_ACCELERATOR_PATH="1",
        BENCH_DEVICE_MEMORY_BYTES=str(memory),
        BENCH_OUTPUT=str(output),
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.run"], capture_output=True, text=True, timeout=900, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["gpu"] == {"device": "NVIDIA H200", "train": []}  # kept
    (row,) = results["cpu (accelerator path)"]["train"]
    # float32 parameters, bfloat16 matmuls.
    assert row["dtypes"] == {"params": ["float32"], "matmuls": ["bf16"]}
    # The batch is the last that fit 90% of the memory; the next doubling did not.
    budget = 0.9 * memory
    same_policy = [t for t in row["tried"] if t[0] == row["remat_policy"]]
    fitting = [batch for _, batch, peak in same_policy if peak <= budget]
    assert row["batch"] == fitting[-1] and row["planned_peak_bytes"] <= budget
    assert same_policy[-1][2] > budget and same_policy[-1][1] == 2 * row["batch"]
    assert row["train_tokens_per_s"] == pytest.approx(row["batch"] * 80 / row["step_s"])
    assert 0 < row["mfu"] < 1 and row["decode_tokens_per_s"] > 0
    assert "MFU" in done.stdout and "decode tok/s" in done.stdout
