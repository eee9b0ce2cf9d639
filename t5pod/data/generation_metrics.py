"""Metrics of the generation tasks, computed by the libraries the reference T5 used.

Metrics follow seqio: ``fn(targets, predictions) -> {name: value}``, values in percent.

- ROUGE-1, ROUGE-2 and ROUGE-Lsum F-measures by Google's rouge-score, no stemming. Before scoring,
  " . " becomes " .\\n" in both texts, so that ROUGE-Lsum sees one sentence per line (CNN/DM's
  references are tokenized that way). The reference reports the median of a bootstrap over
  examples; this reports the mean over examples, which that median estimates, exactly.
- Corpus BLEU by sacrebleu with exponential smoothing, case kept, and sacrebleu's `intl`
  tokenization, as t5.evaluation calls it (`tokenize="13a"` gives WMT's usual tokenization).
- SQuAD exact match and F1 with the maximum over the gold answers (t5pod.data.glue_metrics).
"""

from typing import Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from t5pod.data import glue_metrics

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")


def _sentence_per_line(summary: str) -> str:
    return summary.replace(" . ", " .\n")


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/Lsum F-measure over examples, in percent."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for target, prediction in zip(targets, predictions, strict=True):
        scores = scorer.score(
            target=_sentence_per_line(glue_metrics.as_text(target)),
            prediction=_sentence_per_line(glue_metrics.as_text(prediction)),
        )
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    count = max(1, len(targets))
    return {kind: 100 * total / count for kind, total in totals.items()}


def bleu(targets: Sequence[str], predictions: Sequence[str], tokenize: str = "intl") -> dict[str, float]:
    """Corpus BLEU (one reference per example), in BLEU points."""
    targets = [glue_metrics.as_text(t) for t in targets]
    predictions = [glue_metrics.as_text(p) for p in predictions]
    result = sacrebleu.corpus_bleu(
        predictions,
        [targets],
        smooth_method="exp",
        smooth_value=0.0,
        force=False,
        lowercase=False,
        tokenize=tokenize,
        use_effective_order=False,
    )
    return {"bleu": float(result.score)}


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD: exact match and token F1 against the best of each example's gold answers."""
    return glue_metrics.squad_em_f1(targets, predictions)


def all_answers(output, example: dict | None = None, is_target: bool = False):
    """Postprocessor of squad_v010_allanswers: the target becomes every gold answer."""
    if not is_target:
        return glue_metrics.as_text(output)
    answers = example["answers"]
    answers = answers.tolist() if isinstance(answers, np.ndarray) else list(answers)
    return [text for text in map(glue_metrics.as_text, answers) if text]
