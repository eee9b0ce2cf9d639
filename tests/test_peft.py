"""LoRA and prompt tuning (t5pod.peft): the model they start from, what trains, packing, export."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from helpers import hf_reference
from t5pod import checkpoints, ginconf, hf_export, layers, models, network, peft, trainer
from t5pod.configs import T5Config
from test_finetuning_methods import MODEL, _all_paths, _moved, _one_step_from_checkpoint, _saved_checkpoint, _train

LORA = dataclasses.replace(MODEL, lora_rank=4)
PROMPT = dataclasses.replace(MODEL, prompt_length=5)


def _init(config, seed=0):
    return nn.unbox(models.build(config).init(jax.random.PRNGKey(seed), **models.dummy_features(config))["params"])


def _features(rows=3, inputs=12, targets=6, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 2000, (rows, inputs)).astype(np.int32)
    tokens[0, 9:] = 0  # a padded row
    decoder = rng.integers(2, 2000, (rows, targets)).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray(decoder)


def _logits(config, params, tokens, decoder):
    return np.asarray(network.Transformer(config).apply({"params": params}, tokens, decoder))


def _with_random_updates(params, seed=1):
    """params with every LoRA B factor (zero at initialisation) drawn at random, so the update counts."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(params)
    for path, value in flat.items():
        if path[-1].endswith("_lora_b"):
            flat[path] = jnp.asarray(rng.normal(0, 0.5, value.shape), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def test_lora_factors_shard_with_their_kernels_and_count_as_the_paper_says():
    boxed = models.abstract_variables(dataclasses.replace(LORA, lora_targets=("query", "out", "mlp")))["params"]
    attention = boxed["encoder"]["layers_0"]["attention"]
    assert attention["query_lora_a"].names == ("embed", "lora_rank")
    assert attention["query_lora_b"].names == ("lora_rank", "heads", "kv")
    assert attention["out_lora_a"].names == ("heads", "kv", "lora_rank")
    assert attention["out_lora_b"].names == ("lora_rank", "embed")
    mlp = boxed["decoder"]["layers_1"]["mlp"]
    assert {k for k in mlp if "lora" in k} == {f"{w}_lora_{f}" for w in ("wi_0", "wi_1", "wo") for f in "ab"}
    # Query and value LoRA of rank r on a d_model x (heads * kv) kernel: r * (d_model + heads * kv) each;
    # 2 encoder attentions, 4 decoder ones (self and cross), 2 targets.
    per_update = 4 * (32 + 4 * 8)
    assert models.count_parameters(LORA) - models.count_parameters(MODEL) == 6 * 2 * per_update


@pytest.mark.slow
def test_lora_starts_as_the_checkpoint_exactly_and_trains_only_its_factors(tmp_path):
    pretrained = _saved_checkpoint(tmp_path)
    fresh = _init(LORA)
    abstract = nn.unbox(models.abstract_variables(LORA)["params"])
    started = checkpoints.read_initial_params(str(tmp_path / "pretrained"), LORA, fresh, abstract)
    tokens, decoder = _features()
    np.testing.assert_array_equal(_logits(LORA, started, tokens, decoder), _logits(MODEL, pretrained, tokens, decoder))

    history, state = _train(LORA, 2, trainable="lora")
    lora_paths = {p for p in _all_paths(history[0]) if "_lora_" in p}
    assert len(lora_paths) == 6 * 2 * 2  # 6 attentions x (query, value) x (A, B)
    # B moves at the first step; A only once B is no longer zero (its gradient is x^T g B^T).
    assert _moved(history[0], history[1]) == {p for p in lora_paths if p.endswith("_lora_b")}
    # Absolute steps (parameter scaling off): B leaves zero by about the learning rate (1e-2) in one
    # step, not by a thousandth of it as Adafactor's relative steps would move it.
    b = history[1]["encoder"]["layers_0"]["attention"]["query_lora_b"]
    assert 3e-3 < np.sqrt(np.mean(np.square(b))) <= 1e-2 + 1e-6
    assert _moved(history[0], history[2]) == lora_paths
    assert not jax.tree_util.tree_leaves(state.opt_state.inner_states["frozen"])


def test_merged_lora_is_the_same_function():
    params = _with_random_updates(_init(LORA))
    merged = peft.merge_low_rank(params, LORA)
    assert _all_paths(merged) == _all_paths(_init(MODEL))
    tokens, decoder = _features(seed=3)
    ours, base = _logits(LORA, params, tokens, decoder), _logits(MODEL, _init(MODEL), tokens, decoder)
    np.testing.assert_allclose(_logits(MODEL, merged, tokens, decoder), ours, atol=2e-4, rtol=1e-5)
    assert np.abs(ours - base).max() > 1e-2  # the updates change the function


@pytest.mark.slow
def test_export_hf_merges_lora_and_transformers_gives_the_unmerged_logits(tmp_path):
    import transformers

    config = dataclasses.replace(LORA, lora_alpha=8.0, lora_targets=("query", "value", "out", "mlp"))
    params = _with_random_updates(_init(config, seed=5), seed=6)
    checkpoints.save_params(str(tmp_path / "lora"), params, config)
    hf_export.export(str(tmp_path / "lora"), str(tmp_path / "exported"), config)
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "exported")).eval()
    inputs, decoder_inputs, lengths = hf_reference.batch(config.vocab_size, seed=4)
    theirs = hf_reference.reference_logits(model, inputs, decoder_inputs)
    ours = _logits(config, params, inputs, decoder_inputs)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(theirs[row, :n], ours[row, :n], atol=1e-4, rtol=0)
    assert np.abs(ours - _logits(MODEL, peft.without_added(params, peft.is_lora), inputs, decoder_inputs)).max() > 1e-2


