"""GLUE / SuperGLUE file readers and text-to-text formats, checked on real rows and edge cases.

Expected strings are written out by hand from the raw file lines (see the comments), not computed
by the code under test.
"""

import pytest

from t5pod.data import benchmarks
from t5pod.data import glue_files as gf
from t5pod.data import glue_formats as fm


def _one(task, row):
    out = fm.format_example(task, row)
    assert len(out) == 1
    return out[0]


def _glue_row(data, config, split, n=0):
    rows = list(gf.read_glue(data / "glue", config, split))
    return rows[n]


def _sg_rows(data, config, split):
    return list(gf.read_super_glue(data / "superglue", config, split))


# ---------------------------------------------------------------- GLUE, real rows

GLUE_CASES = [
    # CoLA/dev.tsv line 1: gj04<TAB>1<TAB><TAB>The sailors rode the breeze clear of the rocks.
    ("cola", "validation", 0, "cola sentence: The sailors rode the breeze clear of the rocks.", "acceptable"),
    # CoLA/dev.tsv line 5: cj99<TAB>0<TAB>*<TAB>As you eat the most, you want the least.
    ("cola", "validation", 4, "cola sentence: As you eat the most, you want the least.", "unacceptable"),
    # SST-2/dev.tsv line 2 (after the header); the sentence's trailing space is kept.
    ("sst2", "validation", 0, "sst2 sentence: it 's a charming and often affecting journey . ", "positive"),
    # MRPC/dev.tsv line 2 (BOM header before it).
    (
        "mrpc",
        "validation",
        0,
        "mrpc sentence1: He said the foodservice pie business doesn 't fit the company 's long-term "
        'growth strategy . sentence2: " The foodservice pie business does not fit our long-term '
        "growth strategy .",
        "equivalent",
    ),
    # STS-B/dev.tsv line 3: score 4.750 -> 23.75 -> 24 -> 4.8
    (
        "stsb",
        "validation",
        1,
        "stsb sentence1: A young child is riding a horse. sentence2: A child is riding a horse.",
        "4.8",
    ),
    # QNLI/dev.tsv line 2
    (
        "qnli",
        "validation",
        0,
        "qnli question: What came into force after the new constitution was herald? sentence: As of "
        "that day, the new constitution heralding the Second Republic came into force.",
        "entailment",
    ),
    # RTE/dev.tsv line 2
    (
        "rte",
        "validation",
        0,
        "rte sentence1: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer "
        "at age 44, according to the Christopher Reeve Foundation. sentence2: Christopher Reeve had "
        "an accident.",
        "not_entailment",
    ),
    # WNLI/dev.tsv line 2: label 0 = not_entailment
    (
        "wnli",
        "validation",
        0,
        "wnli sentence1: The drain is clogged with hair. It has to be cleaned. sentence2: The hair has to be cleaned.",
        "not_entailment",
    ),
    # RTE/train.tsv line 2
    (
        "rte",
        "train",
        0,
        "rte sentence1: No Weapons of Mass Destruction Found in Iraq Yet. sentence2: Weapons of Mass "
        "Destruction Found in Iraq.",
        "not_entailment",
    ),
]


@pytest.mark.parametrize("config,split,n,inputs,targets", GLUE_CASES)
def test_glue_real_rows(benchmark_rows, config, split, n, inputs, targets):
    ex = _one(f"glue_{config}_v002", _glue_row(benchmark_rows, config, split, n))
    assert ex["inputs"] == inputs
    assert ex["targets"] == targets
    assert ex["idx"] == n


def test_glue_row_shapes(benchmark_rows):
    row = _glue_row(benchmark_rows, "mrpc", "train")
    assert row == {
        "sentence1": 'Amrozi accused his brother , whom he called " the witness " , of '
        "deliberately distorting his evidence .",
        "sentence2": 'Referring to him as only " the witness " , Amrozi accused his brother of '
        "deliberately distorting his evidence .",
        "label": 1,
        "idx": 0,
    }
    stsb = _glue_row(benchmark_rows, "stsb", "train", 1)  # score 3.800, stored as float32
    assert stsb["label"] == benchmarks.float32(3.8) and stsb["label"] != 3.8
    assert _glue_row(benchmark_rows, "qnli", "validation", 1)["label"] == 1  # not_entailment


