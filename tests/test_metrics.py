"""GLUE/SuperGLUE metrics and postprocessors, against hand-computed values."""

import functools

import numpy as np
import pytest
import scipy.stats

from t5pod.data import glue_metrics


def test_accuracy():
    assert glue_metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
    assert glue_metrics.accuracy(["a", "b"], ["a", "b"]) == {"accuracy": 100.0}


def test_f1_and_accuracy_plain():
    # TP=2 (0,1), FP=1 (3), FN=1 (2): F1 = 4 / (4 + 1 + 1).
    out = glue_metrics.f1_and_accuracy([1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert out["f1"] == pytest.approx(100 * 4 / 6)
    assert out["accuracy"] == pytest.approx(60.0)


def test_f1_invalid_prediction_is_false_negative_against_positive():
    # Had the -1 been a 1 it would be a TP (F1 = 4/5); as -1 it is a FN: TP=1, FP=1, FN=1.
    out = glue_metrics.f1_and_accuracy([1, 1, 0, 0], [1, -1, 0, 1])
    assert out["f1"] == pytest.approx(50.0)
    assert out["accuracy"] == pytest.approx(50.0)
    assert glue_metrics.f1_and_accuracy([1, 1, 0, 0], [1, 1, 0, 1])["f1"] == pytest.approx(80.0)


def test_f1_invalid_prediction_against_negative_is_wrong():
    # Reference T5 flips an invalid prediction to the wrong class: against target 0 it is a FP.
    out = glue_metrics.f1_and_accuracy([1, 0], [1, -1])
    assert out["f1"] == pytest.approx(100 * 2 / 3)
    assert out["accuracy"] == pytest.approx(50.0)


def test_matthews_hand_case():
    # TP=2, TN=2, FP=1, FN=1: (2*2 - 1*1) / sqrt(3*3*3*3) = 3/9.
    out = glue_metrics.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1])
    assert out["matthews_corrcoef"] == pytest.approx(100 / 3)
    assert glue_metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0])["matthews_corrcoef"] == pytest.approx(-100.0)
    assert glue_metrics.matthews_corrcoef([0, 1, 1], [0, 1, 1])["matthews_corrcoef"] == pytest.approx(100.0)


def test_matthews_degenerate_is_zero():
    assert glue_metrics.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == {"matthews_corrcoef": 0.0}
    assert glue_metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == {"matthews_corrcoef": 0.0}


def test_matthews_invalid_is_its_own_class():
    # Multiclass form (as sklearn): labels {-1,0,1}; t_sum=[0,2,2], p_sum=[1,2,1], n=4, trace=3.
    # cov_tp = 3*4 - 6 = 6, cov_pp = 16 - 6 = 10, cov_tt = 16 - 8 = 8.
    out = glue_metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, -1, 0])
    assert out["matthews_corrcoef"] == pytest.approx(100 * 6 / np.sqrt(80))


def test_pearson_and_spearman_hand():
    # Values are their own ranks: d = [0,1,1,0], rho = 1 - 6*2/(4*15) = 0.8; Pearson equal.
    out = glue_metrics.pearson_and_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert out["pearson_corrcoef"] == pytest.approx(80.0)
    assert out["spearman_corrcoef"] == pytest.approx(80.0)
    out = glue_metrics.pearson_and_spearman([1.0, 2.0, 3.0], [30.0, 2.0, 1.0])
    assert out["spearman_corrcoef"] == pytest.approx(-100.0)


def test_pearson_and_spearman_match_scipy():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 5, size=50)
    p = t + rng.normal(0, 1, size=50)
    out = glue_metrics.pearson_and_spearman(list(t), list(p))
    assert out["pearson_corrcoef"] == pytest.approx(100 * scipy.stats.pearsonr(t, p)[0])
    assert out["spearman_corrcoef"] == pytest.approx(100 * scipy.stats.spearmanr(t, p)[0])
    assert out["pearson_corrcoef"] != pytest.approx(out["spearman_corrcoef"])