def test_export_hf_refuses_a_tuned_prompt(tmp_path):
    with pytest.raises(hf_export.ConversionError, match="prompt_length 5"):
        hf_export.hf_tensors(_init(PROMPT), PROMPT)


def test_the_prompt_is_visible_to_every_example_and_sees_only_itself():
    segments = jnp.asarray(peft.prompt_segment_ids(2, jnp.asarray([[1, 1, 2, 0]])))
    assert segments.tolist() == [[-1, -1, 1, 1, 2, 0]]
    mask = np.asarray(layers.make_attention_mask(segments, segments))[0, 0].astype(int)
    expected = [  # rows: queries (prompt, prompt, a, a, b, pad); columns: keys in the same order
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert mask.tolist() == expected
    positions = peft.prompt_positions(2, jnp.asarray([[0, 1, 0, 0]]))
    assert positions.tolist() == [[-2, -1, 0, 1, 0, 0]]


def test_a_packed_row_gives_each_example_what_it_gets_alone_with_the_prompt():
    params = _init(PROMPT, seed=2)
    model = network.Transformer(PROMPT)
    rng = np.random.default_rng(4)
    a_in, b_in = rng.integers(2, 2000, 7), rng.integers(2, 2000, 4)
    a_out, b_out = rng.integers(2, 2000, 3), rng.integers(2, 2000, 5)

    def alone(inputs, targets):
        decoder = np.concatenate([[0], targets[:-1]])
        return np.asarray(model.apply({"params": params}, jnp.asarray([inputs]), jnp.asarray([decoder])))[0]

    def packed_row(parts, length):
        tokens, segments, positions = [], [], []
        for i, part in enumerate(parts):
            tokens += list(part)
            segments += [i + 1] * len(part)
            positions += list(range(len(part)))
        pad = length - len(tokens)
        return [np.asarray([x + [0] * pad], np.int32) for x in (tokens, segments, positions)]

    enc, enc_seg, enc_pos = packed_row([a_in, b_in], 14)
    dec_targets, dec_seg, dec_pos = packed_row([a_out, b_out], 10)
    dec_in = np.asarray([[0, *a_out[:-1], 0, *b_out[:-1], 0, 0]], np.int32)
    logits = np.asarray(
        model.apply(
            {"params": params},
            enc,
            dec_in,
            encoder_segment_ids=enc_seg,
            decoder_segment_ids=dec_seg,
            encoder_positions=enc_pos,
            decoder_positions=dec_pos,
        )
    )[0]
    np.testing.assert_allclose(logits[:3], alone(a_in, a_out), atol=1e-5)
    np.testing.assert_allclose(logits[3:8], alone(b_in, b_out), atol=1e-5)
    # The prompt changes the function (so the comparison above includes it).
    other = jax.tree_util.tree_map(lambda x: x, params)
    other["encoder"]["prompt"] = params["encoder"]["prompt"] + 1.0
    moved = np.asarray(model.apply({"params": other}, jnp.asarray([a_in]), jnp.asarray([[0, *a_out[:-1]]])))[0]
    assert np.abs(moved - alone(a_in, a_out)).max() > 1e-2


@pytest.mark.slow
def test_prompt_starts_from_the_checkpoints_embeddings_and_is_all_that_trains(tmp_path):
    pretrained = _saved_checkpoint(tmp_path)
    abstract = nn.unbox(models.abstract_variables(PROMPT)["params"])
    started = checkpoints.read_initial_params(str(tmp_path / "pretrained"), PROMPT, _init(PROMPT), abstract)
    ids = peft.prompt_init_ids(MODEL.vocab_size, 5)
    assert len(set(ids.tolist())) == 5 and all(3 <= i < 2176 for i in ids)
    np.testing.assert_array_equal(started["encoder"]["prompt"], pretrained["token_embedder"]["embedding"][ids])
    np.testing.assert_array_equal(started["decoder"]["logits_dense"], pretrained["decoder"]["logits_dense"])

    history, state = _train(PROMPT, 1, trainable="prompt")
    assert _moved(history[0], history[1]) == {"encoder/prompt"}
    opt_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state))
    # Adafactor's second moment of the [5, 32] prompt (too small to factor: float32, 640 bytes) and
    # its step counters: the frozen parameters keep none.
    assert 4 * 5 * 32 <= opt_bytes <= 4 * 5 * 32 + 64

    config = _one_step_from_checkpoint(tmp_path, 0.3, trainable="prompt")
    trainer.train(config, PROMPT)
    tuned = checkpoints.restore_params(str(tmp_path / "run"), PROMPT, abstract)
    np.testing.assert_array_equal(tuned["token_embedder"]["embedding"], pretrained["token_embedder"]["embedding"])
    assert not np.array_equal(tuned["encoder"]["prompt"], started["encoder"]["prompt"])