@pytest.mark.parametrize(
    "config,split,count",
    [
        ("cola", "train", 8551),
        ("cola", "validation", 1043),
        ("sst2", "validation", 872),
        ("mrpc", "train", 3668),
        ("mrpc", "validation", 408),
        ("stsb", "validation", 1500),
        ("qnli", "validation", 5463),
        ("rte", "train", 2490),
        ("rte", "validation", 277),
        ("wnli", "train", 635),
        ("wnli", "validation", 71),
    ],
)
def test_glue_row_counts(shared_data, config, split, count):
    rows = list(gf.read_glue(shared_data / "glue", config, split))
    assert len(rows) == count
    assert [r["idx"] for r in rows] == list(range(count))


# ----------------------------------------------------------- SuperGLUE, real rows


def test_boolq_real_row(benchmark_rows):
    # BoolQ/val.jsonl line 2645: idx 2644, label true
    row = [r for r in _sg_rows(benchmark_rows, "boolq", "validation") if r["idx"] == 2644][0]
    ex = _one("super_glue_boolq_v102", row)
    assert ex["inputs"] == (
        "boolq passage: The Punisher (season 2) -- The season is set for "
        "release in 2019. question: are they going to make a punisher season 2"
    )
    assert ex["targets"] == "True"
    assert ex["idx"] == 2644


def test_cb_copa_rte_wic_real_rows(benchmark_rows):
    cb = _one("super_glue_cb_v102", _sg_rows(benchmark_rows, "cb", "validation")[0])
    assert cb["inputs"] == (
        "cb hypothesis: Valence was helping premise: Valence the void-brain, Valence the virtuous "
        "valet. Why couldn't the figger choose his own portion of titanic anatomy to shaft? Did he "
        "think he was helping?"
    )
    assert cb["targets"] == "contradiction"

    copa = _one("super_glue_copa_v102", _sg_rows(benchmark_rows, "copa", "validation")[0])
    assert copa["inputs"] == (
        "copa choice1: The toilet filled with water. choice2: Water flowed from the spout. "
        "premise: The man turned on the faucet. question: effect"
    )
    assert copa["targets"] == "choice2"

    rte = _one("super_glue_rte_v102", _sg_rows(benchmark_rows, "rte", "validation")[0])
    assert rte["inputs"] == (
        "rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of the "
        "actor Christopher Reeve, has died of lung cancer at age 44, according to the Christopher "
        "Reeve Foundation."
    )
    assert rte["targets"] == "not_entailment"

    wic = _one("super_glue_wic_v102", _sg_rows(benchmark_rows, "wic", "validation")[0])
    assert wic["inputs"] == (
        "wic sentence1: An emerging professional class. sentence2: Apologizing for losing your "
        "temper, even though you were badly provoked, showed real class. word: class"
    )
    assert wic["targets"] == "False"

    cb_train = _one("super_glue_cb_v102", _sg_rows(benchmark_rows, "cb", "train")[0])
    assert cb_train["inputs"] == (
        "cb hypothesis: the language was peeled down premise: It was a complex language. Not "
        "written down but handed down. One might say it was peeled down."
    )
    assert cb_train["targets"] == "entailment"


def test_multirc_real_row(benchmark_rows):
    rows = _sg_rows(benchmark_rows, "multirc", "validation")
    # MultiRC/val.jsonl line 37: paragraph 36, question 422, answer 2134 (label 1)
    row = [r for r in rows if r["idx"] == {"paragraph": 36, "question": 422, "answer": 2134}][0]
    assert row["answer"] == "Yes,she recovered" and row["label"] == 1
    ex = _one("super_glue_multirc_v102", row)
    assert ex["inputs"] == (
        "multirc question: Did Susan's sick friend recover? answer: Yes,she recovered paragraph: "
        "Susan wanted to have a birthday party. She called all of her friends. She has five "
        "friends. Her mom said that Susan can invite them all to the party. Her first friend could "
        "not go to the party because she was sick. Her second friend was going out of town. Her "
        "third friend was not so sure if her parents would let her. The fourth friend said maybe. "
        "The fifth friend could go to the party for sure. Susan was a little sad. On the day of "
        "the party, all five friends showed up. Each friend had a present for Susan. Susan was "
        "happy and sent each friend a thank you card the next week. "
    )
    assert ex["targets"] == "True"
    assert ex["idx"] == "36-422-2134"
    assert ex["group"] == "36-422"