def test_mean_multiclass_f1_and_cb():
    t = [0, 1, 2, 0, 1, 2]
    p = [0, 1, 1, 0, -1, 2]
    # class 0: TP2 FP0 FN0 -> 1; class 1: TP1 FP1 FN1 -> 1/2; class 2: TP1 FP0 FN1 -> 2/3.
    expected = 100 * (1 + 1 / 2 + 2 / 3) / 3
    out = glue_metrics.mean_multiclass_f1(3)(t, p)
    assert list(out) == ["mean_3class_f1"]
    assert out["mean_3class_f1"] == pytest.approx(expected)
    cb = glue_metrics.cb_metrics(t, p)
    assert cb["accuracy"] == pytest.approx(100 * 4 / 6)
    assert cb["mean_3class_f1"] == pytest.approx(expected)
    # A class never seen nor predicted scores 0 and still counts in the mean.
    assert glue_metrics.mean_multiclass_f1(2)([0, 0], [0, 0])["mean_2class_f1"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The  Cat!", "cat"),
        ("an apple, a pear", "apple pear"),
        ("Theatre", "theatre"),
        ("A-team", "ateam"),
        ("  the  ", ""),
        (b"The Dog.", "dog"),
    ],
)
def test_normalize_answer(raw, norm):
    assert glue_metrics.normalize_answer(raw) == norm


