"""The C4 cleaning heuristics of the T5 paper (Raffel et al. 2020, section 2.2), streaming.

Order of the rules for one page (each dropped page or line is counted under the first rule that fires):

1. Page rules on the raw page text: "lorem ipsum" (case-insensitive), a curly brace "{", then any
   bad word (whole word or phrase, case-insensitive; an empty list turns the rule off).
2. Line rules, each stripped line in turn (blank lines are skipped and not counted): keep a line only
   if it ends in terminal punctuation, has >= min_words_per_line whitespace-separated words and does
   not mention "javascript" (case-insensitive). Terminal punctuation is ".", "!", "?", or a closing
   quote (" or a right double quote) right after one of those; a bare quote does not count (the tfds
   reference accepts any line ending in '"').
3. Fewer than min_num_sentences sentences left: page dropped. Sentences come from `split_sentences`:
   a sentence ends at ".", "!" or "?" (optionally plus one closing quote or bracket) before whitespace;
   a line's end always ends a sentence. So "e.g. this" splits too; no external tokenizer.
4. Language filter on the cleaned text (if any; see `looks_english`).
5. Dedup of three-sentence spans: the spans are the windows of three consecutive sentences of the
   cleaned page (case- and whitespace-normalized, hashed). A line is dropped when a span *ending* in it
   was already emitted (earlier in the stream, or in an earlier kept line of the same page); a span is
   recorded only once it is emitted intact (all its lines kept, page emitted). If dedup leaves fewer
   than min_num_sentences sentences, the page is dropped (pages_dropped_dedup).

Line counts include lines of pages that a later rule drops. State is per `C4Cleaner` object.
"""

import collections
import dataclasses
import functools
import hashlib
import re
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

MIN_WORDS_PER_LINE = 3
MIN_NUM_SENTENCES = 5
SPAN_SENTENCES = 3

PAGE_RULES = ("lorem_ipsum", "curly_brace", "bad_words", "too_few_sentences", "language", "dedup")
LINE_RULES = ("no_terminal_punct", "too_short", "javascript", "dedup")

_TERMINAL = re.compile(r"[.!?][\"\u201d]?$")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_STOP_WORDS = frozenset(
    "a about after all also an and are as at be been but by can could did do for from had has have he "
    "her his i if in into is it its just me more my no not of on one or our out she so some than that "
    "the their them there they this to up was we were what when which who will with would you your".split())


@dataclasses.dataclass
class CleaningRules:
    """Thresholds and switches. `language_filter(text) -> bool` overrides the english_only heuristic."""

    min_words_per_line: int = MIN_WORDS_PER_LINE
    min_num_sentences: int = MIN_NUM_SENTENCES
    bad_words: frozenset = frozenset()
    english_only: bool = False
    english_stop_word_ratio: float = 0.2
    dedup: bool = True
    language_filter: Callable[[str], bool] | None = None


