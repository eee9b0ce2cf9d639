"""The installed environment is the pinned one, and the commands run as a user types them."""

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

from helpers import hf_reference
from conftest import REPO


def _pins():
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def test_lock_file_pins_every_declared_dependency():
    pins = {name.lower().replace("_", "-") for name in _pins()}
    declared = importlib.metadata.requires("t5pod")
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} is declared in setup.cfg but not pinned in requirements.lock"


def test_installed_versions_are_the_pinned_ones():
    wrong = []
    for name, version in _pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: pinned {version} but not installed (nothing in setup.cfg needs it?)")
            continue
        if installed.split("+")[0] != version:
            wrong.append(f"{name}: installed {installed}, pinned {version}")
    assert not wrong, "run `make install`: " + "; ".join(wrong)


@pytest.mark.slow
@pytest.mark.e2e
def test_convert_hf_command_end_to_end(tmp_path):
    hf_reference.make_checkpoint("t5_1_1", str(tmp_path / "hf"))
    env = dict(os.environ, XLA_FLAGS="")
    done = subprocess.run(
        [sys.executable, "-m", "t5pod", "convert-hf", str(tmp_path / "hf"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "tie_word_embeddings=False" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0", "model.gin"]

    again = subprocess.run(
        [sys.executable, "-m", "t5pod", "convert-hf", str(tmp_path / "hf"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
    assert "Traceback" not in again.stderr
