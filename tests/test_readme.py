"""Every command in README.md and the docs/ pages runs, in a fast variant: placeholders point at
small fixtures and training commands get a tiny model, the demo task and two steps (a fine-tuning
from a converted checkpoint keeps its model and checkpoint). The pages link to each other soundly."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import hf_reference, run_cli
from conftest import BENCHMARK_ROWS, REPO
from t5pod.data import demo_corpus

FAST_TRAIN = [
    "--gin_file=models/tiny.gin",
    "--gin.MIXTURE_OR_TASK_NAME='demo_span_corruption'",
    "--gin.t5pod.T5Config.vocab_size=2176",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=4",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    "--gin.LOG_PERIOD=1",
    "--gin.EVAL_PERIOD=0",
    "--gin.INITIAL_CHECKPOINT_PATH=None",
    "--gin.VOCABULARY_PATH=%s",
]


DOCS = REPO / "docs"


def pages() -> list:
    """README.md and the docs/ pages."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def readme_commands() -> list[str]:
    """The commands of every `sh` block of the README and the docs pages, each once."""
    commands = []
    for page in pages():
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith(("python -m t5pod", "make ")) and line not in commands:
                    commands.append(line)
    return commands


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 12_000
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)\)", readme))
    assert linked == {page.name for page in DOCS.glob("*.md")} - {"README.md"}


