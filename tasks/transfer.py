"""Small-data GLUE tasks for measuring transfer (the study's single-task rows and linear probes).

Each task is cut from a GLUE task's *training* file by one fixed, seeded permutation: its first
`heldout` examples become the task's `validation` split (for choosing a checkpoint, never the dev
set), the next `train` examples (all the rest when None) its `train` split. The benchmark's dev set
stays the base task's `validation` split; the mixtures `<task>_with_dev` train on the subset and
evaluate both, the dev task as an evaluation-only member (rate 0). Inputs, targets, postprocessing
and metrics are the base task's, so the scores are in the paper's units.

  glue_sst2_1k_v002     1,000 SST-2 training labels, 1,000 held out
  glue_sst2_4k_v002     4,000 SST-2 training labels (a superset of the 1k), the same 1,000 held out
  glue_stsb_heldout_v002  STS-B's training set less 500 held out (5,249 pairs)
"""

import numpy as np
import seqio

from . import glue
from t5pod.data import benchmarks, glue_formats

SUBSET_SEED = 20261203  # fixed: every run and every probe sees the same subsets
# name: (base task, training examples (None: all not held out), held-out examples)
SUBSETS = {
    "glue_sst2_1k_v002": ("glue_sst2_v002", 1000, 1000),
    "glue_sst2_4k_v002": ("glue_sst2_v002", 4000, 1000),
    "glue_stsb_heldout_v002": ("glue_stsb_v002", None, 500),
}


def mixture_name(subset: str) -> str:
    """The mixture that trains on a subset and evaluates its benchmark's dev set too."""
    return subset.replace("_v002", "_with_dev")


def split_rows(rows: list, train: int | None, heldout: int, seed: int = SUBSET_SEED) -> dict[str, list]:
    """{"train": [...], "validation": [...]}: a seeded permutation's first `heldout` rows held out,
    the next `train` (None: the rest) for training. The same seed gives nested training subsets."""
    if heldout <= 0 or (train is not None and train <= 0):
        raise ValueError(f"a transfer subset needs positive sizes, got train={train}, heldout={heldout}.")
    needed = heldout + (train or 1)
    if len(rows) < needed:
        raise ValueError(f"the training file has {len(rows)} examples; the subset needs {needed}.")
    order = np.random.RandomState(seed).permutation(len(rows))
    held = [rows[i] for i in order[:heldout]]
    rest = order[heldout:] if train is None else order[heldout : heldout + train]
    return {"train": [rows[i] for i in rest], "validation": held}


def _dataset_fn(name: str, base: str, train: int | None, heldout: int, glue_dir, tfds_data_dir):
    cache = {}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
        del shuffle_files, seed
        if not cache:  # the training file is read once per process
            rows = list(glue._rows(base, "train", glue_dir, None, tfds_data_dir))
            cache.update(split_rows(rows, train, heldout))
        examples = [x for row in cache[split] for x in glue_formats.format_example(base, row)]
        return glue._examples_dataset(examples)

    return dataset_fn


def register(vocabulary, *, glue_dir=None, tfds_data_dir=None):
    features = {"inputs": seqio.Feature(vocabulary, add_eos=True), "targets": seqio.Feature(vocabulary, add_eos=True)}
    preprocessors = [
        seqio.preprocessors.tokenize,
        seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim,
    ]
    for name, (base, train, heldout) in SUBSETS.items():
        source = seqio.FunctionDataSource(
            _dataset_fn(name, base, train, heldout, glue_dir, tfds_data_dir), splits=("train", "validation")
        )
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=preprocessors,
            output_features=features,
            postprocess_fn=glue._postprocess_fn(base),
            metric_fns=list(benchmarks.metric_fns(base)),
        )
        mixture = mixture_name(name)
        seqio.MixtureRegistry.remove(mixture)
        seqio.MixtureRegistry.add(mixture, [(name, 1.0), (base, 0.0)])
