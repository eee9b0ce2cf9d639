"""The run settings: the macros of the shipped gin files, with their defaults, their meaning and the
commands that read them.

The gin files are the one source. Each macro is defined on one line, `NAME = default  # meaning`
(a meaning may go on over comment lines indented under it). `--help` of the commands and the
settings page of the docs (docs/settings.md, written by `make docs`, i.e.
`python -m t5pod.settings docs/settings.md`) are both read from here, and a test checks that every
macro has a meaning and that the page is current.
"""

import dataclasses
import re
import sys
from pathlib import Path

from t5pod import configs

# The gin files that define run macros, and the commands that read each one (tasks.gin is read by
# every command that reads data; runs/pretrain.gin is what `train` and `plan` are given).
MACRO_FILES = {
    "runs/pretrain.gin": ("train", "plan"),
    "runs/infer.gin": ("infer", "eval", "probe"),
    "runs/eval.gin": ("eval",),
    "tasks.gin": ("train", "plan", "infer", "eval", "probe", "data", "cache-tasks"),
    "finetuning/adapters.gin": ("train",),
    "finetuning/lora.gin": ("train",),
    "finetuning/prompt_tuning.gin": ("train",),
}
# Fine-tuning's defaults where they differ from pre-training's.
FINETUNE_FILE = "runs/finetune.gin"

_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s?(.*))?$")
_CONTINUATION = re.compile(r"^\s+#\s?(.*)$")
_FIELD_BINDING = re.compile(r"^\s+(\w+)\s*=\s*%([A-Z][A-Z0-9_]*)\s*$")


@dataclasses.dataclass(frozen=True)
class Macro:
    name: str
    default: str  # as written in the gin file
    meaning: str  # the comment beside it; "" when it has none
    gin_file: str  # relative to the shipped gin folder


def _lines(gin_file: str) -> list[str]:
    return (Path(configs.shipped_gin_dir()) / gin_file).read_text().splitlines()


def read_macros(gin_file: str) -> list[Macro]:
    """The macros gin_file defines, in file order."""
    macros, previous = [], None
    for line in _lines(gin_file):
        assignment, continuation = _ASSIGNMENT.match(line), _CONTINUATION.match(line)
        if assignment:
            previous = Macro(assignment[1], assignment[2], (assignment[3] or "").strip(), gin_file)
            macros.append(previous)
            continue
        if continuation and previous is not None and previous.meaning:
            previous = dataclasses.replace(previous, meaning=f"{previous.meaning} {continuation[1].strip()}")
            macros[-1] = previous
            continue
        previous = None
    return macros


def field_macros(gin_file: str, configurable: str) -> dict[str, str]:
    """{field: MACRO} of gin_file's `configurable:` block (its indented lines `  field = %MACRO`)."""
    fields, inside = {}, False
    for line in _lines(gin_file):
        if line.startswith(f"{configurable}:"):
            inside = True
        elif inside and _FIELD_BINDING.match(line):
            match = _FIELD_BINDING.match(line)
            fields[match[1]] = match[2]
        elif inside and not line.startswith(" "):
            inside = False
    return fields


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    defaults: dict  # {gin file: default}
    finetune_default: str | None
    commands: tuple
    meaning: str


def settings() -> list[Setting]:
    """Every run macro once, in the order of MACRO_FILES."""
    found: dict[str, list[Macro]] = {}
    for gin_file in MACRO_FILES:
        for macro in read_macros(gin_file):
            found.setdefault(macro.name, []).append(macro)
    finetune = {m.name: m.default for m in read_macros(FINETUNE_FILE)}
    rows = []
    for name, macros in found.items():
        commands = []
        for macro in macros:
            commands += [c for c in MACRO_FILES[macro.gin_file] if c not in commands]
        defaults = {m.gin_file: m.default for m in macros}
        meaning = next((m.meaning for m in macros if m.meaning), "")
        rows.append(Setting(name, defaults, finetune.get(name), tuple(commands), meaning))
    return rows


def help_text(*gin_files: str) -> list[str]:
    """`NAME = default  # meaning` lines of the macros gin_files define, for a command's --help."""
    return [
        f"  {m.name} = {m.default}" + (f"  # {m.meaning}" if m.meaning else "")
        for gin_file in gin_files
        for m in read_macros(gin_file)
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/settings.md."""
    lines = [
        "# Settings",
        "",
        "<!-- Written by `make docs` from the comments beside each macro in gin/; edit those, not this. -->",
        "",
        "Every run setting is a gin macro, set with `--gin.NAME=VALUE`, `--gin_bindings='NAME = VALUE'` or",
        "in a gin file given later on the command line. A macro that no file defines, or that the command",
        "does not read, stops the command before it writes anything. Defaults are those of the file that",
        "defines the macro (`gin/`); `runs/finetune.gin` changes some of them for fine-tuning.",
        "Model sizes and architectures are gin files of their own (`gin/models/`), bound on",
        "`t5pod.T5Config` (e.g. `--gin.t5pod.T5Config.dropout_rate=0.1`).",
        "",
        "| macro | read by | default | fine-tuning | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in settings():
        values = sorted(set(s.defaults.values()))
        default = f"`{values[0]}`" if len(values) == 1 else "; ".join(f"`{v}` ({f})" for f, v in s.defaults.items())
        changed = s.finetune_default is not None and s.finetune_default != s.defaults.get("runs/pretrain.gin")
        finetune = f"`{s.finetune_default}`" if changed else ""
        where = ", ".join(f"`{c}`" for c in s.commands) + f" (`{'`, `'.join(s.defaults)}`)"
        lines.append(f"| {s.name} | {_cell(where)} | {_cell(default)} | {_cell(finetune)} | {_cell(s.meaning)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m t5pod.settings OUT.md", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
