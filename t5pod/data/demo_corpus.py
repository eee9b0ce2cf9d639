"""The embedded demo corpus: English text every Python installation carries, no download.

Documents are the standard library's docstrings and comment blocks plus the language reference
topics that ship with pydoc (pydoc_data). Built once at first use into the cache directory
($T5POD_CACHE, default ~/.cache/t5pod), together with a SentencePiece vocabulary trained on it.
"""

import ast
import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import sentencepiece as spm

from t5pod.data import vocabularies

CORPUS_VERSION = 1
VOCAB_SIZE = 2000  # SentencePiece pieces; +100 extra ids = 2100, padded to 2176 in the model
MIN_WORDS = 8
# Folders of the standard library that hold tests or non-English data rather than documentation.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "turtledemo", "ensurepip", "encodings"}


def cache_dir() -> Path:
    base = os.environ.get("T5POD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "t5pod")
    return Path(base) / f"demo-v{CORPUS_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"


def _clean(text: str) -> str:
    return " ".join(text.split())


def _comment_blocks(source: str) -> Iterator[str]:
    block: list[str] = []
    for line in source.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!"):
            block.append(stripped.lstrip("#").strip())
        elif block:
            yield " ".join(block)
            block = []


def iter_documents() -> Iterator[str]:
    """The corpus, one document per item, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= MIN_WORDS:
                    yield _clean(doc)
        for block in _comment_blocks(source):
            if len(block.split()) >= MIN_WORDS and re.search(r"[a-z]{3,} [a-z]{3,}", block):
                yield _clean(block)
    try:
        from pydoc_data import topics  # here: some distributions strip pydoc_data
    except ImportError:
        return
    for name in sorted(topics.topics):
        for paragraph in re.split(r"\n\s*\n", topics.topics[name]):
            if len(paragraph.split()) >= MIN_WORDS:
                yield _clean(paragraph)


def _write_atomically(path: Path, lines: Iterator[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as f:
        for line in lines:
            f.write(line + "\n")
            size += len(line) + 1
    os.replace(f.name, path)
    return size


class DemoCacheError(ValueError):
    """The demo's cache folder cannot be written."""


def _cache_error(error: OSError) -> DemoCacheError:
    return DemoCacheError(
        f"The demo data cache {cache_dir()} cannot be written ({error.strerror or error}); set T5POD_CACHE to a "
        "writable folder."
    )


def corpus_path() -> str:
    """Path of the demo corpus (plain text, one document per line), built if missing."""
    path = cache_dir() / "corpus.txt"
    if not path.is_file():
        try:
            _write_atomically(path, iter_documents())
        except OSError as error:
            raise _cache_error(error) from None
    return str(path)


def _loads(path: Path) -> bool:
    try:
        spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return False
    return True


def vocabulary_path() -> str:
    """Path of the demo SentencePiece model, trained on the corpus if missing, and again if the
    cached file does not load (it is only a cache: rebuilding it gives the same vocabulary)."""
    path = cache_dir() / "spiece.model"
    if path.is_file() and not _loads(path):
        print(f"The cached demo vocabulary {path} does not load; building it again.", file=sys.stderr)
        path.unlink()
    if not path.is_file():
        try:
            with open(corpus_path(), encoding="utf-8") as f:
                vocabularies.train_vocabulary(f, str(path), vocab_size=VOCAB_SIZE, max_sentences=200_000)
        except OSError as error:
            raise _cache_error(error) from None
    return str(path)


def vocabulary() -> vocabularies.LazyVocabulary:
    """The demo vocabulary; nothing is built until it is first used."""
    return vocabularies.LazyVocabulary(vocabulary_path)
