"""GLUE and SuperGLUE: one table per benchmark, and the seqio task names built from them.

Each table row holds every fact about one benchmark config: where its files are and how their
columns map to TFDS features (read by glue_files), its label classes in TFDS's order, how its
text-to-text inputs are written (used by glue_formats), and the metrics of the reference T5
(glue_metrics). Splits are TFDS's names; a config's files map each split to its file.
"""

import dataclasses
import struct
from typing import Callable

from t5pod.data import glue_metrics

GLUE_TFDS_VERSION = "1.0.0"  # what t5's tasks.py registers; same data as 2.0.0 except QQP's URL
SUPER_GLUE_TFDS_VERSION = "1.0.2"
DPR_TFDS_NAME = "definite_pronoun_resolution:1.1.0"
# Environment variables that name the local benchmark folders when the gin macros are unset.
GLUE_ENV = "GLUE_DIR"
SUPERGLUE_ENV = "SUPERGLUE_DIR"


@dataclasses.dataclass(frozen=True)
class GlueConfig:
    """One GLUE config: TSV files, their columns, labels, text-to-text format and metrics."""

    folder: str
    files: dict[str, str]  # TFDS split -> file name inside folder
    columns: dict[str, str]  # TFDS feature -> TSV column
    label_column: str | None
    label_classes: tuple[str, ...] | None  # None: a float label (STS-B)
    input_name: str  # the benchmark name that starts the inputs ("mnli hypothesis: ...")
    input_keys: tuple[str, ...]  # features written as "key: value" pairs, in this order
    metrics: tuple[Callable, ...] = (glue_metrics.accuracy,)


@dataclasses.dataclass(frozen=True)
class SuperGlueConfig:
    """One SuperGLUE config: JSONL files, their features, labels, format and metrics."""

    folder: str
    files: dict[str, str]
    features: tuple[str, ...]
    label_classes: tuple[str, ...] | None  # None: ReCoRD (answers, no label)
    input_name: str | None  # None: formatted by its own function (ReCoRD, WSC)
    input_keys: tuple[str, ...] = ()
    metrics: tuple[Callable, ...] = (glue_metrics.accuracy,)


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")
_TSV = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_JSONL = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
_S12 = {"sentence1": "sentence1", "sentence2": "sentence2"}
_MNLI = {"premise": "sentence1", "hypothesis": "sentence2"}
_MNLI_KEYS = ("hypothesis", "premise")
_MCC = (glue_metrics.matthews_corrcoef,)
_F1_ACC = (glue_metrics.f1_and_accuracy,)


def _mnli_files(kind: str) -> dict[str, str]:
    return {"validation": f"dev_{kind}.tsv", "test": f"test_{kind}.tsv"}


GLUE: dict[str, GlueConfig] = {
    "cola": GlueConfig(
        "CoLA",
        _TSV,
        {"sentence": "sentence"},
        "is_acceptable",
        ("unacceptable", "acceptable"),
        "cola",
        ("sentence",),
        _MCC,
    ),
    "sst2": GlueConfig(
        "SST-2", _TSV, {"sentence": "sentence"}, "label", ("negative", "positive"), "sst2", ("sentence",)
    ),
    "mrpc": GlueConfig(
        "MRPC",
        _TSV,
        {"sentence1": "#1 String", "sentence2": "#2 String"},
        "Quality",
        ("not_equivalent", "equivalent"),
        "mrpc",
        ("sentence1", "sentence2"),
        _F1_ACC,
    ),
    "qqp": GlueConfig(
        "QQP",
        _TSV,
        {"question1": "question1", "question2": "question2"},
        "is_duplicate",
        ("not_duplicate", "duplicate"),
        "qqp",
        ("question1", "question2"),
        _F1_ACC,
    ),
    "stsb": GlueConfig(
        "STS-B", _TSV, _S12, "score", None, "stsb", ("sentence1", "sentence2"), (glue_metrics.pearson_and_spearman,)
    ),
    "mnli": GlueConfig(
        "MNLI",
        {
            "train": "train.tsv",
            "validation_matched": "dev_matched.tsv",
            "validation_mismatched": "dev_mismatched.tsv",
            "test_matched": "test_matched.tsv",
            "test_mismatched": "test_mismatched.tsv",
        },
        _MNLI,
        "gold_label",
        _NLI3,
        "mnli",
        _MNLI_KEYS,
    ),
    "mnli_matched": GlueConfig("MNLI", _mnli_files("matched"), _MNLI, "gold_label", _NLI3, "mnli", _MNLI_KEYS),
    "mnli_mismatched": GlueConfig("MNLI", _mnli_files("mismatched"), _MNLI, "gold_label", _NLI3, "mnli", _MNLI_KEYS),
    "qnli": GlueConfig(
        "QNLI", _TSV, {"question": "question", "sentence": "sentence"}, "label", _NLI2, "qnli", ("question", "sentence")
    ),
    "rte": GlueConfig("RTE", _TSV, _S12, "label", _NLI2, "rte", ("sentence1", "sentence2")),
    "wnli": GlueConfig(
        "WNLI", _TSV, _S12, "label", ("not_entailment", "entailment"), "wnli", ("sentence1", "sentence2")
    ),
    "ax": GlueConfig("diagnostic", {"test": "diagnostic.tsv"}, _MNLI, None, _NLI3, "mnli", _MNLI_KEYS, _MCC),
}

_WSC_FEATURES = ("text", "span1_index", "span2_index", "span1_text", "span2_text")