def test_squad_em_f1_max_over_gold():
    targets = [["the cat", "a dog sat"], ["Paris"]]
    predictions = ["dog", "paris."]
    # Example 1: EM 0; F1 max(0, P=1 R=1/2 -> 2/3). Example 2: EM 1, F1 1.
    out = glue_metrics.squad_em_f1(targets, predictions)
    assert out["em"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_squad_token_f1_counts_repeats():
    out = glue_metrics.squad_em_f1([["x b b"]], ["b c"])
    # gold tokens [x, b, b], pred [b, c]: same=1, P=1/2, R=1/3, F1=2/5.
    assert out == {"em": 0.0, "f1": pytest.approx(40.0)}


def test_multirc_two_groups():
    targets = [{"group": 0, "value": v} for v in (1, 0, 1)] + [{"group": 1, "value": v} for v in (1, 0)]
    predictions = [{"group": 0, "value": v} for v in (1, 0, 1)] + [{"group": 1, "value": v} for v in (0, 0)]
    # Over all answers: TP=2, FP=0, FN=1 -> F1 = 4/5. Only group 0 is all correct.
    out = glue_metrics.multirc_f1_and_exact_match(targets, predictions)
    assert out["f1a"] == pytest.approx(80.0)
    assert out["exact_match"] == pytest.approx(50.0)


def test_multirc_invalid_is_wrong():
    targets = [{"group": "q", "value": 0}, {"group": "q", "value": 1}]
    predictions = [{"group": "q", "value": -1}, {"group": "q", "value": 1}]
    # -1 against 0 is a FP: TP=1, FP=1 -> F1 = 2/3; the only group is not all correct.
    out = glue_metrics.multirc_f1_and_exact_match(targets, predictions)
    assert out["f1a"] == pytest.approx(100 * 2 / 3)
    assert out["exact_match"] == 0.0


def test_record_dedup_first_prediction_counts():
    g1, g2 = ("p1", "q1"), ("p1", "q2")
    targets = [
        {"group": g1, "answers": ["Obama", "Barack Obama", "Obama"]},
        {"group": g1, "answers": ["Obama", "Barack Obama"]},
        {"group": g2, "answers": ["Paris"]},
    ]

    def preds(*pairs):
        return [{"group": g, "value": v} for g, v in pairs]

    first_right = preds((g1, "Barack Obama"), (g1, "Trump"), (g2, "London"))
    assert glue_metrics.record_em_f1(targets, first_right) == {"em": 50.0, "f1": 50.0}
    first_wrong = preds((g1, "Trump"), (g1, "Obama"), (g2, "Paris"))
    assert glue_metrics.record_em_f1(targets, first_wrong) == {"em": 50.0, "f1": 50.0}
    partial = [{"group": g1, "value": "Barack"}, {"group": g2, "value": "paris"}]
    # g1: max(F1 vs "Obama" = 0, vs "Barack Obama" = 2/3); g2 exact.
    out = glue_metrics.record_em_f1(targets, partial)
    assert out["em"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_record_postprocess_roundtrip():
    example = {"group": np.array([b"p1", b"q1"]), "answers": [b"Obama", b"Barack Obama"]}
    target = glue_metrics.record_postprocess(b"Obama", example, is_target=True)
    pred = glue_metrics.record_postprocess(b"Barack Obama", example, is_target=False)
    assert target == {"group": ("p1", "q1"), "answers": ["Obama", "Barack Obama"]}
    assert pred == {"group": ("p1", "q1"), "value": "Barack Obama"}
    assert glue_metrics.record_em_f1([target], [pred]) == {"em": 100.0, "f1": 100.0}


def test_string_label_to_class_id():
    post = functools.partial(glue_metrics.string_label_to_class_id, label_classes=("not_entailment", "entailment"))
    assert post("entailment") == 1
    assert post(b"not_entailment", is_target=True) == 0
    assert post("maybe") == -1
    assert post("Entailment") == -1


def test_string_to_float():
    assert glue_metrics.string_to_float("3.8") == 3.8
    assert glue_metrics.string_to_float(b"1") == 1.0
    assert glue_metrics.string_to_float("three") == -1.0
    assert glue_metrics.string_to_float("three", default=0.0) == 0.0


def test_multirc_postprocess():
    example = {"group": np.int64(3)}
    assert glue_metrics.multirc_postprocess("True", example) == {"group": 3, "value": 1}
    assert glue_metrics.multirc_postprocess(b"False", example, is_target=True) == {"group": 3, "value": 0}
    assert glue_metrics.multirc_postprocess("maybe", example) == {"group": 3, "value": -1}


@pytest.mark.parametrize(
    "prediction, referent, expected",
    [
        ("The councilmen", "the city councilmen", 1),  # prediction inside referent
        ("the city councilmen of Springfield", "the city councilmen", 1),  # referent inside prediction
        ("his dog", "The dog", 1),  # determiners ("his", "the") dropped anywhere
        (b"Fuzzy Bunny", "bunny", 1),  # bytes, case
        ("Joe", "Joe's hat", 0),  # an apostrophe on one side only: a different thing
        ("Joe's", "Joe's hat", 1),
        ("joe.", "Joe", 0),  # punctuation stays part of the word
        ("the demonstrators", "the city councilmen", 0),
        ("city demonstrators", "the city councilmen", 0),  # overlap but neither is a subset
        ("", "Joe", -1),  # empty: matches no label
        ("the", "Joe", -1),  # nothing left after cleaning
    ],
)
def test_wsc_simple_postprocess(prediction, referent, expected):
    example = {"targets_pretokenized": referent, "label": 1}
    assert glue_metrics.wsc_simple_postprocess(prediction, example) == expected


def test_wsc_target_is_the_label_and_accuracy():
    # Each example asks about one candidate; label 1 when it is the pronoun's referent.
    examples = [
        {"targets_pretokenized": "Mark", "label": 1},
        {"targets_pretokenized": "the trophy", "label": 1},
        {"targets_pretokenized": "the suitcase", "label": 0},
        {"targets_pretokenized": "Pete", "label": 0},
        {"targets_pretokenized": "the pony", "label": 0},
    ]
    # Right: names Mark; wrong: names the suitcase for the trophy; wrong: names the suitcase when
    # it is not the referent; right: names someone else than Pete; wrong: an empty answer.
    predictions = ["mark", "The suitcase", "suitcase", "Mark", ""]
    t = [glue_metrics.wsc_simple_postprocess(e["targets_pretokenized"], e, is_target=True) for e in examples]
    p = [glue_metrics.wsc_simple_postprocess(o, e) for o, e in zip(predictions, examples)]
    assert t == [1, 1, 0, 0, 0]
    assert p == [1, 0, 1, 0, -1]
    assert glue_metrics.accuracy(t, p)["accuracy"] == pytest.approx(100 * 2 / 5)
