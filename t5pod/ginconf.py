"""Gin at the edges: the configurables gin files may bind, and flag parsing in T5X conventions.

Library code never imports gin; commands call the factories here to get plain objects.
"""

import dataclasses
import difflib
import importlib
import os
import re
from typing import Sequence

import gin
import jax
import seqio

from t5pod import tasks
from t5pod import configs
from t5pod.configs import EvalConfig, InferConfig, StepConfig, T5Config, TrainConfig
from t5pod.data import demo_corpus, pipeline, vocabularies

# Always on the search path, so that `include 'models/...'` works from any directory.
GIN_DIR = configs.shipped_gin_dir()

_search_paths: list[str] = []


# Macros that commands read themselves (macro()) rather than through a configurable's binding.
DATA_COMMAND_MACROS = ("TASK_FEATURE_LENGTHS", "USE_CACHED_TASKS")

# Macros of earlier releases: naming one is an error that says what replaced it.
RETIRED_MACROS = {
    "INPUT_LENGTH": "inference reads its lengths from TASK_FEATURE_LENGTHS, as training does "
    "(e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\")",
    "TARGET_LENGTH": "inference reads its lengths from TASK_FEATURE_LENGTHS, as training does "
    "(e.g. --gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 128}\")",
}
# T5X bindings with a t5pod equivalent: a binding of the left name sets the macro on the right.
T5X_BINDINGS = {
    "utils.SaveCheckpointConfig.period": "CHECKPOINT_PERIOD",
    "utils.SaveCheckpointConfig.keep": "KEEP_CHECKPOINTS",
    "trainer.Trainer.num_microbatches": "NUM_MICROBATCHES",
    "utils.create_learning_rate_scheduler.base_learning_rate": "LEARNING_RATE",
    "utils.create_learning_rate_scheduler.warmup_steps": "WARMUP_STEPS",
    "train.eval_period": "EVAL_PERIOD",
    "train.total_steps": "TRAIN_STEPS",
    "train.random_seed": "RANDOM_SEED",
}
# T5X bindings that mean something else here: naming one is an error that says what to set.
T5X_REFUSED = {
    "partitioning.PjitPartitioner.num_partitions": (
        "t5pod's mesh is MESH_SHAPE = (data, model); T5X's num_partitions is the model axis, e.g. "
        '--gin.MESH_SHAPE="(-1, 8)" for num_partitions = 8'
    ),
    "partitioning.PjitPartitioner.model_parallel_submesh": "set MESH_SHAPE = (data, model) instead",
    "utils.create_learning_rate_scheduler.factors": (
        "set LEARNING_RATE_SCHEDULE ('rsqrt': T5X's 'constant * rsqrt_decay'; 'constant') and WARMUP_STEPS"
    ),
    "TRAIN_STEPS_RELATIVE": (
        "TRAIN_STEPS counts the steps of this run (fine-tuning counts its own steps "
        "from 0, unlike T5X's total that includes pre-training); set --gin.TRAIN_STEPS"
    ),
    "INFER_OUTPUT_DIR": "infer writes the file named by --output_file=OUT",
}
# T5X gin files: their imports of t5x are dropped, their includes of T5X's shipped files become
# t5pod's twins, and their bindings become macros (T5X_BINDINGS) or one-line errors (T5X_REFUSED).
_T5X_IMPORT = re.compile(r"^\s*(from\s+(t5x|__gin__)\b.*|import\s+(t5x\b.*|__main__\s+as\s+\w+))\s*$")
_T5X_INCLUDE = re.compile(r"""^\s*include\s+['"]t5x/(.+?)['"]\s*$""")
_T5X_RUNS = {
    "pretrain": "runs/pretrain.gin",
    "finetune": "runs/finetune.gin",
    "eval": "runs/eval.gin",
    "infer": "runs/infer.gin",
}
_T5X_SCRIPT = re.compile(r"^train_script\.")  # `import __main__ as train_script`; train_script.train.x
_T5X_MODULES = (
    "utils.",
    "models.",
    "trainer.",
    "partitioning.",
    "adafactor.",
    "optimizers.",
    "train_script.",
    "network.",
)