SUPER_GLUE: dict[str, SuperGlueConfig] = {
    "boolq": SuperGlueConfig("BoolQ", _JSONL, ("question", "passage"), _BOOL, "boolq", ("passage", "question")),
    "cb": SuperGlueConfig(
        "CB",
        _JSONL,
        ("premise", "hypothesis"),
        ("entailment", "contradiction", "neutral"),
        "cb",
        ("hypothesis", "premise"),
        (glue_metrics.cb_metrics,),
    ),
    "copa": SuperGlueConfig(
        "COPA",
        _JSONL,
        ("premise", "choice1", "choice2", "question"),
        ("choice1", "choice2"),
        "copa",
        ("choice1", "choice2", "premise", "question"),
    ),
    "multirc": SuperGlueConfig(
        "MultiRC",
        _JSONL,
        ("paragraph", "question", "answer"),
        _BOOL,
        "multirc",
        ("question", "answer", "paragraph"),  # order fixed by t5
        (glue_metrics.multirc_f1_and_exact_match,),
    ),
    "record": SuperGlueConfig(
        "ReCoRD", _JSONL, ("passage", "query", "entities", "answers"), None, None, metrics=(glue_metrics.record_em_f1,)
    ),
    "rte": SuperGlueConfig("RTE", _JSONL, ("premise", "hypothesis"), _NLI2, "rte", ("hypothesis", "premise")),
    "wic": SuperGlueConfig(
        "WiC",
        _JSONL,
        ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2"),
        _BOOL,
        "wic",
        ("sentence1", "sentence2", "word"),
    ),  # start/end offsets are not used
    "wsc": SuperGlueConfig("WSC", _JSONL, _WSC_FEATURES, _BOOL, None),
    "wsc.fixed": SuperGlueConfig("WSC", _JSONL, _WSC_FEATURES, _BOOL, None),
    # AX-b rows have sentence1/sentence2; they are written as RTE's hypothesis/premise.
    "axb": SuperGlueConfig(
        "AX-b", {"test": "AX-b.jsonl"}, ("sentence1", "sentence2"), _NLI2, "rte", ("hypothesis", "premise"), _MCC
    ),
    "axg": SuperGlueConfig(
        "AX-g", {"test": "AX-g.jsonl"}, ("premise", "hypothesis"), _NLI2, "rte", ("hypothesis", "premise")
    ),
}

# seqio task names, as the reference T5 registers them.
GLUE_TASKS = {f"glue_{config}_v002": config for config in GLUE}
# WSC is registered as the two "simple" tasks below, from wsc.fixed.
SUPER_GLUE_TASKS = {f"super_glue_{config}_v102": config for config in SUPER_GLUE if not config.startswith("wsc")}
WSC_TRAIN = "super_glue_wsc_v102_simple_train"
WSC_EVAL = "super_glue_wsc_v102_simple_eval"
DPR = "dpr_v001_simple"
TASK_NAMES: tuple[str, ...] = (*GLUE_TASKS, *SUPER_GLUE_TASKS, WSC_TRAIN, WSC_EVAL, DPR)

# Tasks whose targets are class names: task -> classes, in TFDS's class-id order.
LABEL_CLASSES: dict[str, tuple[str, ...]] = {
    **{task: GLUE[config].label_classes for task, config in GLUE_TASKS.items() if GLUE[config].label_classes},
    **{
        task: SUPER_GLUE[config].label_classes
        for task, config in SUPER_GLUE_TASKS.items()
        if SUPER_GLUE[config].label_classes
    },
}


def _sources() -> dict[str, tuple[str, str | None, dict[str, str]]]:
    sources = {}
    for task, config in GLUE_TASKS.items():
        sources[task] = (f"glue/{config}:{GLUE_TFDS_VERSION}", "glue", {s: s for s in GLUE[config].files})
    for task, config in SUPER_GLUE_TASKS.items():
        sources[task] = (
            f"super_glue/{config}:{SUPER_GLUE_TFDS_VERSION}",
            "super_glue",
            {s: s for s in SUPER_GLUE[config].files},
        )
    wsc = f"super_glue/wsc.fixed:{SUPER_GLUE_TFDS_VERSION}"
    sources[WSC_TRAIN] = (wsc, "super_glue", {"train": "train"})
    sources[WSC_EVAL] = (wsc, "super_glue", {"validation": "validation", "test": "test"})
    sources[DPR] = (DPR_TFDS_NAME, None, {"train": "train", "test": "test"})
    return sources


# task -> (TFDS name:version, file reader "glue"/"super_glue"/None, {seqio split: source split})
TFDS_NAMES: dict[str, tuple[str, str | None, dict[str, str]]] = _sources()


def reader_config(task_name: str) -> str:
    """The benchmark config that glue_files reads for a task ("cola", "wsc.fixed")."""
    return TFDS_NAMES[task_name][0].split("/", 1)[-1].split(":")[0]


def metric_fns(task_name: str) -> tuple[Callable, ...]:
    """The reference T5's metrics of a task (accuracy for WSC and DPR)."""
    if task_name in GLUE_TASKS:
        return GLUE[GLUE_TASKS[task_name]].metrics
    if task_name in SUPER_GLUE_TASKS:
        return SUPER_GLUE[SUPER_GLUE_TASKS[task_name]].metrics
    return (glue_metrics.accuracy,)


def float32(x: float) -> float:
    """Rounds a Python float to the nearest float32 value (as TFDS stores STS-B labels)."""
    return struct.unpack("<f", struct.pack("<f", float(x)))[0]
