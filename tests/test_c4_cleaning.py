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

LONG_WORD = "x" * 1001
# Line rules in C4's order; each expected line worked out by hand from c4_utils.clean_page's rules.
RULES_PAGE = "\n".join(
    [
        "Home",  # no end mark
        "The quick brown fox jumps over the lazy dog. It was a sunny day.",
        "Please enable JavaScript to view this page.",  # javascript
        "Short line here.",  # 3 words
        'He wrote to them "hello world"',  # a closing quote is an end mark
        "Our site uses cookies to improve your experience.",  # policy
        "See the full list of the items below...",  # ellipsis
        "   ",  # blank: no end mark
        "  Did the dog care about that at all? Nobody really knows!  ",
        "The war began in 1914.[3] It ended in 1918.[citation needed]",  # citations removed
        f"A very long word {LONG_WORD} is in this line.",  # word over 1000 characters
    ]
)
RULES_PAGE_CLEAN = "\n".join(
    [
        "The quick brown fox jumps over the lazy dog. It was a sunny day.",
        'He wrote to them "hello world"',
        "Did the dog care about that at all? Nobody really knows!",
        "The war began in 1914. It ended in 1918.",
    ]
)


def filler(tag: str) -> str:
    """A line of three sentences that no other page repeats (so line dedup leaves it alone)."""
    return f"The {tag} page goes on right here. It has a second sentence too. And it has a third one."


FILLER = filler("boundary")
# "lorem ipsum" and "{" drop the page only in a line that passed the earlier line rules.
LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing.\n" + filler("lorem")
LOREM_SHORT = "Lorem ipsum\n" + filler("short lorem")
BRACE = "function f() { return 1; } is a function.\n" + filler("brace")
BRACE_SHORT = "if (x) { y }\n" + filler("short brace")
TWO_SENTENCES = "This page is rather short in the end. It has only two sentences in it."
THREE_SENTENCES = TWO_SENTENCES + "\nHere is the third one, which is enough."
BAD = "My cat was being a heck no kind of cat today.\n" + filler("bad")
NOT_BAD = "The heckler sat on the mat all day.\n" + filler("good")
FIRST = "Alpha one is here and now. Beta two is here and now.\nGamma three is here and now, at last."
# Its second line repeats FIRST's last one but for case and the spaces around it.
SECOND = (
    "A second page starts right here. It is new and fresh.\n  GAMMA three is here and now, at last.  \n"
    "Delta four is here and now. Epsilon five is here and now!"
)
SECOND_CLEAN = (
    "A second page starts right here. It is new and fresh.\nDelta four is here and now. Epsilon five is here and now!"
)
ENGLISH = (
    "The river runs quietly through the old town every spring. Children play along its banks while "
    "their parents talk about the weather.\nIn the evening the streets fill with people who walk "
    "home slowly from work. It is a calm and friendly place to live."
)
GERMAN = (
    "Der Hund lief am Morgen schnell über die breite Straße. Die Katze schlief noch lange im Haus.\n"
    "Wir gingen danach gemeinsam nach Hause zurück. Es regnete den ganzen Tag sehr stark."
)
PAGES = [
    RULES_PAGE,
    LOREM,
    LOREM_SHORT,
    BRACE,
    BRACE_SHORT,
    TWO_SENTENCES,
    THREE_SENTENCES,
    BAD,
    NOT_BAD,
    FIRST,
    SECOND,
    FIRST,
]
EXPECTED = [
    RULES_PAGE_CLEAN,
    filler("short lorem"),
    filler("short brace"),
    THREE_SENTENCES,
    NOT_BAD,
    FIRST,
    SECOND_CLEAN,
]
BAD_WORDS = frozenset({"heck no", "darn"})
OFF = dict(language="off")
EXPECTED_COUNTS = {
    "pages_in": 12,
    "pages_out": 7,
    "pages_dropped_lorem_ipsum": 1,
    "pages_dropped_curly_brace": 1,
    "pages_dropped_too_few_sentences": 1,
    "pages_dropped_duplicate": 1,
    "pages_dropped_language": 0,
    "pages_dropped_bad_words": 1,
    # RULES_PAGE: Home, the ellipsis and the blank line; then "Lorem ipsum" and "if (x) { y }".
    "lines_dropped_too_long_word": 1,
    "lines_dropped_no_endmark": 5,
    "lines_dropped_too_short": 1,
    "lines_dropped_javascript": 1,
    "lines_dropped_policy": 1,
    # SECOND's Gamma line, then both lines of the repeated FIRST.
    "lines_dropped_duplicate": 3,
}


