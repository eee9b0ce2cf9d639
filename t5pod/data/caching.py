"""seqio caches of tasks, built with seqio's own Beam transforms (`python -m t5pod cache-tasks`).

A task's preprocessors up to its seqio.CacheDatasetPlaceholder (reading, tokenizing) run once,
on Apache Beam: DirectRunner on this machine, or any runner Beam's flags name (Dataflow for
C4). Training with USE_CACHED_TASKS=True and CACHE_DIRS then reads the cached examples and runs
only the steps after the placeholder (the objective's random noise, EOS). The layout is seqio's:
OUTPUT_CACHE_DIR/<task dir>/{<split>.tfrecord-*, info.<split>.json, stats.<split>.json, COMPLETED}.
"""

import logging
import os
from typing import Callable, Sequence


class _BeamStartUpNotes(logging.Filter):
    """Beam's notes at start-up about optional libraries and its own DoFns: nothing a user acts on
    (shown with --verbose)."""

    NOTES = (
        "apitools not found",
        "Using yield and return in the process method",
        "Couldn't find python-snappy or google-crc32c",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or not str(record.msg).startswith(self.NOTES)


for _name in ("", "apache_beam.transforms.core", "apache_beam.io.tfrecordio"):
    logging.getLogger(_name).addFilter(_BeamStartUpNotes())

import apache_beam as beam  # noqa: E402  (after the filters: it logs while importing)
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402
from seqio import beam_utils  # noqa: E402

from t5pod.data import pipeline  # noqa: E402


class CacheError(ValueError):
    pass


def tasks_to_cache(names: Sequence[str]) -> list[seqio.Task]:
    """The tasks named (a mixture stands for its tasks), each checked to be cacheable."""
    found = []
    for name in names:
        for task in seqio.get_subtasks(pipeline.get_task_or_mixture(name)):
            if not task.supports_caching:
                raise CacheError(
                    f"Task {task.name} has no seqio.CacheDatasetPlaceholder among its preprocessors "
                    "(or its source forbids caching), so it cannot be cached; train it uncached."
                )
            if task not in found:
                found.append(task)
    return found


def cache_tasks(
    names: Sequence[str],
    output_cache_dir: str,
    beam_args: Sequence[str] = (),
    setup_fn: Callable[[], None] = lambda: None,
) -> list[str]:
    """Runs the Beam pipeline that caches every split of the named tasks; returns the task folders.

    beam_args: Beam pipeline flags (e.g. --runner=DataflowRunner --project=P --region=R
    --temp_location=gs://...); without --runner, Beam's DirectRunner runs here. setup_fn runs on
    each worker before it reads a task: it registers the tasks with this run's settings.
    """
    tasks = tasks_to_cache(names)
    folders = [os.path.join(output_cache_dir, seqio.get_task_dir_from_name(task.name)) for task in tasks]
    for folder in folders:
        if tf.io.gfile.exists(os.path.join(folder, "COMPLETED")):
            raise CacheError(
                f"{folder} already holds a complete cache; a task's cache is written once. Choose "
                "another --output_cache_dir, or delete that folder to build it again."
            )
        if tf.io.gfile.exists(folder):  # a build that stopped before COMPLETED: seqio would never read it
            print(f"Removing the incomplete cache in {folder} (no COMPLETED file) to build it again.")
            tf.io.gfile.rmtree(folder)
    options = beam.options.pipeline_options.PipelineOptions(list(beam_args))
    with beam.Pipeline(options=options) as root:
        for task, folder in zip(tasks, folders):
            written = []
            for split in task.splits:
                label = f"{task.name}_{split}"
                read = beam_utils.PreprocessTask(task, split, setup_fn=setup_fn)
                shards = len(read.shards)
                # seqio's cache pipeline reshuffles so that each output shard mixes all input shards.
                examples = root | f"{label}_read" >> read | f"{label}_shuffle" >> beam.Reshuffle()
                written.append(
                    examples
                    | f"{label}_write"
                    >> beam_utils.WriteExampleTfRecord(
                        seqio.get_cached_tfrecord_prefix(folder, split), num_shards=shards
                    )
                )
                written.append(
                    examples
                    | f"{label}_info" >> beam_utils.GetInfo(shards)
                    | f"{label}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(folder, split))
                )
                written.append(
                    examples
                    | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                    | f"{label}_write_stats" >> beam_utils.WriteJson(seqio.get_cached_stats_path(folder, split))
                )
            # COMPLETED (seqio reads only caches that have it) is written after everything else.
            _ = (
                written
                | f"{task.name}_all" >> beam.Flatten()
                | f"{task.name}_none" >> beam.Filter(lambda _: False)
                | f"{task.name}_completed"
                >> beam.io.textio.WriteToText(os.path.join(folder, "COMPLETED"), num_shards=1, shard_name_template="")
            )
    return folders
