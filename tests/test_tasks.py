"""Downstream tasks end to end through seqio, mixtures, and the `data` command."""

import collections
import json

import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf

from helpers import run_cli
from t5pod import tasks
from t5pod import ginconf
from t5pod.data import demo_corpus, mixing


@pytest.fixture
def local_benchmarks(benchmark_rows):
    tasks.register_all(
        demo_corpus.vocabulary_path(),
        glue_dir=str(benchmark_rows / "glue"),
        superglue_dir=str(benchmark_rows / "superglue"),
    )
    yield benchmark_rows
    tasks.register_all()


@pytest.mark.parametrize(
    "task,split",
    [
        ("glue_cola_v002", "validation"),
        ("glue_stsb_v002", "validation"),
        ("glue_mrpc_v002", "train"),
        ("super_glue_cb_v102", "validation"),
        ("super_glue_multirc_v102", "validation"),
        ("super_glue_wsc_v102_simple_eval", "validation"),
        ("super_glue_copa_v102", "validation"),
    ],
)
def test_task_metrics_are_perfect_on_gold_predictions(local_benchmarks, task, split):
    provider = seqio.get_mixture_or_task(task)
    lengths = {"inputs": 512, "targets": 84}
    examples = list(provider.get_dataset(lengths, split=split, shuffle=False).as_numpy_iterator())
    assert len(examples) >= 20
    vocabulary = provider.output_features["targets"].vocabulary
    first = examples[0]
    decoded = " ".join(vocabulary.decode(first["inputs"].tolist()).split())  # may be cut at 512 tokens
    assert " ".join(first["inputs_pretokenized"].decode().split()).startswith(decoded) and len(decoded) > 20
    targets = [provider.postprocess_fn(x["targets_pretokenized"].decode(), example=x, is_target=True) for x in examples]
    # WSC asks whether each example's candidate is the referent: where it is not (label 0), a gold
    # answer names someone else.
    wsc = task == "super_glue_wsc_v102_simple_eval"
    gold = [x["targets_pretokenized"].decode() if not wsc or int(x["label"]) else "someone else" for x in examples]
    predictions = [provider.postprocess_fn(g, example=x, is_target=False) for g, x in zip(gold, examples)]
    for metric_fn in provider.metric_fns:
        for name, value in metric_fn(targets, predictions).items():
            assert value == pytest.approx(100.0), (name, value)
    # A wrong prediction for every example is not perfect: the metric can fail.
    # (For WSC: the candidate exactly where it is not the referent.)
    wrong_answers = [
        x["targets_pretokenized"].decode() if wsc and not int(x["label"]) else "no such label" for x in examples
    ]
    wrong = [provider.postprocess_fn(w, example=x, is_target=False) for w, x in zip(wrong_answers, examples)]
    assert any(not v >= 50 for fn in provider.metric_fns for v in fn(targets, wrong).values())  # NaN fails too


def test_files_and_formats_agree_for_sst2(local_benchmarks):
    provider = seqio.get_mixture_or_task("glue_sst2_v002")
    first = next(
        provider.get_dataset({"inputs": 512, "targets": 84}, split="validation", shuffle=False).as_numpy_iterator()
    )
    assert first["inputs_pretokenized"].decode() == "sst2 sentence: it 's a charming and often affecting journey . "
    assert first["targets_pretokenized"].decode() == "positive"


def test_tfds_missing_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    tasks.register_all(demo_corpus.vocabulary_path(), tfds_data_dir=str(tmp_path))
    provider = seqio.get_mixture_or_task("glue_rte_v002")
    with pytest.raises(
        FileNotFoundError, match=r"TFDS dataset glue/rte:1.0.0 \(validation\) is not available.*GLUE_DIR"
    ):
        provider.get_dataset({"inputs": 64, "targets": 8}, split="validation", shuffle=False)
    tasks.register_all()


def test_proportional_mixtures_have_the_reference_weights():
    tasks.register_all()
    glue = seqio.get_mixture_or_task("glue_v002_proportional")
    assert glue.get_rate(seqio.get_mixture_or_task("glue_mnli_v002")) == 392702
    assert glue.get_rate(seqio.get_mixture_or_task("glue_ax_v002")) == 0
    assert "glue_wnli_v002" not in [t.name for t in glue.tasks]
    super_glue = seqio.get_mixture_or_task("super_glue_v102_proportional")
    assert super_glue.get_rate(seqio.get_mixture_or_task("super_glue_record_v102")) == 138854