def test_every_rule_exact_output_and_counts():
    cleaner = C4Cleaner(CleaningRules(bad_words=BAD_WORDS, **OFF))
    outputs = [cleaner.clean(p) for p in PAGES]
    assert [o for o in outputs if o is not None] == EXPECTED
    assert cleaner.counts == EXPECTED_COUNTS
    dropped = sum(v for k, v in cleaner.counts.items() if k.startswith("pages_dropped_"))
    assert cleaner.counts["pages_in"] == cleaner.counts["pages_out"] + dropped


def test_same_lines_as_tfds_clean_page(monkeypatch):
    """The code that built C4, on the same pages; its NLTK sentence model needs a download, so both
    count sentences with t5pod's splitter."""
    c4_utils = pytest.importorskip("tensorflow_datasets.text.c4_utils")
    monkeypatch.setattr(c4_utils, "_get_sentences", c4_cleaning.split_sentences)
    clean_page = c4_utils.get_clean_page_fn()
    pages = PAGES + [ENGLISH, GERMAN, "Five words in this line.\nFour words here now.\nA B C D E.\nOne. Two. Three."]
    for page in pages:
        theirs = [p.text for p in clean_page(c4_utils.PageFeatures(text=page), counter_inc_fn=lambda *a: None)]
        lines = C4Cleaner(CleaningRules(**OFF)).clean_page(page)
        assert theirs == ([] if lines is None else ["\n".join(lines).strip()]), page[:40]


@pytest.mark.parametrize(
    "rule, below, at",
    [
        ("words per line", "Four words are here.", "Five words are here now."),
        ("word length", "Word " + "y" * 1001 + " is too long here.", "Word " + "y" * 1000 + " is long enough here."),
    ],
)
def test_line_rule_boundaries(rule, below, at):
    rules = CleaningRules(dedup=False, **OFF)
    page = lambda line: f"{line}\n{FILLER}"  # noqa: E731
    assert C4Cleaner(rules).clean(page(below)) == FILLER
    assert C4Cleaner(rules).clean(page(at)) == f"{at}\n{FILLER}"