def test_wsc_real_rows(benchmark_rows):
    rows = _sg_rows(benchmark_rows, "wsc.fixed", "train")
    # WSC/train.jsonl line 1: span2 "He" at word 13, label false
    first = rows[0]
    assert fm.format_example(benchmarks.WSC_TRAIN, first) == []
    ex = _one(benchmarks.WSC_EVAL, first)
    assert ex["inputs"] == (
        "wsc: Mark told Pete many lies about himself, which Pete included in "
        "his book. *He* should have been more skeptical."
    )
    assert ex["targets"] == "Mark"
    assert ex["label"] == 0
    # idx 16: span1 "The demonstrators" is fixed to "the demonstrators" by wsc.fixed
    row16 = [r for r in rows if r["idx"] == 16][0]
    assert row16["span1_text"] == "the demonstrators"
    assert _one(benchmarks.WSC_TRAIN, row16) == {
        "inputs": "wsc: The city councilmen refused the demonstrators a permit because *they* advocated violence.",
        "targets": "the demonstrators",
        "idx": 16,
        "label": 1,
    }
    # idx 137: span2_index points at 'him,"'; t5 hard-codes this text
    row137 = [r for r in rows if r["idx"] == 137][0]
    assert _one(benchmarks.WSC_EVAL, row137)["inputs"] == (
        "wsc: The boy continued to whip the pony , and eventually the pony threw him over. John "
        'laughed out quite loud. "Good for *him* ," he said.'
    )


def test_wsc_simple_train_keeps_the_true_rows(shared_data):
    rows = _sg_rows(shared_data, "wsc.fixed", "train")
    # 259 of the 554 train rows are label True (the mixture weight of wsc_simple_train)
    assert sum(len(fm.format_example(benchmarks.WSC_TRAIN, r)) for r in rows) == 259


def test_record_real_rows(benchmark_rows):
    path = benchmark_rows / "superglue" / "ReCoRD" / "fewglue_dev32.jsonl"
    rows = list(gf.read_super_glue_file(path, "record"))
    assert len(rows) == 12  # the first 12 lines of FewGLUE's ReCoRD dev32, one query each
    # Line 1: query 19617 has answers Benazir Bhutto (twice) and Bhutto -> two examples.
    first = fm.format_example("super_glue_record_v102", rows[0])
    assert [e["targets"] for e in first] == ["Benazir Bhutto", "Bhutto"]
    assert all(e["answers"] == ["Benazir Bhutto", "Bhutto"] for e in first)
    assert all(e["group"] == "12705-19617" for e in first)
    assert first[0]["inputs"] == first[1]["inputs"]
    # Line 11 (passage 9511, query 14718): entities sliced by inclusive offsets, sorted, distinct.
    row = rows[10]
    assert row["idx"] == {"passage": 9511, "query": 14718}
    assert row["entities"] == [
        "Anna Schmiedlova",
        "French Open",
        "Garbine Muguruza",
        "Grand Slam",
        "Li Na",
        "Open",
        "Roland Garros",
        "Serena",
        "Serena Williams",
        "Spanish",
        "Venezuelan",
        "Venus",
        "Williams",
    ]
    ex = _one("super_glue_record_v102", row)
    assert ex["inputs"] == (
        "record query: Flying start: @placeholder seemed to be cruising towards victory when she "
        "took the first set with minimal fuss entities: Anna Schmiedlova, French Open, Garbine "
        "Muguruza, Grand Slam, Li Na, Open, Roland Garros, Serena, Serena Williams, Spanish, "
        "Venezuelan, Venus, Williams passage: Serena Williams was given the worst beating of her "
        "Grand Slam career in a sensational upset at the French Open today when she was beaten "
        "6-2, 6-2 by 20 year-old Garbine Muguruza. The six-feet tall world No 35, of Spanish and "
        "Venezuelan heritage, took advantage of windy and cold conditions to blow away the top "
        "seed in the second round and keep the shocks coming at Roland Garros. The women\u2019s "
        "draw has been blown wide open as, for the first time in the Open era, the top two seeds "
        "are out before the third round following Li Na\u2019s early demise. No 1 seed Serena "
        "defeated 6-2, 6-2 by Garbine Muguruza. Venus beaten 2-6, 6-3, 6-4 by Anna Schmiedlova. "
        "Williams sisters were due to meet in third round at Roland Garros"
    )
    assert ex["targets"] == "Venus"
    assert ex["answers"] == ["Venus"]
    assert ex["idx"] == ex["group"] == "9511-14718"