def _t5x_include(match) -> str:
    model = re.fullmatch(r"examples/t5/(t5_1_[01])/(\w+)\.gin", match[1])
    run = re.fullmatch(r"configs/runs/(\w+)\.gin", match[1])
    if model and os.path.isfile(os.path.join(GIN_DIR, "models", model[1], f"{model[2]}.gin")):
        return f"include 'models/{model[1]}/{model[2]}.gin'"
    if run and run[1] in _T5X_RUNS:
        return f"include '{_T5X_RUNS[run[1]]}'"
    raise ValueError(
        f"include 't5x/{match[1]}' has no t5pod twin; include one of t5pod's gin files (gin/models, gin/runs)."
    )


def _expanded_blocks(lines: list[str]) -> list[str]:
    """`Name:` blocks of a T5X configurable as one `Name.key = value` line per binding."""
    out, scope = [], None
    for line in lines:
        header = re.match(r"^([\w.]+):\s*$", line)
        if header and header[1].startswith(_T5X_MODULES + ("train.",)):
            scope = header[1]
            continue
        if scope and line.startswith((" ", "\t")) and "=" in line:
            out.append(f"{scope}.{line.strip()}")
            continue
        scope = None
        out.append(line)
    return out


def _from_t5x(text: str) -> str:
    """A T5X gin file in t5pod's terms (module docstring above: imports, includes, bindings)."""
    out = []
    for line in _expanded_blocks(text.splitlines()):
        if _T5X_IMPORT.match(line):
            continue
        include = _T5X_INCLUDE.match(line)
        if include:
            out.append(_t5x_include(include))
            continue
        binding = re.match(r"^([\w.]+)\s*=\s*(.*)$", line)
        name = _T5X_SCRIPT.sub("", binding[1]) if binding else None
        if name in T5X_REFUSED:
            raise ValueError(f"{name} is a T5X setting without a t5pod twin: {T5X_REFUSED[name]}.")
        out.append(f"{T5X_BINDINGS[name]} = {binding[2]}" if name in T5X_BINDINGS else line)
    return "\n".join(out) + "\n"


def _is_t5x(text: str) -> bool:
    return any(_T5X_IMPORT.match(line) or _T5X_INCLUDE.match(line) for line in text.splitlines())


# Fields of TrainConfig and InferConfig before they were composed of parts (2026-12): the operative
# config.gin of an older run binds them, and reads as the new fields. {old: new}
RENAMED_FIELDS = {
    **{
        f"TrainConfig.{field.name}": f"{part.__name__}.{field.name}"
        for part in (configs.DataConfig, configs.BatchConfig, configs.OptimizerConfig)  # fields kept their names
        for field in dataclasses.fields(part)
    },
    "TrainConfig.mesh_shape": "MeshConfig.shape",
    "TrainConfig.fsdp": "MeshConfig.fsdp",
    "TrainConfig.checkpoint_period": "CheckpointConfig.period",
    "TrainConfig.keep_checkpoints": "CheckpointConfig.keep",
    "TrainConfig.async_checkpointing": "CheckpointConfig.asynchronous",
    "TrainConfig.initial_checkpoint_path": "CheckpointConfig.initial_path",
    "TrainConfig.initial_checkpoint_skip": "CheckpointConfig.initial_skip",
    "TrainConfig.eval_period": "TrainEvalConfig.period",
    "TrainConfig.eval_steps": "TrainEvalConfig.steps",
    "TrainConfig.eval_split": "TrainEvalConfig.split",
    "TrainConfig.inference_eval": "TrainEvalConfig.inference",
    "TrainConfig.inference_eval_examples": "TrainEvalConfig.inference_examples",
    "InferConfig.mesh_shape": "MeshConfig.shape",
    "InferConfig.fsdp": "MeshConfig.fsdp",
}
_RENAMED = re.compile(r"^(t5pod\.)?(%s)(\s*=)" % "|".join(re.escape(old) for old in RENAMED_FIELDS), re.M)
_PART_REFERENCES = "".join(
    f"TrainConfig.{field.name} = @{field.type.__name__}()\n"
    for field in dataclasses.fields(TrainConfig)
    if dataclasses.is_dataclass(field.type)
)


