"""C4's cleaning, rule for rule and constant for constant as the code that built C4 (TensorFlow
Datasets' `c4_utils.clean_page`, `remove_duplicate_text`, `detect_english` and the bad-words filter),
streaming one page at a time.

For one page, in this order (a dropped page or line is counted under the first rule that fires):

1. Line rules, each stripped line in turn (`clean_page`):
   - a word (whitespace-separated) longer than 1000 characters: line dropped (too_long_word);
   - Wikipedia-style citations ("[12]", "[]", "[edit]", "[citation needed]") are removed from the line;
   - the line must end in ".", "?", "!" or '"' and not in "...": else dropped (no_endmark);
   - fewer than 5 words: dropped (too_short);
   - "lorem ipsum" (case-insensitive) in a line that got this far: page dropped (lorem_ipsum);
   - "javascript" (case-insensitive): line dropped (javascript);
   - "{" in a line that got this far: page dropped (curly_brace);
   - a cookie or policy phrase ("terms of use", "privacy policy", "cookie policy", "uses cookies",
     "use of cookies", "use cookies"): line dropped (policy).
   Fewer than 3 sentences in the kept lines: page dropped (too_few_sentences).
2. Line dedup (`remove_duplicate_text`): a line (stripped, lower-cased) seen before in the stream, on
   an earlier page or earlier on this page, is dropped (duplicate). The page is then dropped if
   nothing or fewer than 3 sentences are left (pages_dropped_duplicate). C4 keeps each line on one
   page chosen by a hash of the URL; a stream keeps its first occurrence.
3. Language (`detect_english`): langdetect (seeded, as C4) must name English with probability >= 0.99
   (language). `language="stopwords"` swaps in a fast stop-word heuristic instead; "off" skips it.
4. Bad words: a listed word or phrase flanked by non-word characters in the lower-cased page: page
   dropped (bad_words). C4 used the "List of Dirty, Naughty, Obscene, and Otherwise Bad Words".

Sentences are counted by `split_sentences` (C4 used NLTK's punkt model, which needs a download): a
sentence ends at ".", "!" or "?" (optionally plus one closing quote or bracket) before whitespace,
and at the end of a line.
"""

import collections
import dataclasses
import functools
import hashlib
import re
import threading
from typing import Callable, Iterable, Iterator

import numpy as np

MIN_WORDS_PER_LINE = 5
MIN_NUM_SENTENCES = 3
MAX_WORD_LENGTH = 1000
END_MARKS = (".", "?", "!", '"')
ELLIPSIS = "..."
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
ENGLISH_MIN_PROBABILITY = 0.99
LANGUAGE_FILTERS = ("langdetect", "stopwords", "off")

PAGE_RULES = ("lorem_ipsum", "curly_brace", "too_few_sentences", "duplicate", "language", "bad_words")
LINE_RULES = ("too_long_word", "no_endmark", "too_short", "javascript", "policy", "duplicate")

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_STOP_WORDS = frozenset(
    "a about after all also an and are as at be been but by can could did do for from had has have he "
    "her his i if in into is it its just me more my no not of on one or our out she so some than that "
    "the their them there they this to up was we were what when which who will with would you your".split()
)