def test_mixing_formula():
    rates = mixing.examples_proportional_rates({"a": 100, "b": 10_000, "c": 0}, limit=1000, temperature=2.0)
    assert rates == {"a": pytest.approx(10.0), "b": pytest.approx(1000**0.5), "c": 0.0}
    assert mixing.equal_rates({"a": 5, "b": 7, "c": 0}) == {"a": 1.0, "b": 1.0, "c": 0.0}
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="MIXING_TEMPERATURE must be positive"):
            mixing.examples_proportional_rates({"a": 1}, temperature=bad)
        with pytest.raises(ValueError, match="MIXING_RATE_LIMIT must be positive"):
            mixing.examples_proportional_rates({"a": 1}, limit=bad)
    # Extreme but meaningful: T near 0 gives the largest task everything (100 ** 1000 overflows a float,
    # so the rates are divided by one factor); T = inf is equal mixing; a tiny limit caps every task alike.
    cold = mixing.probabilities(mixing.examples_proportional_rates({"a": 100, "b": 10_000}, temperature=1e-3))
    assert cold == {"a": 0.0, "b": 1.0}
    assert mixing.examples_proportional_rates({"a": 100, "b": 10_000}, temperature=float("inf")) == {"a": 1.0, "b": 1.0}
    tiny = mixing.examples_proportional_rates({"a": 100, "b": 10_000}, limit=1e-300)
    assert tiny["a"] == tiny["b"] == pytest.approx(1e-300)


def test_rate_limit_and_temperature_from_gin_flags():
    ginconf.parse(["tasks.gin"], ["MIXING_RATE_LIMIT = 65536", "MIXING_TEMPERATURE = 2.0"])
    ginconf.register_tasks()
    glue = seqio.get_mixture_or_task("glue_v002_proportional")
    assert glue.get_rate(seqio.get_mixture_or_task("glue_mnli_v002")) == pytest.approx(65536**0.5)
    assert glue.get_rate(seqio.get_mixture_or_task("glue_rte_v002")) == pytest.approx(2490**0.5)
    tasks.register_all()


def test_mixture_sampling_frequencies_follow_the_formula():
    sizes = {"mix_test_a": 300, "mix_test_b": 5_000, "mix_test_c": 90_000}
    vocabulary = seqio.PassThroughVocabulary(size=10)
    for i, name in enumerate(sizes):
        source = seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None, i=i: tf.data.Dataset.from_tensors({"targets": [i + 2]}).repeat(),
            splits=("train",),
        )
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name, source=source, preprocessors=[], output_features={"targets": seqio.Feature(vocabulary, add_eos=False)}
        )
    rates = mixing.examples_proportional_rates(sizes, limit=20_000, temperature=2.0)
    seqio.MixtureRegistry.remove("mix_test")
    seqio.MixtureRegistry.add("mix_test", list(rates.items()))
    draws = seqio.get_mixture_or_task("mix_test").get_dataset({"targets": 1}, split="train", shuffle=False, seed=7)
    counts = collections.Counter(int(x["targets"][0]) for x in draws.take(20_000).as_numpy_iterator())
    expected = mixing.probabilities(rates)
    for i, name in enumerate(sizes):
        assert counts[i + 2] / 20_000 == pytest.approx(expected[name], abs=0.01)


@pytest.mark.slow
@pytest.mark.e2e
def test_data_command_end_to_end():
    lengths = "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"
    done = run_cli("data", "--task=demo_span_corruption", "--num_examples=2", lengths)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 and len(rows[0]["inputs"]["ids"]) == 64 and "<extra_id_0>" in rows[0]["inputs"]["text"]

    done = run_cli("data", "--task=demo_span_corruption", "--num_examples=1", "--features=model", lengths)
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(row["encoder_input_tokens"]["ids"]) == 64 and "decoder_segment_ids" in row

    done = run_cli("data", "--task=demo_span_corruption", "--stats=100")
    stats = json.loads(done.stdout.splitlines()[-1])
    assert stats["noise"]["density"] == pytest.approx(0.15, abs=0.005)
    assert stats["noise"]["mean_span_length"] == pytest.approx(3.0, abs=0.1)

    # Bad input to `data` is in tests/test_bad_inputs.py.


