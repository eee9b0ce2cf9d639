"""GLUE and SuperGLUE as text-to-text seqio tasks, from TFDS or from the benchmark files.

Rows come either from TFDS (`glue/...`, `super_glue/...`) or from the files as the benchmarks
distribute them (GLUE_DIR / SUPERGLUE_DIR); both are formatted by the same code
(t5pod.data.glue_formats), so the two sources give identical examples.
"""

import functools
import os

import seqio
import tensorflow as tf

from t5pod.data import benchmarks, glue_files, glue_formats, glue_metrics

GLUE_LENGTHS = {"inputs": 512, "targets": 84}
SUPER_GLUE_LENGTHS = {"inputs": 512, "targets": 62}


def _record_postprocess(output, example=None, is_target=False):
    # Answers are stored padded with "" to a fixed width; drop the padding.
    if is_target:
        example = dict(example, answers=[a for a in example["answers"] if len(a)])
    return glue_metrics.record_postprocess(output, example, is_target)


def _postprocess_fn(task: str):
    if task.startswith("super_glue_multirc"):
        return glue_metrics.multirc_postprocess
    if task.startswith("super_glue_record"):
        return _record_postprocess
    if task == benchmarks.WSC_EVAL:
        return glue_metrics.wsc_simple_postprocess
    if task.startswith("glue_stsb"):
        return glue_metrics.string_to_float
    if task in benchmarks.LABEL_CLASSES:
        return functools.partial(glue_metrics.string_label_to_class_id, label_classes=benchmarks.LABEL_CLASSES[task])
    return None  # DPR and WSC training: compare strings


def _rows(task: str, split: str, glue_dir, superglue_dir, tfds_data_dir):
    tfds_name, reader, splits = benchmarks.TFDS_NAMES[task]
    source_split = splits[split]
    if reader == "glue" and (glue_dir or os.environ.get(benchmarks.GLUE_ENV)):
        return glue_files.read_glue(glue_dir, benchmarks.reader_config(task), source_split)
    if reader == "super_glue" and (superglue_dir or os.environ.get(benchmarks.SUPERGLUE_ENV)):
        return glue_files.read_super_glue(superglue_dir, benchmarks.reader_config(task), source_split)
    return _tfds_rows(tfds_name, source_split, tfds_data_dir, reader)


def _tfds_rows(tfds_name: str, split: str, data_dir, reader):
    local = {
        "glue": "set GLUE_DIR to the GLUE TSV files",
        "super_glue": "set SUPERGLUE_DIR to the SuperGLUE JSONL files",
    }.get(reader)
    import tensorflow_datasets as tfds  # here: it takes seconds to import and only TFDS reads need it

    return tfds.as_numpy(tfds_dataset(tfds_name, split, data_dir, local))


def tfds_dataset(
    tfds_name: str,
    split: str,
    data_dir,
    local_hint: str | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """A TFDS split, or one error saying how to provide it (local_hint: the way to use local files)."""
    import tensorflow_datasets as tfds  # here: it takes seconds to import and only TFDS reads need it

    try:
        return tfds.builder(tfds_name, data_dir=data_dir).as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=tfds.ReadConfig(shuffle_seed=seed)
        )
    except Exception as error:  # TFDS raises several kinds when data is missing
        raise FileNotFoundError(
            f"TFDS dataset {tfds_name} ({split}) is not available in {data_dir or 'the default TFDS data dir'} "
            f"({type(error).__name__}). Prepare it where there is internet (`tfds build {tfds_name.split(':')[0]}`) "
            f"and set TFDS_DATA_DIR{', or ' + local_hint if local_hint else ''}."
        ) from None


def strings_dataset(columns: dict[str, list]) -> tf.data.Dataset:
    """Columns of strings as one in-memory dataset (checkpointable: resumes exactly). A column of
    string lists (gold answers) is padded with "" to one width; the postprocessors drop the padding."""

    def padded(values: list) -> list:
        if not isinstance(values[0], list):
            return values
        width = max(1, max(len(v) for v in values))
        return [v + [""] * (width - len(v)) for v in values]

    return tf.data.Dataset.from_tensor_slices({k: tf.constant(padded(v), tf.string) for k, v in columns.items()})


def _examples_dataset(examples: list[dict]) -> tf.data.Dataset:
    """Formatted examples as one in-memory dataset."""
    if not examples:
        raise ValueError("The split has no examples.")
    columns = {
        "inputs": [x["inputs"] for x in examples],
        "targets": [x["targets"] for x in examples],
        "idx": [str(x.get("idx", "")) for x in examples],
    }
    for key in ("group", "answers"):
        if key in examples[0]:
            columns[key] = [x[key] for x in examples]
    if "label" in examples[0]:  # WSC's target: whether the candidate is the referent
        columns["label"] = [str(x["label"]) for x in examples]
    return strings_dataset(columns)


def _dataset_fn(task: str, glue_dir, superglue_dir, tfds_data_dir):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed
        rows = _rows(task, split, glue_dir, superglue_dir, tfds_data_dir)
        examples = [x for row in rows for x in glue_formats.format_example(task, row)]
        return _examples_dataset(examples)

    return dataset_fn


def register(vocabulary, *, glue_dir=None, superglue_dir=None, tfds_data_dir=None):
    features = {"inputs": seqio.Feature(vocabulary, add_eos=True), "targets": seqio.Feature(vocabulary, add_eos=True)}
    preprocessors = [
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]
    for task in benchmarks.TASK_NAMES:
        splits = tuple(benchmarks.TFDS_NAMES[task][2])
        source = seqio.FunctionDataSource(_dataset_fn(task, glue_dir, superglue_dir, tfds_data_dir), splits=splits)
        seqio.TaskRegistry.remove(task)
        seqio.TaskRegistry.add(
            task,
            source=source,
            preprocessors=preprocessors,
            output_features=features,
            postprocess_fn=_postprocess_fn(task),
            metric_fns=list(benchmarks.metric_fns(task)),
        )
