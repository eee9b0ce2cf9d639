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

from t5pod.config import T5Config


def train_flops_per_example(config: T5Config, inputs_length: int, targets_length: int) -> float:
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    mlp = (3 if config.is_gated else 2) * d * ff + 2 * d * config.adapter_dim
    attention = 4 * d * inner
    if config.is_decoder_only:
        length = inputs_length + targets_length
        return float(6 * (config.num_layers * (attention + mlp) + d * config.vocab_size) * length
                     + 12 * inner * config.num_layers * length ** 2 / 2)
    n_enc = config.num_layers * (attention + mlp)
    n_cross_kv = config.decoder_layers * 2 * d * inner
    n_cross_qo = config.decoder_layers * 2 * d * inner
    n_dec = config.decoder_layers * (attention + mlp)
    dense = 6 * ((n_enc + n_cross_kv) * inputs_length + (n_dec + n_cross_qo + d * config.vocab_size) * targets_length)
    scores = 12 * inner * (config.num_layers * inputs_length ** 2
                           + config.decoder_layers * (targets_length ** 2 / 2 + inputs_length * targets_length))
    return float(dense + scores)
