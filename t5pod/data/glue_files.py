"""Readers for GLUE / SuperGLUE files as the benchmarks distribute them.

Rows come out shaped like the TFDS examples of `glue/<config>` and `super_glue/<config>`: the same
field names, text as str, labels as int class ids in TFDS's class order (-1 when the file has no
label), STS-B labels as float32 values, `idx` as int (nested dicts for MultiRC and ReCoRD).
Parsing follows the TFDS builders: tab-separated without quoting, CoLA train/dev without a header,
rows whose label or text column is empty or missing are skipped, `idx` counts every data row.
Rows come in file order (TFDS shuffles by key hash).

Known difference from TFDS: TFDS builds MRPC from msr_paraphrase_train.txt, so its train/validation
`idx` is the row number in that file; here it is the row number in GLUE's MRPC train.tsv / dev.tsv.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Any, Iterator

from t5pod.data.benchmarks import GLUE, GLUE_ENV, SUPER_GLUE, SUPERGLUE_ENV, SuperGlueConfig, float32

_BOOL = ("False", "True")


def _check(kind: str, configs: dict, config: str, split: str):
    if config not in configs:
        raise ValueError(f"unknown {kind} config {config!r}; valid: {', '.join(configs)}")
    cfg = configs[config]
    if split not in cfg.files:
        raise ValueError(f"unknown split {split!r} for {kind}/{config}; valid: {', '.join(cfg.files)}")
    return cfg


def _resolve(base: str | os.PathLike | None, env: str, what: str, rel: str) -> pathlib.Path:
    base = base if base is not None else os.environ.get(env)
    if not base:
        raise FileNotFoundError(
            f"{what} file {rel} needs a data folder: set the environment "
            f"variable / gin macro {env} to the folder holding it"
        )
    path = pathlib.Path(base) / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file not found: {path} (set the environment variable / "
            f"gin macro {env} to the folder that holds {rel})"
        )
    return path


def glue_path(glue_dir: str | os.PathLike | None, config: str, split: str) -> pathlib.Path:
    """The TSV file for a GLUE config/split (checked to exist); glue_dir None reads $GLUE_DIR."""
    cfg = _check("glue", GLUE, config, split)
    return _resolve(glue_dir, GLUE_ENV, "GLUE", f"{cfg.folder}/{cfg.files[split]}")


def read_glue(glue_dir: str | os.PathLike | None, config: str, split: str) -> Iterator[dict[str, Any]]:
    """Yields TFDS-shaped rows of `glue/<config>` split `split` from GLUE_DIR's TSV files."""
    path = glue_path(glue_dir, config, split)
    return read_glue_file(path, config, split)


def read_glue_file(path: str | os.PathLike, config: str, split: str) -> Iterator[dict[str, Any]]:
    """Parses one GLUE TSV file as the TFDS builder does (split decides CoLA's header handling)."""
    cfg = _check("glue", GLUE, config, split)
    cola_headerless = config == "cola" and not split.startswith("test")
    with open(path, encoding="utf-8-sig") as f:
        if cola_headerless:
            rows = (
                {"sentence": r[3], "is_acceptable": r[1]} for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            )
        else:
            rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for n, row in enumerate(rows):
            example = {feat: row.get(col) for feat, col in cfg.columns.items()}
            if cfg.label_column is not None and cfg.label_column in row:
                example["label"] = _glue_label(row[cfg.label_column], cfg.label_classes, path)
            else:
                example["label"] = -1.0 if cfg.label_classes is None else -1
            example["idx"] = n
            if all(v is not None for v in example.values()):  # TFDS drops corrupted rows
                yield example


def _glue_label(raw: str | None, classes: tuple[str, ...] | None, path) -> Any:
    if raw is None or raw == "":
        return None
    if classes is None:
        return float32(float(raw))
    if raw in classes:
        return classes.index(raw)
    label = int(raw)
    if not 0 <= label < len(classes):
        raise ValueError(f"label {raw!r} out of range for classes {classes} in {path}")
    return label


