"""Mixtures: GLUE and SuperGLUE with the reference weights, equal mixing, multi-task training
over C4 and every supervised task (paper §3.5.2-3.5.3, with leave-one-out variants), and
multi-task pretraining with an artificial size for span corruption (§3.7)."""

import seqio

from t5pod.data import mixing

# Training examples per task (the reference mixture weights); 0 = evaluation-only member.
GLUE_SIZES = {
    "glue_cola_v002": 8551,
    "glue_sst2_v002": 67349,
    "glue_mrpc_v002": 3668,
    "glue_qqp_v002": 363849,
    "glue_stsb_v002": 5749,
    "glue_mnli_v002": 392702,
    "glue_qnli_v002": 104743,
    "glue_rte_v002": 2490,
    "glue_mnli_mismatched_v002": 0,
    "glue_mnli_matched_v002": 0,
    "glue_ax_v002": 0,
}
SUPER_GLUE_SIZES = {
    "dpr_v001_simple": 1322,
    "super_glue_wsc_v102_simple_train": 259,
    "super_glue_boolq_v102": 9427,
    "super_glue_cb_v102": 250,
    "super_glue_copa_v102": 400,
    "super_glue_multirc_v102": 27243,
    "super_glue_record_v102": 138854,
    "super_glue_rte_v102": 2490,
    "super_glue_wic_v102": 5428,
    "super_glue_wsc_v102_simple_eval": 0,
    "super_glue_axb_v102": 0,
    "super_glue_axg_v102": 0,
}
# The members whose training files are small enough to fetch and keep by hand (no MNLI, QQP, QNLI,
# BoolQ, MultiRC, ReCoRD, WiC): the study's cpu preset fine-tunes on these, one mixture per
# benchmark as the paper does (GLUE's RTE and SuperGLUE's RTE are the same data: one in each).
SMALL_GLUE_TASKS = ["glue_cola_v002", "glue_sst2_v002", "glue_mrpc_v002", "glue_stsb_v002", "glue_rte_v002"]
SMALL_SUPER_GLUE_TASKS = [
    "super_glue_cb_v102",
    "super_glue_rte_v102",
    "super_glue_wsc_v102_simple_train",
    "super_glue_wsc_v102_simple_eval",
]
SMALL_TASKS = SMALL_GLUE_TASKS + SMALL_SUPER_GLUE_TASKS
# Training examples of c4/en:3.0.1: far above any limit K, so its rate is K (paper §3.5.2).
C4_EXAMPLES = 364_868_892
# Paper §3.7: the artificial size of the unsupervised task per model size.
PRETRAINING_SIZES = {"small": 710_000, "base": 2_620_000, "large": 8_660_000, "3B": 33_500_000, "11B": 133_000_000}


def _add(name: str, rates: dict[str, float]):
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(rates.items()))


def register(
    *, mixing_rate_limit: float | None = None, mixing_temperature: float = 1.0, pretraining_size: str = "small"
):
    def proportional(sizes):
        return mixing.examples_proportional_rates(sizes, mixing_rate_limit, mixing_temperature)

    _add("glue_v002_proportional", proportional(GLUE_SIZES))
    _add("super_glue_v102_proportional", proportional(SUPER_GLUE_SIZES))
    _add("glue_v002_equal", mixing.equal_rates(GLUE_SIZES))
    _add("super_glue_v102_equal", mixing.equal_rates(SUPER_GLUE_SIZES))
    supervised = {**GLUE_SIZES, **SUPER_GLUE_SIZES}
    _add("glue_super_glue_proportional", proportional(supervised))
    _add("glue_super_glue_small_proportional", proportional({task: supervised[task] for task in SMALL_TASKS}))
    _add("glue_small_proportional", proportional({task: GLUE_SIZES[task] for task in SMALL_GLUE_TASKS}))
    _add(
        "super_glue_small_proportional", proportional({task: SUPER_GLUE_SIZES[task] for task in SMALL_SUPER_GLUE_TASKS})
    )
    if pretraining_size not in PRETRAINING_SIZES:
        raise ValueError(f"MULTITASK_PRETRAINING_SIZE {pretraining_size!r} is not one of {sorted(PRETRAINING_SIZES)}.")
    multitask = {"c4_v220_span_corruption": PRETRAINING_SIZES[pretraining_size], **supervised}
    _add("c4_span_corruption_glue_super_glue_proportional", proportional(multitask))
    # §3.5.2-3.5.3: the unsupervised task at its real size, mixed with every supervised task.
    everything = {"c4_v220_span_corruption": C4_EXAMPLES, **supervised}
    _add("all_equal", mixing.equal_rates(everything))
    _add("all_proportional", proportional(everything))
    for task, n in supervised.items():
        if n:  # leave-one-out: pre-train on everything but this task, then fine-tune on it
            _add(f"all_proportional_without_{task}", proportional({k: v for k, v in everything.items() if k != task}))
