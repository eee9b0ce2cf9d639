"""Model FLOPs of a training step, counted the way an encoder-decoder spends them.

Encoder weights see only input tokens and decoder weights only target tokens, so per example

  6 * [(N_enc + N_cross_kv) * S_in + (N_dec + N_cross_qo + d_model * vocab) * S_tgt]
  + 12 * (heads * d_kv) * [L_enc * S_in^2 + L_dec * (S_tgt^2 / 2 + S_in * S_tgt)]

where N_enc are the encoder layers' weights, N_cross_kv the cross-attention key/value weights
(applied to the encoder's tokens), N_dec the decoder's self-attention and feed-forward weights,
N_cross_qo the cross-attention query/output weights, d_model * vocab the output layer, and the
second line the attention score and value products (causal self-attention counts half). 6 = 2
(multiply-add) x 3 (forward, and twice that backward). Not 6 * N_total * (S_in + S_tgt), which
would charge every weight for every token. T5 1.1 base at 512/114: about 0.43 TFLOP per example.

Decoder-only models (paper §3.2) run every weight on all S = S_in + S_tgt tokens:
6 * [N_layers + d_model * vocab] * S + 12 * (heads * d_kv) * L * S^2 / 2 (the prefix LM's
fully visible inputs cost a little more; not counted). Adapters count as feed-forward weights.
"""

import time

import jax
import jax.numpy as jnp

from t5pod.configs import T5Config


def train_flops_by_part(config: T5Config, inputs_length: int, targets_length: int) -> dict[str, float]:
    """The terms of the formula above, per example: "attention projections" (query, key, value and
    output weights), "attention scores and values" (the products with the sequence), "feed-forward"
    (adapters included) and "output layer" (d_model x vocab)."""
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    mlp = (3 if config.is_gated else 2) * d * ff + 2 * d * config.adapter_dim
    attention = 4 * d * inner
    if config.is_decoder_only:
        length, layers = inputs_length + targets_length, config.num_layers
        return {
            "attention projections": 6.0 * layers * attention * length,
            "attention scores and values": 12.0 * inner * layers * length**2 / 2,
            "feed-forward": 6.0 * layers * mlp * length,
            "output layer": 6.0 * d * config.vocab_size * length,
        }
    enc, dec = config.num_layers, config.decoder_layers
    # Cross-attention: keys and values over the encoder's tokens, queries and outputs over the targets.
    projections = (enc * attention + dec * 2 * d * inner) * inputs_length + dec * (
        attention + 2 * d * inner
    ) * targets_length
    return {
        "attention projections": 6.0 * projections,
        "attention scores and values": 12.0
        * inner
        * (enc * inputs_length**2 + dec * (targets_length**2 / 2 + inputs_length * targets_length)),
        "feed-forward": 6.0 * mlp * (enc * inputs_length + dec * targets_length),
        "output layer": 6.0 * d * config.vocab_size * targets_length,
    }


def train_flops_per_example(config: T5Config, inputs_length: int, targets_length: int) -> float:
    return float(sum(train_flops_by_part(config, inputs_length, targets_length).values()))


# Dense bfloat16 peak FLOP/s per chip (per GPU), from the vendors' data sheets; MFU is measured
# against these. Keys are matched against jax.Device.device_kind, longest first.
PEAK_BF16_FLOPS = {
    "TPU v2": 45e12 / 2,  # per core; a v2 chip has two
    "TPU v3": 123e12 / 2,  # per core (JAX's device); 123 TFLOP/s per chip
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # Trillium
    "A100": 312e12,
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H200": 989e12,
}
_measured_peak: dict[str, float] = {}


def _data_sheet_peak(device: jax.Device) -> float | None:
    """The table's bfloat16 peak for the device's kind, or None (CPU and unknown kinds)."""
    for kind in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if kind.lower() in device.device_kind.lower():
            return PEAK_BF16_FLOPS[kind]
    return None


def peak_flops_per_device(device: jax.Device) -> float:
    """The device's peak FLOP/s: the table's bfloat16 figure, or (CPU and unknown kinds) one
    measured here with a float32 matmul that the device runs at its best, once per process."""
    peak = _data_sheet_peak(device)
    if peak is not None:
        return peak
    key = f"{device.platform}:{device.device_kind}"
    if key not in _measured_peak:
        _measured_peak[key] = _measure_matmul_flops(device)
    return _measured_peak[key]


def describe_peak(device: jax.Device) -> str:
    """What MFU is measured against on this device, for the training log."""
    peak = peak_flops_per_device(device)
    if _data_sheet_peak(device) is None:
        return (
            f"MFU is against {peak / 1e9:.0f} GFLOP/s per device, a float32 matmul timed at start-up "
            "(it moves with the machine's load)"
        )
    return f"MFU is against {peak / 1e12:.0f} TFLOP/s per device, the data sheet's dense bfloat16 peak"


def _measure_matmul_flops(device: jax.Device, size: int = 1024, repeats: int = 8) -> float:
    x = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