@pytest.mark.parametrize(
    "config,split,count",
    [
        ("boolq", "validation", 3270),
        ("cb", "train", 250),
        ("cb", "validation", 56),
        ("copa", "validation", 100),
        ("rte", "train", 2490),
        ("rte", "validation", 277),
        ("wic", "validation", 638),
        ("wsc", "train", 554),
        ("wsc", "validation", 104),
        ("multirc", "validation", 4848),
    ],
)  # MultiRC: answer options
def test_super_glue_row_counts(shared_data, config, split, count):
    assert len(_sg_rows(shared_data, config, split)) == count


# ------------------------------------------------------------------ rules, synthetic


@pytest.mark.parametrize(
    "label,target",
    [
        (1.66, "1.6"),
        (2.7, "2.8"),
        (0.5, "0.4"),
        (0.7, "0.8"),
        (3.3, "3.2"),
        (4.75, "4.8"),
        (3.8, "3.8"),
        (0.1, "0.0"),
        (5.0, "5.0"),
        (0.0, "0.0"),
        (-1.0, "-1.0"),
    ],
)
def test_stsb_rounding(label, target):
    assert fm.stsb_target(label) == target
    row = {"sentence1": "a", "sentence2": "b", "label": benchmarks.float32(label), "idx": 3}
    assert _one("glue_stsb_v002", row) == {"inputs": "stsb sentence1: a sentence2: b", "targets": target, "idx": 3}


def test_unlabeled_rows_give_unk():
    row = {"premise": "P", "hypothesis": "H", "label": -1, "idx": 7}
    for task in ("glue_mnli_v002", "glue_mnli_matched_v002", "glue_ax_v002"):
        assert _one(task, row) == {"inputs": "mnli hypothesis: H premise: P", "targets": "<unk>", "idx": 7}
    assert _one("super_glue_cb_v102", row)["targets"] == "<unk>"
    assert _one("glue_cola_v002", {"sentence": "S", "label": -1, "idx": 0})["targets"] == "<unk>"
    axb = {"sentence1": "S1", "sentence2": "S2", "label": -1, "idx": 0}
    assert _one("super_glue_axb_v102", axb)["inputs"] == "rte hypothesis: S2 premise: S1"
    assert _one("super_glue_axg_v102", row)["inputs"] == "rte hypothesis: H premise: P"


def test_multirc_tag_cleanup():
    row = {
        "paragraph": "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>He won.",
        "question": "Who?",
        "answer": "<b>Tom</b>",
        "label": 0,
        "idx": {"paragraph": 1, "question": 2, "answer": 3},
    }
    assert _one("super_glue_multirc_v102", row) == {
        "inputs": "multirc question: Who? answer: Tom paragraph: Sent 1: Tom ran. Sent 2: He won.",
        "targets": "False",
        "idx": "1-2-3",
        "group": "1-2",
    }


