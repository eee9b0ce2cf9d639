"""Text-to-text formats of GLUE / SuperGLUE / DPR rows, as the T5 preprocessors produce them.

`format_example(task_name, row)` takes one TFDS-shaped row (see `t5pod.data.glue_files`, or a
`tfds.as_numpy` example with bytes decoded) and returns a list of {"inputs", "targets", ...} dicts.
Texts are joined with single spaces and otherwise kept verbatim (no stripping or whitespace
collapsing), as t5's `tf.strings.join` does.
"""

from __future__ import annotations

import math
import re
from typing import Any

from t5pod.data.benchmarks import (
    DPR,
    GLUE,
    GLUE_TASKS,
    SUPER_GLUE,
    SUPER_GLUE_TASKS,
    TASK_NAMES,
    WSC_EVAL,
    WSC_TRAIN,
    float32,
)


def stsb_target(label: float) -> str:
    """round(label*5)/5 in float32 with half-to-even, printed with one decimal ("2.8")."""
    scaled = float32(float32(label) * 5.0)
    rounded = math.copysign(round(scaled), scaled)  # keeps the sign of -0.0, as tf.round does
    return "%.1f" % float32(rounded / 5.0)


def _label_name(label: int, classes: tuple[str, ...]) -> str:
    return "<unk>" if int(label) == -1 else classes[int(label)]


def _join(benchmark: str, row: dict, keys: tuple[str, ...]) -> str:
    parts = [benchmark]
    for key in keys:
        parts += [f"{key}:", row[key]]
    return " ".join(parts)


def _glue(cfg: str, row: dict) -> list[dict[str, Any]]:
    config = GLUE[cfg]
    if config.label_classes is None:  # STS-B: test rows (-1.0) give "-1.0", as in t5
        target = stsb_target(row["label"])
    else:
        target = _label_name(row["label"], config.label_classes)
    return [{"inputs": _join(config.input_name, row, config.input_keys), "targets": target, "idx": int(row["idx"])}]


def _super_glue(cfg: str, row: dict) -> list[dict[str, Any]]:
    if cfg == "record":
        return record_examples(row)
    if cfg == "axb":
        row = {**row, "premise": row["sentence1"], "hypothesis": row["sentence2"]}
    config = SUPER_GLUE[cfg]
    inputs = _join(config.input_name, row, config.input_keys)
    out = {"targets": _label_name(row["label"], config.label_classes)}
    if cfg == "multirc":
        inputs = inputs.replace("<br>", " ").replace("<b>", "").replace("</b>", "")
        idx = row["idx"]
        out["idx"] = f"{idx['paragraph']}-{idx['question']}-{idx['answer']}"
        out["group"] = f"{idx['paragraph']}-{idx['question']}"
    else:
        out["idx"] = int(row["idx"])
    return [{"inputs": inputs, **out}]


_HIGHLIGHT_AFTER_PUNCT = re.compile(r"(\.|\?|\!|\"|\')\n@highlight\n")
_HIGHLIGHT = re.compile(r"\n@highlight\n")


def record_passage(passage: str) -> str:
    """ReCoRD cleanup: `<punct>\\n@highlight\\n` -> `<punct> `, then `\\n@highlight\\n` -> `. `."""
    return _HIGHLIGHT.sub(". ", _HIGHLIGHT_AFTER_PUNCT.sub(r"\1 ", passage))


def record_examples(row: dict) -> list[dict[str, Any]]:
    """One example per answer (one "<unk>" example when there is none)."""
    inputs = " ".join(
        [
            "record query:",
            row["query"],
            "entities:",
            ", ".join(row["entities"]),
            "passage:",
            record_passage(row["passage"]),
        ]
    )
    answers = list(row["answers"])
    group = f"{row['idx']['passage']}-{row['idx']['query']}"
    return [
        {"inputs": inputs, "targets": t, "idx": group, "group": group, "answers": answers}
        for t in (answers or ["<unk>"])
    ]


# t5's _wsc_inputs hard-codes two WSC texts whose span2_index does not point at the pronoun.
_WSC_SPECIAL = {
    "The boy continued to whip the pony , and eventually the pony threw him over. John laughed "
    'out quite loud. "Good for him," he said. ': "The boy continued to whip the pony , and eventually the pony threw him over. John laughed "
    'out quite loud. "Good for X ," he said.',
    "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic "
    "pebble in an iron safe . Some day they might want to use it , but really for now, what more "
    "could they wish for?": "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the "
    "magic pebble in an iron safe . Some day they might want to use X , but really for now, "
    "what more could they wish for?",
}


def wsc_inputs(row: dict) -> str:
    """`wsc: ` + text with the word at span2_index (split on single spaces) starred: `*he*`."""
    text = row["text"]
    if text in _WSC_SPECIAL:
        blanked = _WSC_SPECIAL[text]
    else:
        words = text.split(" ")
        i = int(row["span2_index"])
        if not 0 < i < len(words) or words[i] != row["span2_text"]:
            raise ValueError(f"WSC span2 {row['span2_text']!r} is not word {i} of {text!r}")
        blanked = " ".join([" ".join(words[:i]), "X", " ".join(words[i + 1 :])])
    return "wsc: " + blanked.replace(" X ", f" *{row['span2_text']}* ")


def _wsc(task_name: str, row: dict) -> list[dict[str, Any]]:
    label = int(row.get("label", 0))
    if task_name == WSC_TRAIN and not label:  # keep label True (and, as in t5, -1) rows only
        return []
    return [{"inputs": wsc_inputs(row), "targets": row["span1_text"], "idx": int(row["idx"]), "label": label}]


def _dpr(row: dict) -> list[dict[str, Any]]:
    # The first occurrence of " <pronoun>" followed by a space, "." or "," is starred.
    pattern = r" (" + re.escape(row["pronoun"]) + r")( |\.|,)"
    sentence = re.sub(pattern, r" *\1*\2", row["sentence"], count=1)
    return [
        {"inputs": "wsc: " + sentence, "targets": row["candidates"][int(row["label"])], "idx": int(row.get("idx", -1))}
    ]


def _as_text(value: Any) -> Any:
    """Decodes bytes and numpy values (as `tfds.as_numpy` gives them) to str / Python types."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _as_text(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_as_text(v) for v in value]
    return value


def format_example(task_name: str, row: dict) -> list[dict[str, Any]]:
    """Formats one TFDS-shaped row for a seqio task name; a list (ReCoRD gives one per answer)."""
    row = _as_text(row)
    if task_name in GLUE_TASKS:
        return _glue(GLUE_TASKS[task_name], row)
    if task_name in SUPER_GLUE_TASKS:
        return _super_glue(SUPER_GLUE_TASKS[task_name], row)
    if task_name in (WSC_TRAIN, WSC_EVAL):
        return _wsc(task_name, row)
    if task_name == DPR:
        return _dpr(row)
    raise ValueError(f"unknown task {task_name!r}; valid: {', '.join(TASK_NAMES)}")
