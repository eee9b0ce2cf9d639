"""C4 cleaning heuristics: each rule on hand-written pages, the seqio preprocessor, the script."""

import gzip
import json
import pathlib
import subprocess
import sys

import pytest

from t5pod.data import c4_cleaning
from t5pod.data.c4_cleaning import C4Cleaner, CleaningRules

REPO = pathlib.Path(__file__).resolve().parent.parent

# Rules: terminal punctuation, >= 3 words, javascript; a bare closing quote is not terminal.
RULES_PAGE = "\n".join([
    "Home",
    "The quick brown fox jumps over the lazy dog. It was a sunny day.",
    "Please enable JavaScript to view this page.",
    "Short one.",
    'He wrote "hello world"',
    'She said "the weather is fine." Then she left.',
    "   ",
    "  Did the dog care about that at all? Nobody really knows!  ",
    "Read more",
])
RULES_PAGE_CLEAN = "\n".join([
    "The quick brown fox jumps over the lazy dog. It was a sunny day.",
    'She said "the weather is fine." Then she left.',
    "Did the dog care about that at all? Nobody really knows!",
])
FILLER = "One more line is here. Two more lines are here. Three more lines are here."
LOREM = "Lorem Ipsum dolor sit amet is common.\n" + FILLER + "\nFour lines. Five lines now."
BRACE = "This page has some code in it.\nfunction f() { return 1; }\n" + FILLER + "\nFour lines. Five lines."
BAD = "My cat was being a Heck  No today.\n" + FILLER + "\nIt sat there. It did not move."
NOT_BAD = "The heckler sat on the mat. It did not move at all.\nA heck-less day went by in the sun."
NOT_BAD += "\nWe were all very happy. The end came soon."
FEW = "This page is rather short. It has four sentences.\nThat is one fewer than needed. Sad but true!\nBye"
SPAN = "Alpha one is here. Beta two is here. Gamma three is here."
FIRST = f"{SPAN}\nThe first page goes on. It has more to say."
SECOND = f"A second page starts here. It is new. It is fresh.\n{SPAN}\nDelta four is here. Epsilon five is here!"
SECOND_CLEAN = "A second page starts here. It is new. It is fresh.\nDelta four is here. Epsilon five is here!"
GERMAN = ("Der Hund lief schnell über die Straße. Die Katze schlief.\nWir gingen nach Hause. Es regnete stark.\n"
          "Morgen fahren wir weg. Übermorgen kommen wir zurück.")
PAGES = [RULES_PAGE, LOREM, BRACE, BAD, NOT_BAD, FEW, FIRST, SECOND, FIRST]
EXPECTED = [RULES_PAGE_CLEAN, NOT_BAD, FIRST, SECOND_CLEAN]
BAD_WORDS = frozenset({"heck no", "darn"})
EXPECTED_COUNTS = {
    "pages_in": 9, "pages_out": 4,
    "pages_dropped_lorem_ipsum": 1, "pages_dropped_curly_brace": 1, "pages_dropped_bad_words": 1,
    "pages_dropped_too_few_sentences": 1, "pages_dropped_language": 0, "pages_dropped_dedup": 1,
    "lines_dropped_no_terminal_punct": 4, "lines_dropped_too_short": 1, "lines_dropped_javascript": 1,
    # SECOND's SPAN line, then the repeated FIRST's two lines.
    "lines_dropped_dedup": 3,
}


def test_every_rule_exact_output_and_counts():
    cleaner = C4Cleaner(CleaningRules(bad_words=BAD_WORDS))
    assert [cleaner.clean(p) for p in PAGES] == [
        RULES_PAGE_CLEAN, None, None, None, NOT_BAD, None, FIRST, SECOND_CLEAN, None]
    assert cleaner.counts == EXPECTED_COUNTS
    dropped = sum(v for k, v in cleaner.counts.items() if k.startswith("pages_dropped_"))
    assert cleaner.counts["pages_in"] == cleaner.counts["pages_out"] + dropped


def test_clean_pages_streams_and_dedup_switch():
    cleaner = C4Cleaner(CleaningRules(bad_words=BAD_WORDS))
    assert list(c4_cleaning.clean_pages(iter(PAGES), cleaner=cleaner)) == EXPECTED
    assert cleaner.counts == EXPECTED_COUNTS
    no_dedup = list(c4_cleaning.clean_pages(PAGES, CleaningRules(dedup=False)))
    assert no_dedup == [RULES_PAGE_CLEAN, BAD, NOT_BAD, FIRST, SECOND, FIRST]