@pytest.mark.slow
@pytest.mark.e2e
def test_train_vocab_command(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(open(demo_corpus.corpus_path(), encoding="utf-8").read()[:300_000])
    done = run_cli(
        "train-vocab", f"--input={corpus}", f"--output={tmp_path / 'v' / 'spiece.model'}", "--vocab_size=500"
    )
    assert done.returncode == 0, done.stderr
    assert "600 ids" in done.stdout and "<extra_id_0> = 599" in done.stdout
    # Sampling fewer sentences than the corpus holds gives the same vocabulary in every process.
    pieces = []
    for name in ("a", "b"):
        output = tmp_path / name / "spiece.model"
        sampled = run_cli(
            "train-vocab", f"--input={corpus}", f"--output={output}", "--vocab_size=300", "--max_sentences=500"
        )
        assert sampled.returncode == 0, sampled.stderr
        model = spm.SentencePieceProcessor(model_file=str(output))
        pieces.append([model.id_to_piece(i) for i in range(model.get_piece_size())])
    assert sum(1 for line in corpus.read_text().splitlines() if line.strip()) > 2 * 500
    assert len(pieces[0]) == 300 and pieces[0] == pieces[1]
    done = run_cli("train-vocab", f"--input={tmp_path / 'missing*.txt'}", f"--output={tmp_path / 'x.model'}")
    assert done.returncode == 2 and "matches no file" in done.stderr


def test_multitask_pretraining_mixture_sizes():
    ginconf.parse(["tasks.gin"], ["MULTITASK_PRETRAINING_SIZE = 'base'"])
    ginconf.register_tasks()
    mixture = seqio.get_mixture_or_task("c4_span_corruption_glue_super_glue_proportional")
    assert mixture.get_rate(seqio.get_mixture_or_task("c4_v220_span_corruption")) == 2_620_000
    assert mixture.get_rate(seqio.get_mixture_or_task("glue_cola_v002")) == 8551
    with pytest.raises(ValueError, match="MULTITASK_PRETRAINING_SIZE 'huge'"):
        tasks.register_all(pretraining_size="huge")
    tasks.register_all()


def _rates(gin_file, bindings=()):
    ginconf.parse(["tasks.gin", "runs/pretrain.gin", "models/tiny.gin", gin_file], ["MODEL_DIR = '/unused'", *bindings])
    ginconf.register_tasks()
    name = ginconf.train_config().data.mixture_or_task_name
    mixture = seqio.get_mixture_or_task(name)
    return name, {task.name: mixture.get_rate(task) for task in mixture.tasks}


@pytest.mark.parametrize("k", [16, 17, 18, 19, 20, 21])
def test_mixing_gin_files_examples_proportional(k):
    name, rates = _rates(f"mixing/proportional_k{k}.gin")
    assert name == "all_proportional"
    assert rates["c4_v220_span_corruption"] == 2**k  # C4 is larger than every K
    assert rates["glue_rte_v002"] == 2490 and rates["glue_mnli_v002"] == min(392702, 2**k)
    assert len([r for r in rates.values() if r > 0]) == 1 + 8 + 9  # C4, 8 GLUE and 9 SuperGLUE training tasks
    tasks.register_all()


@pytest.mark.parametrize("t", [2, 4, 8])
def test_mixing_gin_files_temperature(t):
    _, rates = _rates(f"mixing/temperature_t{t}.gin")
    assert rates["c4_v220_span_corruption"] == pytest.approx((2**21) ** (1 / t))
    assert rates["super_glue_cb_v102"] == pytest.approx(250 ** (1 / t))
    tasks.register_all()


def test_mixing_gin_files_equal_leave_one_out_and_supervised():
    _, rates = _rates("mixing/equal.gin")
    assert set(r for r in rates.values() if r > 0) == {1.0} and rates["super_glue_axb_v102"] == 0
    name, rates = _rates(
        "mixing/leave_one_out.gin", ["MIXTURE_OR_TASK_NAME = 'all_proportional_without_glue_rte_v002'"]
    )
    assert "glue_rte_v002" not in rates and rates["super_glue_rte_v102"] == 2490
    assert rates["c4_v220_span_corruption"] == 2**19
    _, rates = _rates("mixing/supervised_pretraining.gin")
    assert "c4_v220_span_corruption" not in rates and rates["glue_qqp_v002"] == 363849  # below K = 2^19
    _, rates = _rates("mixing/multitask_pretraining.gin")
    assert rates["c4_v220_span_corruption"] == 2**19 and rates["glue_cola_v002"] == 8551
    tasks.register_all()


def test_data_stats_report_packing_and_speed():
    tasks.register_all()
    from t5pod.data import inspection

    stats = inspection.statistics(
        "demo_span_corruption", {"inputs": 64, "targets": 16}, "train", 40, model_features=True
    )
    assert stats["examples"] == 40 and 0.5 < stats["packing_efficiency"] <= 1
    # Non-padding tokens per packed row = packing efficiency x the row's 64 + 16 token slots.
    assert stats["tokens_per_s"] / stats["examples_per_s"] == pytest.approx(stats["packing_efficiency"] * 80, rel=0.01)