def test_links_between_pages_resolve():
    broken = []
    for page in [*pages(), REPO / "study" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_readme_has_commands():
    commands = readme_commands()
    assert any(c.startswith("make pretrain") for c in commands) and any(c.startswith("make finetune") for c in commands)
    for command in (
        "train",
        "data",
        "infer",
        "eval",
        "probe",
        "convert-hf",
        "train-vocab",
        "plan",
        "cache-tasks",
        "export-hf",
    ):
        assert any(c.startswith(f"python -m t5pod {command} ") for c in commands), command


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, pretrained_demo_run):
    import json
    import shutil

    root = tmp_path_factory.mktemp("readme")
    # A converted reference model that uses the demo vocabulary.
    hf_reference.make_checkpoint("t5_1_0", str(root / "t5-small"), vocab_size=2176)
    shutil.copy(demo_corpus.vocabulary_path(), root / "t5-small" / "spiece.model")
    assert run_cli("convert-hf", str(root / "t5-small"), str(root / "converted")).returncode == 0
    books = root / "books"
    books.mkdir()
    (books / "a.txt").write_text(open(demo_corpus.corpus_path(), encoding="utf-8").read()[:200_000])
    (root / "wmt").mkdir()
    (root / "wmt" / "newstest2013.en").write_text("A dog runs.\nTwo cats sleep.\n")
    (root / "wmt" / "newstest2013.de").write_text("Ein Hund rennt.\nZwei Katzen schlafen.\n")
    (root / "inputs.jsonl").write_text(
        "".join(
            json.dumps({"inputs": t, "targets": "yes"}) + "\n" for t in ["The default value is None.", "Return a list."]
        )
    )
    return {
        "convert-hf path/to/t5-small path/to/t5-small-t5pod": f"convert-hf {root / 't5-small'} {root / 'again'}",
        "path/to/t5-small-t5pod": str(root / "converted"),
        "path/to/t5-small": str(root / "t5-small"),
        "/data/books/*.txt": str(books / "*.txt"),
        "/data/wmt": str(root / "wmt"),
        "/data/vocab/spiece.model": str(root / "vocab" / "spiece.model"),
        # The full GLUE files when ../shared has them, else the rows committed for tests.
        "/data/glue": str(
            REPO.parent / "shared" / "data" / "glue"
            if (REPO.parent / "shared" / "data" / "glue").is_dir()
            else BENCHMARK_ROWS / "glue"
        ),
        "/tmp/run": str(root / "run"),
        "/tmp/t5pod-cache": str(root / "cache"),
        "/tmp/t5-small-hf": str(root / "exported"),
        "--vocab_size=32000": "--vocab_size=500",
        "--input_file=inputs.jsonl": f"--input_file={root / 'inputs.jsonl'}",
        "--output_file=": f"--output_file={root}/",
        "@pretrained": str(pretrained_demo_run),
        "@root": str(root),
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
@pytest.mark.e2e
def test_readme_command_runs(command, fixtures):
    if command.startswith("make test") or command.startswith("make install"):
        # `make test` is this suite (running it here would recurse); `make install` is what every
        # make target, and so this suite's own start, runs first.
        pytest.skip("the test suite itself / the install that runs it")
    for placeholder, value in fixtures.items():
        if not placeholder.startswith("@"):
            command = command.replace(placeholder, value)
    argv = shlex.split(command)
    vocabulary = demo_corpus.vocabulary_path()
    if argv[:2] == ["make", "pretrain"]:
        fast = [f.replace("%s", "'demo'") for f in FAST_TRAIN[1:]] + [f"--gin.MODEL_DIR='{fixtures['@root']}/pretrain'"]
        argv += ["PRETRAIN_ARGS=" + " ".join(shlex.quote(f) for f in fast)]
    elif argv[:2] == ["make", "finetune"]:
        fast = [
            "--gin.TRAIN_STEPS=2",
            "--gin.BATCH_SIZE=4",
            "--gin.EVAL_PERIOD=0",
            f"--gin.MODEL_DIR='{fixtures['@root']}/finetune'",
            "--gin.CHECKPOINT_PERIOD=1",
        ]
        # The committed SST-2 rows: evaluating each checkpoint on the whole dev set adds a minute.
        argv += [
            f"PRETRAINED={fixtures['@pretrained']}",
            f"GLUE_DIR={BENCHMARK_ROWS / 'glue'}",
            "FINETUNE_ARGS=" + " ".join(shlex.quote(f) for f in fast),
        ]
    elif argv[:4] == ["python", "-m", "t5pod", "train"] and any("INITIAL_CHECKPOINT_PATH" in a for a in argv):
        # Fine-tuning a converted checkpoint: its own model and vocabulary, two steps of short rows.
        argv += [
            "--gin.TRAIN_STEPS=2",
            "--gin.BATCH_SIZE=4",
            "--gin.EVAL_PERIOD=0",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        ]
    elif argv[:4] == ["python", "-m", "t5pod", "train"]:
        argv += [f.replace("%s", repr(vocabulary)) for f in FAST_TRAIN]
    elif argv[:4] == ["python", "-m", "t5pod", "plan"]:
        argv += [
            "--gin_file=models/tiny.gin",
            "--num_devices=8",
            "--gin.MESH_SHAPE=(4, 2)",
            "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
        ]
    elif argv[:2] == ["make", "bench"]:
        # Measured, not skipped: test_bench_quick_run runs bench/run.py end to end in its quick mode,
        # and test_the_accelerator_path_runs_on_cpu its GPU/TPU path.
        pytest.skip("the benchmark takes minutes; tests/test_performance_tools.py covers its parts")
    elif argv[:4] == ["python", "-m", "t5pod", "probe"]:
        # The committed SST-2 rows: encoding all 67k training sentences with T5 small takes a minute.
        argv = [f"--gin.GLUE_DIR='{BENCHMARK_ROWS / 'glue'}'" if a.startswith("--gin.GLUE_DIR=") else a for a in argv]
        argv += ["--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]
    elif argv[:4] in (["python", "-m", "t5pod", "infer"], ["python", "-m", "t5pod", "eval"]):
        argv += ["--gin.MAX_DECODE_LENGTH=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}"]
    elif argv[:4] == ["python", "-m", "t5pod", "cache-tasks"]:
        argv += [f"--gin.VOCABULARY_PATH={vocabulary!r}"]
    elif argv[:4] == ["python", "-m", "t5pod", "data"]:
        argv += [
            "--num_examples=1",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
            f"--gin.VOCABULARY_PATH={vocabulary!r}",
        ]
        argv = [a if not a.startswith("--stats=") else "--stats=20" for a in argv]
    if argv[0] == "python":
        argv[0] = sys.executable
    env = dict(os.environ, XLA_FLAGS="")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def study_rows() -> list[tuple[str, str]]:
    """(paper row, ROW_FLAGS cell) of the table of the paper's §3 study (docs/paper-study.md)."""
    section = (DOCS / "paper-study.md").read_text().split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ")]
    return [(row.strip(), flags.strip()) for row, flags in rows if row.strip() != "paper table, row"]


def test_study_table_covers_the_paper_tables():
    tables = {row.split(",")[0].split("–")[0] for row, _ in study_rows()}
    assert {"2", "3", "4", "5", "6", "7", "10", "11", "12"} <= tables


@pytest.mark.parametrize("row,flags", study_rows(), ids=[r for r, _ in study_rows()])
def test_study_table_flags_parse(row, flags):
    from t5pod import ginconf
    from t5pod.data import pipeline

    files, bindings = [], ["MODEL_DIR='/unused'"]
    for segment in re.findall(
        r"`([^`]*)`", flags.replace("L512", "`--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 512}\"`")
    ):
        if not segment.startswith("--"):
            continue  # an alternative value of the flag before it
        for flag in shlex.split(segment):
            if flag.startswith("--gin_file="):
                files.append(flag.split("=", 1)[1])
            elif flag.startswith("--gin."):
                bindings.append(flag[len("--gin.") :])
    base = ["tasks.gin", "runs/pretrain.gin"]
    if "fine-tun" in flags:
        base = ["tasks.gin", "runs/finetune.gin"]
        bindings.append("INITIAL_CHECKPOINT_PATH='/unused'")
    models = [f for f in files if f.startswith("models/")]
    ginconf.parse([*base, "models/t5_1_0/base.gin", *files], bindings)
    model, train = ginconf.model_config(), ginconf.train_config()
    if models:
        assert model.architecture != "encoder_decoder" or model.num_layers == 6
    from t5pod import tasks

    try:
        ginconf.register_tasks()
        pipeline.get_task_or_mixture(train.data.mixture_or_task_name)  # the task or mixture the row names exists
    finally:
        tasks.register_all()  # back to the defaults for the tests that follow
