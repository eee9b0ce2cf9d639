"""Local files for the summarization, translation and SQuAD tasks, read into TFDS's features.

Each reader returns rows with the feature names of the TFDS dataset the task reads otherwise, so
that one formatting function serves both sources:

- summarization: JSON lines holding the TFDS fields (`article`/`highlights` for CNN/DailyMail,
  `document`/`summary` for XSum); other fields are ignored.
- translation: JSON lines with one field per language (`{"en": ..., "de": ...}`, as TFDS's WMT), or
  a pattern with `{lang}` naming line-aligned plain-text files (`newstest2014.{lang}` reads
  `newstest2014.en` and `newstest2014.de`).
- SQuAD: the official JSON (`{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`) or JSON lines
  with `id`, `question`, `context` and `answers` (a list of strings, or TFDS's `{"text": [...]}`).

Files may be gzipped (`.gz`). A missing file or field is one error naming the file and the fix.
"""

import gzip
import io
import json

import tensorflow as tf


class TaskFileError(ValueError):
    pass


def _open(path: str):
    with tf.io.gfile.GFile(path, "rb") as f:  # local paths and buckets (gs://) alike
        data = f.read()
    return io.StringIO((gzip.decompress(data) if path.endswith(".gz") else data).decode("utf-8"))


def _files(pattern: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise TaskFileError(f"No file matches {pattern!r}; fix the pattern in TASK_FILES.")
    return files


def _json_lines(pattern: str) -> list[tuple[str, int, dict]]:
    rows = []
    for path in _files(pattern):
        with _open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((path, number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise TaskFileError(f"{path}, line {number}: not JSON ({error.msg}).") from None
    return rows


def _need(path: str, number: int, row: dict, fields: tuple[str, ...]) -> dict:
    missing = [f for f in fields if not isinstance(row.get(f), str)]
    if missing:
        raise TaskFileError(f"{path}, line {number}: no text field {missing[0]!r} (a row needs {', '.join(fields)}).")
    return {f: row[f] for f in fields}


def read_summaries(pattern: str, article_key: str, summary_key: str) -> list[dict]:
    return [_need(p, n, row, (article_key, summary_key)) for p, n, row in _json_lines(pattern)]


def read_translations(pattern: str, source: str, target: str) -> list[dict]:
    if "{lang}" not in pattern:
        return [_need(p, n, row, (source, target)) for p, n, row in _json_lines(pattern)]
    sides = {}
    for language in (source, target):
        path = pattern.replace("{lang}", language)
        if not tf.io.gfile.exists(path):
            raise TaskFileError(
                f"{path} does not exist: a {{lang}} pattern needs one file per language ({source} and {target})."
            )
        with _open(path) as f:
            sides[language] = [line.rstrip("\n") for line in f]
    if len(sides[source]) != len(sides[target]):
        raise TaskFileError(
            f"{pattern}: {len(sides[source])} {source} lines but {len(sides[target])} {target} lines; "
            "parallel files must be line-aligned."
        )
    return [{source: s, target: t} for s, t in zip(sides[source], sides[target])]


def _squad_answers(path: str, where, answers) -> list[str]:
    if isinstance(answers, dict):
        answers = answers.get("text")
    if isinstance(answers, list) and answers and isinstance(answers[0], dict):
        answers = [a.get("text") for a in answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise TaskFileError(f"{path}, {where}: `answers` must hold at least one answer text.")
    return answers


def read_squad(pattern: str) -> list[dict]:
    rows = []
    for path in _files(pattern):
        if path.endswith((".jsonl", ".jsonl.gz")):
            for _, number, row in _json_lines(path):
                question = _need(path, number, row, ("question", "context"))
                rows.append(
                    {
                        "id": str(row.get("id", number)),
                        **question,
                        "answers": _squad_answers(path, f"line {number}", row.get("answers")),
                    }
                )
            continue
        with _open(path) as f:
            try:
                articles = json.load(f)["data"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TaskFileError(
                    f"{path} is not SQuAD's JSON (an object with `data`) nor JSON lines (.jsonl)."
                ) from None
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows.append(
                        {
                            "id": qa["id"],
                            "question": qa["question"],
                            "context": paragraph["context"],
                            "answers": _squad_answers(path, f"question {qa['id']}", qa["answers"]),
                        }
                    )
    return rows
