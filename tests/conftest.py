"""Test setup: 8 fake CPU devices, set before JAX starts, so mesh tests run on one CPU."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Many tests (and the commands they start) compile the same tiny programs; JAX's persistent
# compilation cache lets every process after the first load them instead of compiling again.
# It changes no numbers: a cached executable is the one the compiler would produce.
import tempfile

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"t5pod-tests-jax-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


# A few rows of each GLUE / SuperGLUE file (the first ones, and the rows tests name), committed so
# that parsing and metric tests run on a clean clone; tests/data/benchmarks/README.md names the sources.
BENCHMARK_ROWS = REPO / "tests" / "data" / "benchmarks"


@pytest.fixture
def benchmark_rows():
    return BENCHMARK_ROWS


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        # Only full-file counts and long learning runs use it; parsing and metric tests read
        # BENCHMARK_ROWS, which every clone has.
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pretrained_demo_run(tmp_path_factory):
    """One `make pretrain`-style run (the demo model, 2 steps) shared by every test of the run.

    xdist workers share it too: the first builds it under a file lock, the others wait and reuse.
    """
    import fcntl
    import subprocess
    import sys

    # Common to all xdist workers of one pytest run (each has its own basetemp below the run's);
    # never shared with another run, whose code may differ.
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    run = root / "pretrained_demo_run"
    with open(root / "pretrained_demo_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "checkpoints").is_dir():
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "t5pod",
                    "train",
                    "--gin_file=demo.gin",
                    f"--gin.MODEL_DIR='{run}'",
                    "--gin.TRAIN_STEPS=2",
                    "--gin.BATCH_SIZE=4",
                    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
                    "--gin.LOG_PERIOD=1",
                    "--gin.EVAL_PERIOD=0",
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ, XLA_FLAGS=""),
                timeout=600,
                cwd=REPO,
            )
            assert done.returncode == 0, done.stderr[-3000:]
    return run


def pytest_collection_modifyitems(items):
    """The long end-to-end tests (marked slow) run first, so that the workers finish together on
    short ones instead of one worker running a long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