def test_record_cleanup_and_one_example_per_answer():
    row = {
        "passage": 'A cat sat.\n@highlight\nIt purred\n@highlight\n"Nice"\n@highlight\nEnd',
        "query": "@placeholder sat",
        "entities": ["A", "cat"],
        "answers": ["A", "cat"],
        "idx": {"passage": 4, "query": 5},
    }
    out = fm.format_example("super_glue_record_v102", row)
    inputs = 'record query: @placeholder sat entities: A, cat passage: A cat sat. It purred. "Nice" End'
    assert out == [
        {"inputs": inputs, "targets": "A", "idx": "4-5", "group": "4-5", "answers": ["A", "cat"]},
        {"inputs": inputs, "targets": "cat", "idx": "4-5", "group": "4-5", "answers": ["A", "cat"]},
    ]
    no_answers = fm.format_example("super_glue_record_v102", {**row, "answers": []})
    assert [(e["targets"], e["answers"]) for e in no_answers] == [("<unk>", [])]


def test_wsc_spec_example():
    row = {
        "text": "Mitchell asked Tom if he could lend some money.",
        "span1_index": 2,
        "span2_index": 4,
        "span1_text": "Tom",
        "span2_text": "he",
        "label": 1,
        "idx": 0,
    }
    for task in (benchmarks.WSC_TRAIN, benchmarks.WSC_EVAL):
        ex = _one(task, row)
        assert ex["inputs"] == "wsc: Mitchell asked Tom if *he* could lend some money."
        assert ex["targets"] == "Tom"
    assert fm.format_example(benchmarks.WSC_TRAIN, {**row, "label": 0}) == []
    with pytest.raises(ValueError, match="span2"):
        fm.format_example(benchmarks.WSC_EVAL, {**row, "span2_index": 5})


def test_dpr():
    row = {
        "sentence": "Bob asked Tom if he can lend some money.",
        "pronoun": "he",
        "candidates": ["Bob", "Tom"],
        "label": 1,
    }
    assert _one(benchmarks.DPR, row) == {
        "inputs": "wsc: Bob asked Tom if *he* can lend some money.",
        "targets": "Tom",
        "idx": -1,
    }
    row = {
        "sentence": "He said he would, and he did.",
        "pronoun": "he",
        "candidates": ["A", "B"],
        "label": 0,
    }  # first " he" followed by space/./, only
    assert _one(benchmarks.DPR, row)["inputs"] == "wsc: He said *he* would, and he did."


def test_tfds_numpy_rows_are_accepted():
    row = {"sentence": b"caf\xc3\xa9", "label": 1, "idx": 2}
    assert _one("glue_sst2_v002", row)["inputs"] == "sst2 sentence: caf\u00e9"


def test_registry_tables():
    assert len(benchmarks.TASK_NAMES) == 24 and len(set(benchmarks.TASK_NAMES)) == 24
    assert set(benchmarks.TFDS_NAMES) == set(benchmarks.TASK_NAMES)
    assert benchmarks.TFDS_NAMES["glue_ax_v002"] == ("glue/ax:1.0.0", "glue", {"test": "test"})
    assert benchmarks.TFDS_NAMES["super_glue_wsc_v102_simple_eval"] == (
        "super_glue/wsc.fixed:1.0.2",
        "super_glue",
        {"validation": "validation", "test": "test"},
    )
    assert benchmarks.TFDS_NAMES["dpr_v001_simple"][:2] == ("definite_pronoun_resolution:1.1.0", None)
    assert list(benchmarks.TFDS_NAMES["glue_mnli_v002"][2]) == [
        "train",
        "validation_matched",
        "validation_mismatched",
        "test_matched",
        "test_mismatched",
    ]
    assert benchmarks.reader_config("super_glue_wsc_v102_simple_train") == "wsc.fixed"
    assert benchmarks.LABEL_CLASSES["glue_wnli_v002"] == ("not_entailment", "entailment")
    assert benchmarks.LABEL_CLASSES["super_glue_cb_v102"] == ("entailment", "contradiction", "neutral")
    assert "glue_stsb_v002" not in benchmarks.LABEL_CLASSES
    with pytest.raises(ValueError, match="unknown task"):
        fm.format_example("glue_nope_v002", {})