def _new_name(match) -> str:
    return f"{match[1] or ''}{RENAMED_FIELDS[match[2]]}{match[3]}"


def _renamed(text: str) -> str:
    """text with the old flat fields as their parts' fields; a config that bound them gets the
    references to the parts that the old TrainConfig did not have."""
    new, count = _RENAMED.subn(_new_name, text)
    if count and re.search(r"^(t5pod\.)?TrainConfig\.", new, re.M) and "TrainConfig.data" not in new:
        new += "\n" + _PART_REFERENCES
    if count and "InferConfig." in new and "InferConfig.mesh" not in new:
        new += "\nInferConfig.mesh = @MeshConfig()\n"
    return new


# Hints for macros that commands without a training config do not know.
UNKNOWN_MACRO_HINTS = {"BATCH_SIZE": "the decode batch of infer and eval is INFER_BATCH_SIZE"}


def _find_gin_files_by_path_only():
    """gin also looks gin files up as Python package resources: with a folder such as runs/ in the
    working directory, 'runs/pretrain.gin' is taken for a resource of a package `runs` and the
    lookup fails. t5pod finds gin files by path only (the working directory, gin/ and
    --gin_search_paths); gin offers no public call to drop a reader."""
    gin.config._FILE_READERS[:] = [
        (reader, exists)
        for reader, exists in gin.config._FILE_READERS
        if getattr(exists, "__module__", "") != "gin.resource_reader"
    ]


def parse(
    gin_files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] = (),
    read_directly: Sequence[str] = (),
    unneeded: Sequence[str] = (),
):
    """Parses gin files and `X=value` bindings, later ones overriding earlier ones.

    A macro given on the command line must be read by some binding of the gin files, or be one of
    read_directly (the macros the command reads itself with macro()). Macros in unneeded are set
    to None unless given: the command never reads them, so a %gin.REQUIRED there asks for nothing.
    """
    _find_gin_files_by_path_only()
    gin.clear_config()
    for path in [GIN_DIR, *search_paths]:
        if path not in _search_paths:
            _search_paths.append(path)
            gin.add_config_file_search_path(path)
    for name in gin_files:
        if not os.path.isfile(name) and not any(
            os.path.isfile(os.path.join(p, name)) for p in [GIN_DIR, *search_paths]
        ):
            raise FileNotFoundError(
                f"gin file {name!r} not found (searched the working directory, {GIN_DIR} and --gin_search_paths)."
            )
    try:
        _parse_files(gin_files)
        _check_bindings(bindings, read_directly, unneeded)
    except SyntaxError as error:  # gin's own words come with a traceback
        where = f"{error.filename}, line {error.lineno}" if error.filename else "a --gin binding"
        raise ValueError(f"gin syntax error in {where}: {error.msg} ({(error.text or '').strip()!r}).") from None


def _parse_files(gin_files: Sequence[str]):
    for name in gin_files:
        path = name if os.path.isfile(name) else None
        original = open(path).read() if path else ""
        text = _from_t5x(original) if _is_t5x(original) else original
        if path and (_RENAMED.search(text) or text != original):  # T5X's, or an older run's config.gin
            _parse_text(_renamed(text), path)
        else:
            gin.parse_config_files_and_bindings([name], None, finalize_config=False)