def test_peft_settings_are_checked():
    with pytest.raises(ValueError, match="lora_rank must be 0"):
        T5Config(lora_rank=-1)
    with pytest.raises(ValueError, match="lora_targets must name distinct projections"):
        T5Config(lora_rank=4, lora_targets=("query", "qeury"))
    with pytest.raises(ValueError, match="prompt_length must be 0"):
        T5Config(prompt_length=-5)
    with pytest.raises(ValueError, match="'decoder_only' architecture has no encoder"):
        T5Config(prompt_length=5, architecture="decoder_only")
    from t5pod import optimizer

    no_lora = "TRAINABLE='lora' but the model has no LoRA updates; set t5pod.T5Config.lora_rank"
    with pytest.raises(ValueError, match=no_lora):
        optimizer.fine_tuning_optimizer(lambda: optimizer.adafactor(1e-3), _init(MODEL), trainable="lora")


def test_peft_gin_files():
    for gin_file, field, value, trainable in (
        ("finetuning/lora.gin", "lora_rank", 8, "lora"),
        ("finetuning/prompt_tuning.gin", "prompt_length", 100, "prompt"),
    ):
        ginconf.parse(
            ["tasks.gin", "runs/finetune.gin", "models/tiny.gin", gin_file],
            ["MODEL_DIR='/run'", "INITIAL_CHECKPOINT_PATH='/ckpt'"],
        )
        assert getattr(ginconf.model_config(), field) == value
        assert ginconf.train_config().optimizer.trainable == trainable
    assert ginconf.train_config().optimizer.learning_rate == 0.3  # Lester et al.'s rate for the prompt


@pytest.mark.slow
@pytest.mark.e2e
def test_prompt_tuning_command_then_infer_with_the_prompt(pretrained_demo_run, tmp_path):
    from helpers import run_cli

    run = tmp_path / "prompted"
    trained = run_cli(
        "train",
        "--gin_file=demo.gin",
        "--gin_file=finetuning/prompt_tuning.gin",
        "--gin.PROMPT_LENGTH=4",
        f"--gin.INITIAL_CHECKPOINT_PATH='{pretrained_demo_run}'",
        f"--gin.MODEL_DIR='{run}'",
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=4",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"inputs": "Return a list of the"}\n{"inputs": "a fine film"}\n')
    done = run_cli(
        "infer",
        f"--gin_file={run / 'config.gin'}",
        "--gin_file=runs/infer.gin",
        f"--gin.CHECKPOINT_PATH='{run}'",
        f"--input_file={rows}",
        f"--output_file={tmp_path / 'out.jsonl'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [p["inputs"] for p in predictions] == ["Return a list of the", "a fine film"]
    assert all(p["prediction_ids"] for p in predictions)


def test_a_checkpoint_with_a_prompt_is_refused_by_a_model_without_one():
    metadata = {"architecture": PROMPT.checkpoint_fields()}
    with pytest.raises(checkpoints.CheckpointError, match="prompt_length: checkpoint 5 vs config 0"):
        checkpoints.check_architecture(metadata, MODEL, "/run")
    lora = {"architecture": dataclasses.replace(LORA, lora_targets=("query", "mlp")).checkpoint_fields()}
    with pytest.raises(checkpoints.CheckpointError, match=r"lora_targets: checkpoint \['query', 'mlp'\] vs config"):
        checkpoints.check_architecture(lora, LORA, "/run")
    checkpoints.check_architecture({"architecture": MODEL.checkpoint_fields()}, MODEL, "/run")  # the same: accepted