@dataclasses.dataclass
class CleaningRules:
    """C4's constants by default. `language_filter(text) -> bool` overrides `language`."""

    min_words_per_line: int = MIN_WORDS_PER_LINE
    min_num_sentences: int = MIN_NUM_SENTENCES
    max_word_length: int = MAX_WORD_LENGTH
    dedup: bool = True
    language: str = "langdetect"
    english_min_probability: float = ENGLISH_MIN_PROBABILITY
    english_stop_word_ratio: float = 0.2
    bad_words: frozenset = frozenset()
    language_filter: Callable[[str], bool] | None = None

    def __post_init__(self):
        for name in ("min_words_per_line", "min_num_sentences", "max_word_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"CleaningRules.{name} is {getattr(self, name)}; it must be at least 1.")
        if self.language not in LANGUAGE_FILTERS:
            raise ValueError(f"CleaningRules.language is {self.language!r}; use one of {', '.join(LANGUAGE_FILTERS)}.")
        for name in ("english_min_probability", "english_stop_word_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"CleaningRules.{name} is {getattr(self, name)}; it must be in (0, 1].")


def load_bad_words(path: str) -> frozenset:
    """One word or phrase per line (lower-cased); blank lines and lines starting with '#' are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"bad-words file {path!r} does not exist (expected one word or phrase per line)"
        ) from None
    return frozenset(w.strip().lower() for w in lines if w.strip() and not w.strip().startswith("#"))


def split_sentences(line: str) -> list[str]:
    """Sentences of one line: split at whitespace after [.!?], or after [.!?] and one closing quote/bracket."""
    return [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]


def count_sentences(text: str) -> int:
    return sum(len(split_sentences(line)) for line in text.splitlines())


def looks_english(text: str, stop_word_ratio: float = 0.2, ascii_ratio: float = 0.9) -> bool:
    """The fast heuristic: letters mostly ASCII and enough common English stop words."""
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) < ascii_ratio * len(letters):
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and sum(w in _STOP_WORDS for w in words) >= stop_word_ratio * len(words)


_langdetect_lock = threading.Lock()  # langdetect's seeded factory is global state


def langdetect_english(text: str, min_probability: float = ENGLISH_MIN_PROBABILITY) -> bool:
    """C4's English filter: langdetect's best guess is "en" with probability >= min_probability."""
    import langdetect  # here: only this filter needs it

    with _langdetect_lock:
        langdetect.DetectorFactory.seed = 0  # deterministic, as C4
        try:
            predictions = langdetect.detect_langs(text)
        except langdetect.lang_detect_exception.LangDetectException:
            return False
    return bool(predictions) and predictions[0].lang == "en" and predictions[0].prob >= min_probability


def _bad_words_regex(words: frozenset):
    if not words:
        return None
    return re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in sorted(words))))


def empty_counts() -> dict[str, int]:
    """Pages in and out, and the pages and lines each rule dropped."""
    return {
        "pages_in": 0,
        "pages_out": 0,
        **{f"pages_dropped_{r}": 0 for r in PAGE_RULES},
        **{f"lines_dropped_{r}": 0 for r in LINE_RULES},
    }


def line_hash(line: str) -> bytes:
    return hashlib.md5(line.strip().lower().encode("utf-8")).digest()


class C4Cleaner:
    """Cleans pages one at a time; `counts` accumulates, the dedup line set lives in the object."""

    def __init__(self, rules: CleaningRules | None = None):
        self.rules = rules or CleaningRules()
        self._bad_words = _bad_words_regex(frozenset(w.lower() for w in self.rules.bad_words))
        self._language_filter = self.rules.language_filter
        if self._language_filter is None and self.rules.language == "langdetect":
            self._language_filter = functools.partial(
                langdetect_english, min_probability=self.rules.english_min_probability
            )
        elif self._language_filter is None and self.rules.language == "stopwords":
            self._language_filter = functools.partial(looks_english, stop_word_ratio=self.rules.english_stop_word_ratio)
        self._seen: set[bytes] = set()
        self.counts = empty_counts()

    def _drop_page(self, rule: str) -> None:
        self.counts[f"pages_dropped_{rule}"] += 1

    def _drop_line(self, rule: str) -> None:
        self.counts[f"lines_dropped_{rule}"] += 1

    def clean_page(self, text: str) -> list[str] | None:
        """Step 1: the kept lines, or None (page dropped)."""
        r = self.rules
        kept, sentences = [], 0
        for line in text.splitlines():
            line = line.strip()
            if any(len(word) > r.max_word_length for word in line.split()):
                self._drop_line("too_long_word")
                continue
            line = CITATION.sub("", line)
            if not line.endswith(END_MARKS) or line.endswith(ELLIPSIS):
                self._drop_line("no_endmark")
                continue
            if len(line.split()) < r.min_words_per_line:
                self._drop_line("too_short")
                continue
            lower = line.lower()
            if "lorem ipsum" in lower:
                return self._drop_page("lorem_ipsum")
            if "javascript" in lower:
                self._drop_line("javascript")
                continue
            if "{" in line:
                return self._drop_page("curly_brace")
            if any(p in lower for p in POLICY_SUBSTRINGS):
                self._drop_line("policy")
                continue
            sentences += len(split_sentences(line))
            kept.append(line)
        if sentences < r.min_num_sentences:
            return self._drop_page("too_few_sentences")
        return kept

    def _dedup(self, lines: list[str]) -> list[str] | None:
        """Step 2: lines not seen before in the stream (nor earlier on the page)."""
        kept = []
        for line in lines:
            digest = line_hash(line)
            if digest in self._seen:
                self._drop_line("duplicate")
                continue
            self._seen.add(digest)
            kept.append(line)
        return self.enough_after_dedup(kept)

    def enough_after_dedup(self, kept: list[str]) -> list[str] | None:
        if not kept or count_sentences("\n".join(kept)) < self.rules.min_num_sentences:
            return self._drop_page("duplicate")
        return kept

    def keep(self, cleaned: str) -> bool:
        """Steps 3 and 4 on a cleaned page: the language filter, then the bad words."""
        if self._language_filter is not None and not self._language_filter(cleaned):
            self._drop_page("language")
            return False
        if self._bad_words is not None and self._bad_words.search(cleaned.lower()):
            self._drop_page("bad_words")
            return False
        self.counts["pages_out"] += 1
        return True

    def clean(self, text: str) -> str | None:
        """The cleaned page (kept lines joined by newlines), or None when the page is dropped."""
        self.counts["pages_in"] += 1
        lines = self.clean_page(text)
        if lines is not None and self.rules.dedup:
            lines = self._dedup(lines)
        if lines is None:
            return None
        cleaned = "\n".join(lines).strip()
        return cleaned if self.keep(cleaned) else None


def clean_pages(
    texts: Iterable[str], rules: CleaningRules | None = None, cleaner: C4Cleaner | None = None
) -> Iterator[str]:
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
        text, keep = tf.numpy_function(
            state.clean, [iteration_id, example[text_key]], (tf.string, tf.bool), stateful=True
        )
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