def _check_bindings(bindings: Sequence[str], read_directly: Sequence[str], unneeded: Sequence[str]):
    known_macros = _defined_macros()
    given = {binding.split("=", 1)[0].strip() for binding in bindings}
    for name in sorted((set(unneeded) & known_macros) - given):
        gin.parse_config(f"{name} = None")
    for name in sorted(known_macros & set(RETIRED_MACROS)):
        raise ValueError(f"The gin macro {name} was retired: {RETIRED_MACROS[name]}. Remove it from the gin files.")
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if name in T5X_REFUSED:
            raise ValueError(f"{name} is a T5X setting without a t5pod twin: {T5X_REFUSED[name]}.")
        if name in T5X_BINDINGS:  # T5X muscle memory: the same setting under t5pod's macro
            binding = f"{T5X_BINDINGS[name]} = {binding.split('=', 1)[1].strip()}"
            name = T5X_BINDINGS[name]
        if name in RETIRED_MACROS:
            raise ValueError(f"--gin.{name} was retired: {RETIRED_MACROS[name]}.")
        binding = _RENAMED.sub(_new_name, binding)
        # A bare name is a macro: it must be one the gin files define, or a typo like
        # --gin.TRAIN_STEP=10 (or --gin.train_steps=10) would be silently ignored.
        if name.isidentifier() and known_macros and name not in known_macros:
            by_lower = {macro.lower(): macro for macro in known_macros}
            close = difflib.get_close_matches(name.lower(), sorted(by_lower), n=3)
            hint = f" Did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""
            if name in UNKNOWN_MACRO_HINTS:
                hint = f" Here {UNKNOWN_MACRO_HINTS[name]}."
            raise ValueError(f"Unknown gin macro {name} in --gin.{binding}.{hint}")
        gin.parse_config(binding)
    referenced = set(re.findall(r"%([A-Za-z_][\w.]*)", gin.config_str())) | set(read_directly)
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if name.isidentifier() and name in known_macros and name not in referenced:
            raise ValueError(f"--gin.{name} is not used by this command: no setting of its gin files reads %{name}.")
    try:
        gin.finalize()
    except ValueError as error:  # gin's own words name the macro but not the fix
        required = re.search(r"(\w+)/macro.value set to `%gin.REQUIRED`", str(error))
        if not required:
            raise
        name = required[1]
        raise ValueError(
            f"The gin macro {name} has no value and this command needs one: pass --gin.{name}=... "
            "(or a gin file that sets it)."
        ) from None


def _parse_text(text: str, path: str):
    """Parses text, read from path and translated; a T5X configurable left in it is named as such."""
    try:
        gin.parse_config(text)
    except ValueError as error:
        unknown = re.search(r"No configurable matching '([\w.]+)'", str(error))
        if unknown and unknown[1].startswith(_T5X_MODULES):
            raise ValueError(
                f"{path} binds {unknown[1]}, a T5X setting t5pod does not read; docs/coming-from-t5x.md lists the "
                "T5X settings that carry over and their t5pod names."
            ) from None
        raise


def _defined_macros() -> set[str]:
    """Names of the macros bound so far (gin keeps them as bindings of the `macro` configurable)."""
    text = gin.config_str()
    return {
        line.split("=")[0].strip()
        for line in text.splitlines()
        if line and not line.startswith((" ", "#")) and "=" in line and "." not in line.split("=")[0]
    }


def register_tasks(cache_dirs=(), **settings):
    """Registers the seqio tasks and mixtures with the settings gin binds (gin/tasks.gin); seqio
    looks for task caches (USE_CACHED_TASKS=True) in cache_dirs."""
    seqio.set_global_cache_dirs(list(cache_dirs or ()))
    register_all_tasks(**settings)


def register_all_tasks(mixture_or_task_module=None, **settings):
    """t5pod's tasks and mixtures (tasks.register_all), then the user's: mixture_or_task_module is
    imported, as T5X's MIXTURE_OR_TASK_MODULE. Beam's workers call this too."""
    tasks.register_all(**settings)
    if mixture_or_task_module:
        try:
            importlib.import_module(mixture_or_task_module)
        except ImportError as error:
            raise ValueError(
                f"MIXTURE_OR_TASK_MODULE {mixture_or_task_module!r} cannot be imported ({error}); put the folder "
                "that holds it on PYTHONPATH."
            ) from None