def test_dedup_within_a_page_keeps_first_occurrence():
    page = f"{SPAN}\nSomething else is here. And more.\n{SPAN}"
    cleaner = C4Cleaner(CleaningRules())
    assert cleaner.clean(page) == f"{SPAN}\nSomething else is here. And more."
    assert cleaner.counts["lines_dropped_dedup"] == 1
    # Spans count only once emitted intact: R loses its Q line to dedup, is then too short and dropped,
    # so its SPAN does not block FIRST.
    q_line = "Q one is here. Q two is here. Q three is here."
    cleaner = C4Cleaner(CleaningRules())
    assert cleaner.clean(f"{q_line}\nQ four is here. Q five is here.") is not None
    assert cleaner.clean(f"{q_line}\n{SPAN}") is None
    assert cleaner.clean(FIRST) == FIRST
    assert cleaner.counts["pages_dropped_dedup"] == 1 and cleaner.counts["lines_dropped_dedup"] == 1


def test_english_only_and_custom_language_filter():
    cleaner = C4Cleaner(CleaningRules(english_only=True))
    assert [cleaner.clean(p) for p in (GERMAN, RULES_PAGE)] == [None, RULES_PAGE_CLEAN]
    assert cleaner.counts["pages_dropped_language"] == 1
    assert C4Cleaner(CleaningRules()).clean(GERMAN) == GERMAN  # Off by default.
    rules = CleaningRules(language_filter=lambda text: "fox" not in text)
    assert list(c4_cleaning.clean_pages([RULES_PAGE, FIRST], rules)) == [FIRST]


def test_sentence_splitter_and_thresholds():
    assert c4_cleaning.split_sentences('He said "Go." Then left! Why? Pi is 3.14 now.') == [
        'He said "Go."', "Then left!", "Why?", "Pi is 3.14 now."]
    rules = CleaningRules(min_words_per_line=1, min_num_sentences=1, dedup=False)
    assert C4Cleaner(rules).clean("Yes.\nNo\nMaybe!") == "Yes.\nMaybe!"


def test_load_bad_words(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# comment\nDarn\n\n  heck no \n", encoding="utf-8")
    assert c4_cleaning.load_bad_words(str(path)) == frozenset({"darn", "heck no"})
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        c4_cleaning.load_bad_words(str(tmp_path / "missing.txt"))


def test_preprocessor_on_tf_dataset():
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices({"text": PAGES, "id": list(range(len(PAGES)))})
    rules = CleaningRules(bad_words=BAD_WORDS)
    cleaned = c4_cleaning.c4_clean_preprocessor(dataset, rules)
    expected = [(t.encode(), i) for t, i in zip(EXPECTED, [0, 4, 6, 7])]
    for _ in range(2):  # Each iteration starts with an empty dedup state.
        assert [(ex["text"], ex["id"]) for ex in cleaned.as_numpy_iterator()] == expected
    repeated = [ex["id"] for ex in cleaned.repeat(2).as_numpy_iterator()]
    assert repeated == [0, 4, 6, 7] * 2
    assert cleaned.element_spec["text"].shape == []


def test_script_end_to_end(tmp_path):
    with gzip.open(tmp_path / "part-0.jsonl.gz", "wt", encoding="utf-8") as f:
        for page in PAGES[:5]:
            f.write(json.dumps({"text": page, "url": "x"}) + "\n")
    with gzip.open(tmp_path / "part-1.jsonl.gz", "wt", encoding="utf-8") as f:
        for page in PAGES[5:]:
            f.write(json.dumps({"text": page}) + "\n")
    (tmp_path / "bad.txt").write_text("heck no\ndarn\n", encoding="utf-8")
    output = tmp_path / "out" / "clean.jsonl"
    result = subprocess.run(
        [sys.executable, "scripts/c4_clean.py", f"--input={tmp_path}/part-*.jsonl.gz", f"--output={output}",
         f"--bad_words={tmp_path}/bad.txt"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == EXPECTED_COUNTS
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": t} for t in EXPECTED]
    assert sorted(p.name for p in output.parent.iterdir()) == ["clean.jsonl"]  # No temp file left.


def test_script_plain_text_flags_and_missing_bad_words(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import c4_clean
    finally:
        sys.path.remove(str(REPO / "scripts"))
    (tmp_path / "docs.txt").write_text(f"{SPAN} Delta four is here. Epsilon five is here.\n{SPAN} Six. Seven.\n"
                                       f"{GERMAN.replace(chr(10), ' ')}\n", encoding="utf-8")
    output = tmp_path / "clean.jsonl"
    assert c4_clean.main([f"--input={tmp_path}/*.txt", f"--output={output}", "--no_dedup", "--english_only"]) == 0
    texts = [json.loads(line)["text"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert texts == [f"{SPAN} Delta four is here. Epsilon five is here.", f"{SPAN} Six. Seven."]

    output.unlink()
    result = subprocess.run(
        [sys.executable, "scripts/c4_clean.py", f"--input={tmp_path}/*.txt", f"--output={output}",
         f"--bad_words={tmp_path}/nope.txt"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "nope.txt" in result.stderr and "does not exist" in result.stderr
    assert not output.exists()
