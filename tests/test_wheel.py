"""The built wheel works on its own: its gin files and task registrations ship inside the package,
so a non-editable install runs from any directory."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO

SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "t5pod", "tasks", "gin")


def _run(command, cwd, timeout=600):
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=dict(os.environ, XLA_FLAGS="", PYTHONPATH=""),
    )
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_wheel_installs_into_a_fresh_venv_and_trains_from_another_directory(tmp_path):
    # Build from a copy of the sources, so the checkout gets no build/ folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("t5pod-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "t5pod/gin/runs/pretrain.gin" in names and "t5pod/gin/models/t5_1_1/architecture.gin" in names
    assert "t5pod/tasks/glue.py" in names
    assert not [n for n in names if n.startswith(("tasks/", "gin/"))]  # no top-level `tasks` package

    # A fresh venv whose dependencies come from this one's site-packages (a path line in a .pth file
    # adds the folder but runs none of its .pth files, so this checkout's editable install stays out).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        cwd=tmp_path,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [
            str(python),
            "-c",
            "import t5pod, t5pod.tasks, t5pod.ginconf as g; "
            "print(t5pod.__file__); print(t5pod.tasks.__file__); print(g.GIN_DIR)",
        ],
        cwd=elsewhere,
    )
    assert all(line.startswith(site) for line in where.split()), where
    help_text = _run([str(venv / "bin" / "t5pod"), "train", "--help"], cwd=elsewhere)
    assert "TRAIN_STEPS" in help_text and "MODEL_DIR" in help_text
    run = elsewhere / "run"
    _run(
        [
            str(venv / "bin" / "t5pod"),
            "train",
            "--gin_file=demo.gin",
            f"--gin.MODEL_DIR='{run}'",
            "--gin.TRAIN_STEPS=2",
            "--gin.BATCH_SIZE=4",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
            "--gin.LOG_PERIOD=1",
            "--gin.EVAL_PERIOD=0",
        ],
        cwd=elsewhere,
    )
    assert sorted(os.listdir(run / "checkpoints")) == ["2"]