def test_sentence_boundary_and_thresholds_checked():
    rules = CleaningRules(dedup=False, **OFF)
    assert C4Cleaner(rules).clean(TWO_SENTENCES) is None
    assert C4Cleaner(rules).clean(THREE_SENTENCES) == THREE_SENTENCES
    for bad in (
        dict(min_words_per_line=0),
        dict(min_num_sentences=-1),
        dict(english_min_probability=1.5),
        dict(language="klingon"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CleaningRules(**bad)


def test_line_dedup_across_and_within_pages():
    cleaner = C4Cleaner(CleaningRules(**OFF))
    assert cleaner.clean(FIRST) == FIRST
    assert cleaner.clean(SECOND) == SECOND_CLEAN
    assert cleaner.clean(FIRST) is None  # every line a repeat
    # FIRST's first line goes; one sentence is left, under 3: the page goes too.
    assert (
        cleaner.clean("Alpha one is here and now. Beta two is here and now.\nA brand new line is here, finally.")
        is None
    )
    within = (
        "Some line is right here, once. And it is here.\nAnother line is also right here.\n"
        "some line is right here, once. And it is here."
    )
    assert cleaner.clean(within) == within.rsplit("\n", 1)[0]  # the repeat goes; 3 sentences are left
    assert cleaner.counts["lines_dropped_duplicate"] == 1 + 2 + 1 + 1
    assert cleaner.counts["pages_dropped_duplicate"] == 2
    no_dedup = list(c4_cleaning.clean_pages([FIRST, FIRST], CleaningRules(dedup=False, **OFF)))
    assert no_dedup == [FIRST, FIRST]


def test_language_filters():
    cleaner = C4Cleaner(CleaningRules())  # langdetect, >= 0.99 English: C4's filter
    assert [cleaner.clean(p) for p in (GERMAN, ENGLISH)] == [None, ENGLISH]
    assert cleaner.counts["pages_dropped_language"] == 1
    fast = C4Cleaner(CleaningRules(language="stopwords"))
    assert [fast.clean(p) for p in (GERMAN, ENGLISH)] == [None, ENGLISH]
    assert C4Cleaner(CleaningRules(**OFF)).clean(GERMAN) == GERMAN
    rules = CleaningRules(language_filter=lambda text: "river" not in text)
    assert list(c4_cleaning.clean_pages([ENGLISH, FIRST], rules)) == [FIRST]


def test_bad_words_flanked_by_non_word_characters():
    cleaner = C4Cleaner(CleaningRules(bad_words=BAD_WORDS, dedup=False, **OFF))
    assert cleaner.clean(BAD) is None and cleaner.clean(NOT_BAD) == NOT_BAD
    assert cleaner.clean("Darn, it rained all day here.\n" + FILLER) is None
    assert cleaner.counts["pages_dropped_bad_words"] == 2


def test_sentence_splitter():
    assert c4_cleaning.split_sentences('He said "Go." Then left! Why? Pi is 3.14 now.') == [
        'He said "Go."',
        "Then left!",
        "Why?",
        "Pi is 3.14 now.",
    ]


def test_load_bad_words(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# comment\nDarn\n\n  heck no \n", encoding="utf-8")
    assert c4_cleaning.load_bad_words(str(path)) == frozenset({"darn", "heck no"})
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        c4_cleaning.load_bad_words(str(tmp_path / "missing.txt"))


def test_preprocessor_on_tf_dataset():
    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices({"text": PAGES, "id": list(range(len(PAGES)))})
    rules = CleaningRules(bad_words=BAD_WORDS, **OFF)
    cleaned = c4_cleaning.c4_clean_preprocessor(dataset, rules)
    kept = [0, 2, 4, 6, 8, 9, 10]
    expected = [(t.encode(), i) for t, i in zip(EXPECTED, kept)]
    for _ in range(2):  # Each iteration starts with an empty dedup state.
        assert [(ex["text"], ex["id"]) for ex in cleaned.as_numpy_iterator()] == expected
    repeated = [ex["id"] for ex in cleaned.repeat(2).as_numpy_iterator()]
    assert repeated == kept * 2
    assert cleaned.element_spec["text"].shape == []


@pytest.mark.e2e
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
        [
            sys.executable,
            "scripts/c4_clean.py",
            f"--input={tmp_path}/part-*.jsonl.gz",
            f"--output={output}",
            f"--bad_words={tmp_path}/bad.txt",
            "--language=off",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == EXPECTED_COUNTS
    lines = output.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": t} for t in EXPECTED]
    assert sorted(p.name for p in output.parent.iterdir()) == ["clean.jsonl"]  # No temp file left.


@pytest.mark.e2e
def test_script_plain_text_flags_and_missing_bad_words(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import c4_clean
    finally:
        sys.path.remove(str(REPO / "scripts"))
    one_line = lambda page: page.replace("\n", " ")  # noqa: E731 - plain text: a document per line
    (tmp_path / "docs.txt").write_text("\n".join(map(one_line, [FIRST, GERMAN, FIRST])) + "\n", encoding="utf-8")
    output = tmp_path / "clean.jsonl"
    assert c4_clean.main([f"--input={tmp_path}/*.txt", f"--output={output}", "--no_dedup", "--language=stopwords"]) == 0
    texts = [json.loads(line)["text"] for line in output.read_text(encoding="utf-8").splitlines()]
    assert texts == [one_line(FIRST)] * 2

    output.unlink()
    result = subprocess.run(
        [
            sys.executable,
            "scripts/c4_clean.py",
            f"--input={tmp_path}/*.txt",
            f"--output={output}",
            f"--bad_words={tmp_path}/nope.txt",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nope.txt" in result.stderr and "does not exist" in result.stderr
    assert not output.exists()


def test_beam_pipeline_keeps_what_the_streaming_cleaner_keeps(tmp_path, capsys):
    """The Beam pipeline (DirectRunner) on the same pages. Beam keeps a repeated line on the page
    whose url hashes lowest, the stream on its first page: the first FIRST gets the lowest hash."""
    import hashlib

    def md5(url):
        return hashlib.md5(url.encode()).hexdigest()

    urls = [f"https://example.com/{i}" for i in range(len(PAGES))]
    urls[9] = next(
        u for u in (f"https://example.com/first-{k}" for k in range(1000)) if md5(u) < min(md5(urls[10]), md5(urls[11]))
    )
    (tmp_path / "crawl.jsonl").write_text(
        "".join(json.dumps({"url": u, "text": p}) + "\n" for u, p in zip(urls, PAGES))
    )
    (tmp_path / "bad.txt").write_text("heck no\ndarn\n")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import c4_clean
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert (
        c4_clean.main(
            [
                f"--input={tmp_path}/crawl.jsonl",
                f"--output={tmp_path}/out/clean",
                "--beam",
                f"--bad_words={tmp_path}/bad.txt",
                "--language=off",
                "--direct_num_workers=1",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == EXPECTED_COUNTS
    outputs = sorted((tmp_path / "out").glob("clean-*.jsonl"))
    texts = [json.loads(line)["text"] for path in outputs for line in path.read_text().splitlines()]
    assert sorted(texts) == sorted(EXPECTED)
