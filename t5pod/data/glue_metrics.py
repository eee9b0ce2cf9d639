"""GLUE/SuperGLUE metrics and postprocessors for text-to-text T5, as in the reference T5.

Metrics follow seqio: ``fn(targets, predictions) -> {name: value}``, values in percent.
Postprocessors follow seqio: ``fn(output, example=None, is_target=False)``.
Class ids come from ``string_label_to_class_id``; -1 marks an output that is no known label
and is always scored as wrong.
"""

import collections
import re
import string
from typing import Any, Callable, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

INVALID = -1


# ----------------------------------------------------------------------------- helpers


def as_text(x: Any) -> str:
    """Decode bytes (seqio sometimes passes them) to str; anything else goes through str()."""
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x).decode("utf-8")
    return x if isinstance(x, str) else str(x)


def _hashable(x: Any) -> Any:
    """Make a group id usable as a dict key (bytes -> str, numpy -> python)."""
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x).decode("utf-8")
    if isinstance(x, np.ndarray):
        return tuple(_hashable(v) for v in x.tolist()) if x.ndim else _hashable(x.item())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return tuple(_hashable(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
    return x


def _binary_f1(targets: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of the positive class 1 (invalid predictions are simply never 1)."""
    return float(sklearn.metrics.f1_score(targets, predictions, labels=[1], average="macro", zero_division=0.0))


def _wrong_if_invalid(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Binary labels: replace invalid (-1) predictions by the wrong class, 1 - target."""
    predictions = predictions.copy()
    invalid = predictions == INVALID
    predictions[invalid] = 1 - targets[invalid]
    return predictions


# ----------------------------------------------------------------------------- classification
# The reference T5 scores classes with scikit-learn and correlations with scipy; so does t5pod.


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Percentage of exact matches."""
    return {"accuracy": 100 * float(sklearn.metrics.accuracy_score(np.asarray(targets), np.asarray(predictions)))}


def f1_and_accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """MRPC/QQP: binary F1 of class 1 and accuracy; -1 predictions count as the wrong class."""
    t = np.asarray(targets, dtype=np.int64)
    p = _wrong_if_invalid(t, np.asarray(predictions, dtype=np.int64))
    return {"f1": 100 * _binary_f1(t, p), "accuracy": 100 * float(sklearn.metrics.accuracy_score(t, p))}


def matthews_corrcoef(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """CoLA: Matthews correlation (multiclass form, so -1 is its own wrong class); 0 if degenerate."""
    t, p = np.asarray(targets), np.asarray(predictions)
    return {"matthews_corrcoef": 100 * float(sklearn.metrics.matthews_corrcoef(t, p))}


def pearson_and_spearman(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """STS-B: Pearson and Spearman correlation of float scores."""
    t, p = np.asarray(targets, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    return {
        "pearson_corrcoef": 100 * float(scipy.stats.pearsonr(t, p)[0]),
        "spearman_corrcoef": 100 * float(scipy.stats.spearmanr(t, p)[0]),
    }


def mean_multiclass_f1(num_classes: int) -> Callable[[Sequence, Sequence], dict[str, float]]:
    """Metric fn: macro F1 over classes 0..num_classes-1 (-1 is wrong for every class)."""

    def metric(targets: Sequence, predictions: Sequence) -> dict[str, float]:
        f1 = sklearn.metrics.fbeta_score(
            np.asarray(targets),
            np.asarray(predictions),
            beta=1,
            labels=np.arange(num_classes),
            average="macro",
            zero_division=0.0,
        )
        return {f"mean_{num_classes}class_f1": 100 * float(f1)}

    metric.__name__ = f"mean_{num_classes}class_f1"
    return metric


def cb_metrics(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """CB: accuracy and mean 3-class F1."""
    return {**accuracy(targets, predictions), **mean_multiclass_f1(3)(targets, predictions)}


# ----------------------------------------------------------------------------- SQuAD-style QA


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    s = as_text(s).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _exact_match(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def _token_f1(gold: str, pred: str) -> float:
    """Token-overlap F1 of normalised strings (0 when nothing overlaps, as in SQuAD v1)."""
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact match and token F1, each the max over an example's gold answers, averaged."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    em = [max(_exact_match(g, p) for g in golds) for golds, p in zip(targets, predictions)]
    f1 = [max(_token_f1(g, p) for g in golds) for golds, p in zip(targets, predictions)]
    return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


# ----------------------------------------------------------------------------- MultiRC, ReCoRD


def multirc_f1_and_exact_match(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """MultiRC: F1 over all answers (class 1) and % of questions with every answer right."""
    t = np.asarray([x["value"] for x in targets], dtype=np.int64)
    p = _wrong_if_invalid(t, np.asarray([x["value"] for x in predictions], dtype=np.int64))
    groups: dict[Any, bool] = {}
    for target, tv, pv in zip(targets, t, p):
        g = _hashable(target["group"])
        groups[g] = groups.get(g, True) and bool(tv == pv)
    return {"f1a": 100 * _binary_f1(t, p), "exact_match": 100 * float(np.mean(list(groups.values())))}


def record_em_f1(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    """ReCoRD: first prediction per (passage, query) group vs its deduplicated gold answers."""
    gold: dict[Any, list[str]] = {}
    for t in targets:
        answers = gold.setdefault(_hashable(t["group"]), [])
        answers.extend(a for a in map(as_text, t["answers"]) if a not in answers)
    pred: dict[Any, str] = {}
    for p in predictions:
        pred.setdefault(_hashable(p["group"]), as_text(p["value"]))
    missing = set(gold) - set(pred)
    if missing:
        raise ValueError(f"no prediction for {len(missing)} ReCoRD groups")
    groups = list(gold)
    return squad_em_f1([gold[g] for g in groups], [pred[g] for g in groups])


# ----------------------------------------------------------------------------- postprocessors


def string_label_to_class_id(
    output: Any, example: dict | None = None, is_target: bool = False, label_classes: Sequence[str] = ()
) -> int:
    """Index of ``output`` in ``label_classes``, or -1; bind label_classes with functools.partial."""
    del example, is_target
    output = as_text(output)
    return list(label_classes).index(output) if output in label_classes else INVALID


def string_to_float(output: Any, example: dict | None = None, is_target: bool = False, default: float = -1.0) -> float:
    """Parse a float, or ``default`` when the output is not a number."""
    del example, is_target
    try:
        return float(as_text(output))
    except ValueError:
        return default


def multirc_postprocess(output: Any, example: dict | None = None, is_target: bool = False) -> dict:
    """MultiRC: {"group": question id, "value": class id of output in ("False", "True")}."""
    value = string_label_to_class_id(output, label_classes=("False", "True"))
    return {"group": _hashable(example["group"]), "value": value}


def record_postprocess(output: Any, example: dict | None = None, is_target: bool = False) -> dict:
    """ReCoRD: targets carry all gold answers, predictions the decoded string."""
    group = _hashable(example["group"])
    if is_target:
        return {"group": group, "answers": [as_text(a) for a in example["answers"]]}
    return {"group": group, "value": as_text(output)}


# The reference's list: words WSC answers may differ by ("the trophy" is "trophy").
_WSC_DETERMINERS = frozenset(
    {
        "a",
        "an",
        "few",
        "her",
        "his",
        "each",
        "every",
        "many",
        "much",
        "my",
        "our",
        "some",
        "that",
        "the",
        "their",
        "these",
        "this",
        "those",
        "which",
        "whose",
        "your",
    }
)


def _wsc_clean(s: Any) -> str:
    """Lowercase, split on single spaces, drop determiners (punctuation stays, as in the reference)."""
    return " ".join(w for w in as_text(s).strip().lower().split(" ") if w not in _WSC_DETERMINERS)


def wsc_simple_postprocess(output: Any, example: dict | None = None, is_target: bool = False) -> int:
    """WSC: whether the prediction names the example's candidate referent (1) or not (0); the
    target is the example's label, so accuracy asks "did the model pick this candidate exactly
    when it is the right one".

    Names match when one's word set holds the other's ("fuzzy bunny" and "bunny"), unless only
    one has an apostrophe ("Bob" is not "Bob's hat"). An empty prediction is -1: it matches no
    label, where 0 would count as correctly rejecting a wrong candidate.
    """
    if is_target:
        return int(example["label"])
    prediction, referent = _wsc_clean(output), _wsc_clean(example["targets_pretokenized"])
    if not prediction:
        return -1
    if ("'" in prediction) != ("'" in referent):
        return 0
    prediction_words, referent_words = set(prediction.split(" ")), set(referent.split(" "))
    return int(prediction_words <= referent_words or referent_words <= prediction_words)