def super_glue_path(superglue_dir: str | os.PathLike | None, config: str, split: str) -> pathlib.Path:
    """The JSONL file for a SuperGLUE config/split; superglue_dir None reads $SUPERGLUE_DIR."""
    cfg = _check("super_glue", SUPER_GLUE, config, split)
    rel = f"{cfg.folder}/{cfg.files[split]}"
    if config in ("axb", "axg"):  # accept <AX-b>/test.jsonl as well as the official AX-b.jsonl
        base = superglue_dir if superglue_dir is not None else os.environ.get(SUPERGLUE_ENV)
        alt = f"{cfg.folder}/test.jsonl"
        if base and not (pathlib.Path(base) / rel).is_file() and (pathlib.Path(base) / alt).is_file():
            rel = alt
    return _resolve(superglue_dir, SUPERGLUE_ENV, "SuperGLUE", rel)


def read_super_glue(superglue_dir: str | os.PathLike | None, config: str, split: str) -> Iterator[dict[str, Any]]:
    """Yields TFDS-shaped rows of `super_glue/<config>` split `split` from SUPERGLUE_DIR."""
    path = super_glue_path(superglue_dir, config, split)
    return read_super_glue_file(path, config)


def read_super_glue_file(path: str | os.PathLike, config: str) -> Iterator[dict[str, Any]]:
    """Parses one SuperGLUE JSONL file (e.g. a FewGLUE subset) as the TFDS builder does."""
    if config not in SUPER_GLUE:
        raise ValueError(f"unknown super_glue config {config!r}; valid: {', '.join(SUPER_GLUE)}")
    cfg = SUPER_GLUE[config]
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if config == "multirc":
                yield from _multirc_rows(row)
            elif config == "record":
                yield from _record_rows(row)
            else:
                yield _plain_row(row, config, cfg)


def _class_id(label: Any, classes: tuple[str, ...]) -> int:
    if isinstance(label, bool):
        label = "True" if label else "False"
    elif isinstance(label, int):
        label = str(label)
    if label not in classes:
        raise ValueError(f"label {label!r} is not one of {classes}")
    return classes.index(label)


def _multirc_rows(row: dict) -> Iterator[dict[str, Any]]:
    paragraph = row["passage"]
    for question in paragraph["questions"]:
        for answer in question["answers"]:
            label = answer.get("label")
            yield {
                "paragraph": paragraph["text"],
                "question": question["question"],
                "answer": answer["text"],
                "label": -1 if label is None else _class_id(bool(label), _BOOL),
                "idx": {"paragraph": row["idx"], "question": question["idx"], "answer": answer["idx"]},
            }


def _record_rows(row: dict) -> Iterator[dict[str, Any]]:
    passage = row["passage"]
    text = passage["text"]
    # Entity offsets are inclusive at both ends; TFDS keeps the sorted set of distinct strings.
    entities = sorted({text[e["start"] : e["end"] + 1] for e in passage["entities"]})
    for qa in row["qas"]:
        yield {
            "passage": text,
            "query": qa["query"],
            "entities": list(entities),
            "answers": sorted({a["text"] for a in qa.get("answers", [])}),
            "idx": {"passage": row["idx"], "query": qa["idx"]},
        }


def _plain_row(row: dict, config: str, cfg: SuperGlueConfig) -> dict[str, Any]:
    if config.startswith("wsc"):
        row = {**row, **row["target"]}
    example = {feat: row[feat] for feat in cfg.features}
    if config == "wsc.fixed":
        example = fix_wsc_spans(example)
    if "label" in row:
        label = row["label"]
        if config == "copa":
            label = "choice2" if label else "choice1"
        example["label"] = _class_id(label, cfg.label_classes)
    else:
        example["label"] = -1
    example["idx"] = row["idx"]
    return example


def fix_wsc_spans(ex: dict[str, Any]) -> dict[str, Any]:
    """TFDS `wsc.fixed`: repairs span texts that are not substrings of the text."""
    ex = dict(ex)
    for k in ("span1", "span2"):
        text, index = ex[k + "_text"], ex[k + "_index"]
        if text in ex["text"] or text in ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin"):
            continue
        if "theyscold" in text:
            # TFDS's text replacement here is a no-op (str.replace result discarded); only the
            # index changes. Kept as is to stay identical.
            ex["span2_index"] = 10
        first_word = ex["text"].split()[index]
        text = (text[0].lower() if first_word[0].islower() else text[0].upper()) + text[1:]
        text = text.rstrip(".").replace("\n", " ")
        if text not in ex["text"]:
            raise ValueError(f"WSC span {text!r} is not in text {ex['text']!r}")
        ex[k + "_text"] = text
    return ex