def load_bad_words(path: str) -> frozenset:
    """One word or phrase per line (lower-cased); blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"bad-words file {path!r} does not exist (expected one word or phrase "
                                "per line)") from None
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.strip().startswith("#"))


def split_sentences(line: str) -> list[str]:
    """Sentences of one line: split at whitespace after [.!?], or after [.!?] and one closing quote/bracket."""
    return [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]


def looks_english(text: str, stop_word_ratio: float = 0.2, ascii_ratio: float = 0.9) -> bool:
    """Crude stand-in for langdetect: letters mostly ASCII and enough common English stop words."""
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) < ascii_ratio * len(letters):
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and sum(w in _STOP_WORDS for w in words) >= stop_word_ratio * len(words)


def _bad_words_regex(words: frozenset):
    if not words:
        return None
    alternatives = [r"\s+".join(map(re.escape, w.split())) for w in sorted(words, key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def _span_hash(sentences: list[str]) -> bytes:
    joined = "\n".join(" ".join(s.lower().split()) for s in sentences)
    return hashlib.blake2b(joined.encode("utf-8"), digest_size=8).digest()


class C4Cleaner:
    """Cleans pages one at a time; `counts` accumulates, the dedup span set lives in the object."""

    def __init__(self, rules: CleaningRules | None = None):
        self.rules = rules or CleaningRules()
        self._bad_words = _bad_words_regex(frozenset(w.lower() for w in self.rules.bad_words))
        self._language_filter = self.rules.language_filter
        if self._language_filter is None and self.rules.english_only:
            ratio = self.rules.english_stop_word_ratio
            self._language_filter = lambda text: looks_english(text, ratio)
        self._seen: set[bytes] = set()
        self.counts = {"pages_in": 0, "pages_out": 0}
        self.counts.update({f"pages_dropped_{r}": 0 for r in PAGE_RULES})
        self.counts.update({f"lines_dropped_{r}": 0 for r in LINE_RULES})

    def _drop_page(self, rule: str) -> None:
        self.counts[f"pages_dropped_{rule}"] += 1

    def _line_rule(self, line: str) -> str | None:
        if not _TERMINAL.search(line):
            return "no_terminal_punct"
        if len(line.split()) < self.rules.min_words_per_line:
            return "too_short"
        if "javascript" in line.lower():
            return "javascript"
        return None

    def clean(self, text: str) -> str | None:
        """The cleaned page (kept lines joined by newlines), or None when the page is dropped."""
        self.counts["pages_in"] += 1
        lower = text.lower()
        if "lorem ipsum" in lower:
            return self._drop_page("lorem_ipsum")
        if "{" in text:
            return self._drop_page("curly_brace")
        if self._bad_words is not None and self._bad_words.search(text):
            return self._drop_page("bad_words")
        lines = []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            rule = self._line_rule(line)
            if rule is None:
                lines.append(line)
            else:
                self.counts[f"lines_dropped_{rule}"] += 1
        sentences = [split_sentences(line) for line in lines]
        if sum(map(len, sentences)) < self.rules.min_num_sentences:
            return self._drop_page("too_few_sentences")
        if self._language_filter is not None and not self._language_filter("\n".join(lines)):
            return self._drop_page("language")
        new_spans: set[bytes] = set()
        if self.rules.dedup:
            keep = self._dedup(sentences, new_spans)
            lines = [line for line, k in zip(lines, keep) if k]
            if sum(len(s) for s, k in zip(sentences, keep) if k) < self.rules.min_num_sentences:
                return self._drop_page("dedup")
        self._seen |= new_spans
        self.counts["pages_out"] += 1
        return "\n".join(lines)

    def _dedup(self, sentences: list[list[str]], new_spans: set[bytes]) -> list[bool]:
        """Which lines to keep; fills new_spans with the spans the page adds if it is emitted."""
        flat = [(i, s) for i, line in enumerate(sentences) for s in line]
        spans_by_line: list[list[tuple[int, bytes]]] = [[] for _ in sentences]
        for end in range(SPAN_SENTENCES - 1, len(flat)):
            start = end - SPAN_SENTENCES + 1
            spans_by_line[flat[end][0]].append((start, _span_hash([s for _, s in flat[start:end + 1]])))
        keep = [True] * len(sentences)
        for line_index, spans in enumerate(spans_by_line):
            if any(h in self._seen or h in new_spans for _, h in spans):
                keep[line_index] = False
                self.counts["lines_dropped_dedup"] += 1
                continue
            for start, h in spans:  # Record only spans whose lines are all kept.
                if all(keep[flat[j][0]] for j in range(start, start + SPAN_SENTENCES)):
                    new_spans.add(h)
        return keep


def clean_pages(texts: Iterable[str], rules: CleaningRules | None = None,
                cleaner: C4Cleaner | None = None) -> Iterator[str]:
    """Lazily yields the cleaned pages that survive; pass `cleaner` to read its counts afterwards."""
    cleaner = cleaner or C4Cleaner(rules)
    for text in texts:
        cleaned = cleaner.clean(text)
        if cleaned is not None:
            yield cleaned


class _CleanerPerIteration:
    """One C4Cleaner per dataset iteration, keyed by an id drawn when the iteration starts."""

    def __init__(self, rules: CleaningRules, keep_last: int = 8):
        self.rules, self.keep_last = rules, keep_last
        self.cleaners: collections.OrderedDict[int, C4Cleaner] = collections.OrderedDict()
        self.next_id = 0
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            self.next_id += 1
            self.cleaners[self.next_id] = C4Cleaner(self.rules)
            while len(self.cleaners) > self.keep_last:
                self.cleaners.popitem(last=False)
            return np.int64(self.next_id)

    def clean(self, iteration_id, text):
        with self.lock:
            cleaner = self.cleaners.get(int(iteration_id))
            if cleaner is None:  # Evicted (more than keep_last live iterators): start afresh.
                cleaner = self.cleaners[int(iteration_id)] = C4Cleaner(self.rules)
            cleaned = cleaner.clean(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        return np.bytes_((cleaned or "").encode("utf-8")), np.bool_(cleaned is not None)


def c4_clean_preprocessor(dataset, rules: CleaningRules | None = None, text_key: str = "text"):
    """seqio-style preprocessor: cleans the scalar string feature `text_key`, drops dropped pages.

    Runs Python per example (tf.numpy_function, stateful, sequential), so the pipeline is tied to this
    process. Dedup state is per dataset iteration (each new iterator, e.g. each pass of a later
    `.repeat()`, starts with an empty span set) and never shared across processes or hosts, so
    sharded pipelines only deduplicate within their shard.
    """
    import tensorflow as tf  # here, not at the top: the streaming cleaner (scripts/c4_clean.py) starts without TF

    state = _CleanerPerIteration(rules or CleaningRules())

    def clean(iteration_id, example):
        text, keep = tf.numpy_function(state.clean, [iteration_id, example[text_key]],
                                       (tf.string, tf.bool), stateful=True)
        example = dict(example)
        example[text_key] = tf.ensure_shape(text, [])
        return example, tf.ensure_shape(keep, [])

    def start(_):
        return tf.ensure_shape(tf.numpy_function(state.start, [], tf.int64, stateful=True), [])

    def iteration(iteration_id):
        return dataset.map(functools.partial(clean, iteration_id))

    def kept(example, keep):
        return keep

    def drop_flag(example, keep):
        return example

    cleaned = tf.data.Dataset.from_tensors(0).map(start).flat_map(iteration)
    return cleaned.filter(kept).map(drop_flag)