# --------------------------------------------------------------- readers, synthetic


def _write(path, text, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def test_glue_tsv_parsing(tmp_path):
    _write(tmp_path / "MRPC" / "test.tsv", 'index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tA " b\tC\n', bom=True)
    assert list(gf.read_glue(tmp_path, "mrpc", "test")) == [
        {"sentence1": 'A " b', "sentence2": "C", "label": -1, "idx": 0}
    ]
    _write(tmp_path / "CoLA" / "test.tsv", "index\tsentence\n0\tIt rains.\n")
    assert list(gf.read_glue(tmp_path, "cola", "test")) == [{"sentence": "It rains.", "label": -1, "idx": 0}]
    # A row with a missing column or empty label is dropped; idx keeps counting (TFDS).
    _write(
        tmp_path / "QQP" / "train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "0\t1\t2\tWhy?\tHow?\t1\n1\t3\t4\tbroken\n2\t5\t6\tA?\tB?\t\n3\t7\t8\tC?\tD?\t0\n",
    )
    assert [(r["idx"], r["label"]) for r in gf.read_glue(tmp_path, "qqp", "train")] == [(0, 1), (3, 0)]
    _write(tmp_path / "STS-B" / "test.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n")
    row = next(gf.read_glue(tmp_path, "stsb", "test"))
    assert row["label"] == -1.0
    assert _one("glue_stsb_v002", row)["targets"] == "-1.0"  # t5 rounds -1 like any label
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", "index\tsentence1\tsentence2\tgold_label\n0\tP\tH\tneutral\n")
    for config, split in (("mnli", "validation_mismatched"), ("mnli_mismatched", "validation")):
        assert list(gf.read_glue(tmp_path, config, split)) == [
            {"premise": "P", "hypothesis": "H", "label": 1, "idx": 0}
        ]
    _write(tmp_path / "diagnostic" / "diagnostic.tsv", "index\tsentence1\tsentence2\n0\tP\tH\n")
    assert list(gf.read_glue(tmp_path, "ax", "test")) == [{"premise": "P", "hypothesis": "H", "label": -1, "idx": 0}]


def test_super_glue_test_split_unlabeled(tmp_path):
    _write(tmp_path / "AX-b" / "AX-b.jsonl", '{"sentence1": "S1", "sentence2": "S2", "idx": 0, "logic": "Negation"}\n')
    assert list(gf.read_super_glue(tmp_path, "axb", "test")) == [
        {"sentence1": "S1", "sentence2": "S2", "label": -1, "idx": 0}
    ]
    _write(
        tmp_path / "COPA" / "train.jsonl",
        '{"premise": "P", "choice1": "a", "choice2": "b", "question": "cause", "label": 0, "idx": 5}\n',
    )
    assert next(gf.read_super_glue(tmp_path, "copa", "train"))["label"] == 0


def test_missing_file_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        gf.read_glue(tmp_path, "cola", "validation")
    assert str(tmp_path / "CoLA" / "dev.tsv") in str(err.value)
    assert "GLUE_DIR" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        gf.read_super_glue(tmp_path, "record", "validation")
    assert str(tmp_path / "ReCoRD" / "val.jsonl") in str(err.value)
    assert "SUPERGLUE_DIR" in str(err.value)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="GLUE_DIR"):
        gf.read_glue(None, "rte", "train")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    assert next(gf.read_glue(None, "rte", "train"))["label"] == 0


def test_unknown_config_or_split():
    with pytest.raises(ValueError, match="cola, sst2"):
        gf.read_glue("/nowhere", "colla", "train")
    with pytest.raises(ValueError, match="validation_matched"):
        gf.read_glue("/nowhere", "mnli", "validation")
    with pytest.raises(ValueError, match="test"):
        gf.read_super_glue("/nowhere", "axg", "train")
    with pytest.raises(ValueError, match="wsc.fixed"):
        gf.read_super_glue("/nowhere", "wsc_fixed", "train")