def task_settings() -> dict:
    """The settings register_tasks gets from gin, cache_dirs aside (cache-tasks hands them to Beam's
    workers, which register the tasks again)."""
    settings = dict(gin.get_bindings("t5pod.register_tasks"))
    settings.pop("cache_dirs", None)
    return settings


register_tasks = gin.external_configurable(register_tasks, name="register_tasks", module="t5pod")


def macro(name: str):
    """The value of a gin macro, e.g. macro('TASK_FEATURE_LENGTHS')."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        raise ValueError(
            f"The gin macro {name} is not set; pass --gin.{name}=... or a gin file that sets it."
        ) from None


# The dataclasses gin may bind. Commands get plain (gin-free) instances from the functions below.
_CONFIGURABLE = {
    cls: gin.external_configurable(cls, name=cls.__name__, module="t5pod")
    for cls in (
        T5Config,
        TrainConfig,
        configs.DataConfig,
        configs.BatchConfig,
        configs.OptimizerConfig,
        configs.MeshConfig,
        configs.CheckpointConfig,
        configs.TrainEvalConfig,
        InferConfig,
        EvalConfig,
    )
}
_PLAIN = {configured: cls for cls, configured in _CONFIGURABLE.items()}


def _plain(value):
    """value with every config gin built (an instance of gin's subclass) rebuilt as its plain class."""
    cls = _PLAIN.get(type(value))
    if cls is None:
        return value
    return cls(**{f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(cls)})


def _bound(cls):
    """An instance of cls with the values the parsed gin files bind (its parts too)."""
    return _plain(_CONFIGURABLE[cls]())


# Activations and matmuls when the gin files leave t5pod.T5Config.dtype unset: bfloat16 where the
# hardware computes it natively (as T5X's T5 1.1 gin files train), float32 on CPU.
PLATFORM_DTYPES = {"tpu": "bfloat16", "gpu": "bfloat16", "cuda": "bfloat16", "rocm": "bfloat16"}


def model_config(platform: str | None = None) -> T5Config:
    """The bound T5Config; a dtype the gin files leave unset follows the platform (PLATFORM_DTYPES;
    default: JAX's backend)."""
    config = _bound(T5Config)
    try:
        gin.query_parameter("t5pod.T5Config.dtype")
    except ValueError:  # not bound: the platform's
        dtype = PLATFORM_DTYPES.get(platform or jax.default_backend(), "float32")
        config = dataclasses.replace(config, dtype=dtype)
    return config


def train_config() -> TrainConfig:
    """Bound by gin/runs/pretrain.gin (and the run files that include it)."""
    return _bound(TrainConfig)


def step_config() -> StepConfig:
    """The train step's parts of gin/runs/pretrain.gin, without the run (no MODEL_DIR needed)."""
    return StepConfig(
        _bound(configs.BatchConfig), _bound(configs.OptimizerConfig), _bound(configs.MeshConfig), macro("TRAIN_STEPS")
    )


def infer_config() -> InferConfig:
    """Bound by gin/runs/infer.gin."""
    return _bound(InferConfig)


def vocabulary():
    """The vocabulary VOCABULARY_PATH names ('demo': the demo corpus's)."""
    path = macro("VOCABULARY_PATH")
    return demo_corpus.vocabulary() if path == "demo" else vocabularies.get_vocabulary(path)


def task_vocabulary(name: str) -> str | None:
    """The VOCABULARY_PATH value that names the vocabulary task or mixture `name` encodes with
    ('demo' for the demo corpus's); None when it is not a SentencePiece file."""
    vocabulary = pipeline.get_task_or_mixture(name).output_features["targets"].vocabulary
    if isinstance(vocabulary, vocabularies.LazyVocabulary) and vocabulary._build is demo_corpus.vocabulary_path:
        return "demo"
    return getattr(vocabulary, "sentencepiece_model_file", None)


def eval_config() -> EvalConfig:
    """Bound by gin/runs/eval.gin."""
    return _bound(EvalConfig)
