"""Gin at the edges: the configurables gin files may bind, and flag parsing in T5X conventions.

Library code never imports gin; commands call the factories here to get plain objects.
"""

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import gin

from t5pod import config as config_lib

# The gin/ folder of this checkout; always on the search path so `include 'models/...'` works.
GIN_DIR = str(Path(__file__).resolve().parent.parent / "gin")

_search_paths: list[str] = []


class _QuietGinProbe(logging.Filter):
    """gin's package-resource reader logs an ERROR for every search path that lacks a file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Path not found: %s"


logging.getLogger().addFilter(_QuietGinProbe())

T5Config = gin.external_configurable(config_lib.T5Config, name="T5Config", module="t5pod")


def parse(gin_files: Sequence[str] = (), bindings: Sequence[str] = (), search_paths: Sequence[str] = ()):
    """Parses gin files and `X=value` bindings, later ones overriding earlier ones."""
    gin.clear_config()
    for path in [GIN_DIR, *search_paths]:
        if path not in _search_paths:
            _search_paths.append(path)
            gin.add_config_file_search_path(path)
    for name in gin_files:
        if not os.path.isfile(name) and not any(os.path.isfile(os.path.join(p, name)) for p in [GIN_DIR, *search_paths]):
            raise FileNotFoundError(f"gin file {name!r} not found (searched the working directory, "
                                    f"{GIN_DIR} and --gin_search_paths).")
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings))


def register_tasks(**settings):
    """Registers the seqio tasks and mixtures with the settings gin binds (gin/tasks.gin)."""
    import tasks

    tasks.register_all(**settings)


register_tasks = gin.external_configurable(register_tasks, name="register_tasks", module="t5pod")


def macro(name: str):
    """The value of a gin macro, e.g. macro('TASK_FEATURE_LENGTHS')."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        raise ValueError(f"The gin macro {name} is not set; pass --gin.{name}=... or a gin file that sets it.") from None


def model_config() -> config_lib.T5Config:
    """The T5Config the parsed gin files bind, as a plain (gin-free) dataclass."""
    configured = T5Config()
    return config_lib.T5Config(**{f.name: getattr(configured, f.name) for f in dataclasses.fields(config_lib.T5Config)})
