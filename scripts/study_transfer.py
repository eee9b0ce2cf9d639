"""The study's transfer rows (`study.py --rows=transfer`): where pre-training's effect can be measured.

For each rung of a compute ladder (the i.i.d. denoising pre-training continued to 1x, 2x, 4x the
preset's steps; one run, its checkpoints kept) and for random weights:
  - single-task fine-tuning on small data, one run per seed, each choosing its checkpoint on a
    held-out slice of the *training* set and reporting the dev score at that checkpoint:
    sst2_1k (1,000 SST-2 labels) and stsb (STS-B less 500 held out), tasks in tasks/transfer.py;
  - linear probes of the frozen encoder (`t5pod probe`): SST-2 1k and 4k, STS-B.
Random weights do not depend on the rung, so their runs are shared by every rung. Each comparison
reports the per-seed scores, the mean difference pre-trained - random and its 95% interval (Welch's
t, unequal variances). Results go to <out>/<preset>/transfer.json and transfer.md.
"""

import dataclasses
import itertools
import json
import math
import os
import statistics
import sys

# name in transfer.json: (training mixture, held-out task, dev task, the metric reported)
FINETUNE_TASKS = {
    "sst2_1k": ("glue_sst2_1k_with_dev", "glue_sst2_1k_v002", "glue_sst2_v002", "accuracy"),
    "stsb": ("glue_stsb_heldout_with_dev", "glue_stsb_heldout_v002", "glue_stsb_v002", "pearson_corrcoef"),
}
# name in transfer.json: the probed task (its train split is fitted; scored on its benchmark's dev set)
PROBE_TASKS = {"sst2_1k": "glue_sst2_1k_v002", "sst2_4k": "glue_sst2_4k_v002", "stsb": "glue_stsb_heldout_v002"}
# method in transfer.json: the suffix of its runs' start label (the whole pre-trained model, or its
# encoder and embeddings with a fresh decoder)
FINETUNE_METHODS = {"finetune": "", "finetune_encoder": "_encoder"}
# An encoder start keeps these parameters at their fresh initialisation (INITIAL_CHECKPOINT_SKIP).
FRESH_DECODER = ("decoder/.*",)


@dataclasses.dataclass(frozen=True)
class TransferSettings:
    """Single-task fine-tuning per task: steps, evaluation period, lengths; shared: batch, settings."""

    steps: dict  # task -> training steps
    period: dict  # task -> steps between checkpoint evaluations
    lengths: dict  # task -> {"inputs": ..., "targets": ...}
    batch: int
    settings: dict  # more gin macros (learning rate, dropout)
    seeds: tuple[int, ...]
    ladder: tuple[int, ...]  # multiples of the preset's pre-training steps
    probe_seeds: tuple[int, ...]  # random initialisations probed


def _metric(line: dict, name: str) -> float:
    value = line.get(name, float("nan"))
    return 0.0 if value is None or math.isnan(value) else value  # a constant prediction: no skill


def read_metrics(model_dir: str, task: str) -> list[dict]:
    path = os.path.join(model_dir, "inference_eval", f"{task}-metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select(model_dir: str, task: str) -> dict:
    """The dev score at the step whose held-out score is best (ties: the earliest), never chosen on dev."""
    _, heldout_task, dev_task, metric = FINETUNE_TASKS[task]
    heldout = read_metrics(model_dir, heldout_task)
    dev = {line["step"]: line for line in read_metrics(model_dir, dev_task)}
    if not heldout or not dev:
        raise ValueError(f"{model_dir} has no held-out and dev evaluations of {task}.")
    best = max(heldout, key=lambda line: (_metric(line, metric), -line["step"]))
    last = max(line["step"] for line in heldout)
    return {
        "step": best["step"],
        "heldout": _metric(best, metric),
        "dev": _metric(dev[best["step"]], metric),
        "last_step": last,
        "dev_at_last_step": _metric(dev[last], metric),
        "dev_best_any_step": max(_metric(line, metric) for line in dev.values()),
    }


def welch_interval(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): the difference's confidence interval by Welch's t (unequal variances)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError("an interval needs at least two scores on each side.")
    difference = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return difference, difference, difference
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return difference, difference - half, difference + half


def comparison(
    task: str, compute: int | None, method: str, pretrained: list[float], random: list[float], extra: dict | None = None
) -> dict:
    """One transfer.json row: per-seed scores of both starts, the mean difference and its 95% interval."""
    row = {"task": task, "compute": compute, "method": method, "pretrained": pretrained, "random": random}
    if len(pretrained) >= 2 and len(random) >= 2:
        difference, low, high = welch_interval(pretrained, random)
        row.update(difference=difference, ci95=[low, high])
    elif method == "probe" and pretrained and random:  # a checkpoint's probe is deterministic: the
        # interval is random weights' alone
        spread = welch_interval([pretrained[0]] * 2, random) if len(random) >= 2 else None
        row.update(
            difference=statistics.fmean(pretrained) - statistics.fmean(random),
            ci95=[spread[1], spread[2]] if spread else None,
        )
    return {**row, **(extra or {})}


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| method | task | compute | pre-trained (mean ± sd) | random (mean ± sd) | difference | 95% interval | "
        "seeds | pre-training FLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = f"[{r['ci95'][0]:+.1f}, {r['ci95'][1]:+.1f}]" if r.get("ci95") else "–"
        difference = f"{r['difference']:+.1f}" if "difference" in r else "–"
        flops = f"{r['pretraining_flops']:.2e}" if r.get("pretraining_flops") else "–"
        lines.append(
            f"| {r['method']} | {r['task']} | {r['compute']}x | {_cell(r['pretrained'])} | "
            f"{_cell(r['random'])} | {difference} | {interval} | {len(r['pretrained'])} / "
            f"{len(r['random'])} | {flops} |"
        )
    return "\n".join(lines) + "\n"


def write(folder: str, rows: list[dict], settings: dict):
    """transfer.json (the rows, and the settings that made them) and transfer.md, each replaced whole."""
    for name, text in (
        ("transfer.json", json.dumps(rows, indent=1)),
        ("transfer-settings.json", json.dumps(settings, indent=1, sort_keys=True)),
        ("transfer.md", markdown(rows)),
    ):
        path = os.path.join(folder, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def checkpoint_key(path: str | None) -> str | None:
    """A probed checkpoint by its place in the study folder (runs/<run>/checkpoints/<step>), so that
    probes.jsonl still matches after the study folder moves (a fresh checkout elsewhere)."""
    return None if path is None else "/".join(os.path.normpath(path).split(os.sep)[-4:])


def probe_rows(path: str) -> list[dict]:
    """The encoder-output probes in path (rows without "features" predate the embeddings probe)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r.get("features", "encoder") == "encoder"]


def probe_command(study, task: str, checkpoint: str | None, seed: int | None, output: str) -> list[str]:
    settings = {
        **study.data_settings(),
        "TASK_FEATURE_LENGTHS": {"inputs": study.preset.input_length, "targets": 8},
        "INFER_BATCH_SIZE": 64,
    }
    if checkpoint:
        settings["CHECKPOINT_PATH"] = checkpoint
    command = [sys.executable, "-m", "t5pod", "probe", f"--task={PROBE_TASKS[task]}", f"--output_file={output}"]
    command += [f"--gin_file={f}" for f in study.preset.model_gin]
    command += [f"--gin.{k}={v!r}" for k, v in settings.items()]
    return command + ([f"--random_init_seed={seed}"] if seed is not None else [])


def start_names(ladder: list[str]) -> list[str]:
    """random, each rung, and each rung's encoder start ("1-encoder": the pre-trained encoder and
    embeddings with a freshly initialised decoder)."""
    return ["random", *ladder, *[f"{m}-encoder" for m in ladder]]


def run(study, starts: list[str] | None = None, tasks: list[str] | None = None) -> list[dict]:
    """The transfer rows: random weights first (no pre-training needed), then each
    rung of the ladder: pre-train to it, probe it, fine-tune from it (and, when asked for, from its
    encoder alone). Writes transfer.json after each start."""
    t = study.preset.transfer
    ladder = [str(m) for m in t.ladder]
    starts = starts or ["random", *ladder]
    unknown = [s for s in starts if s not in start_names(ladder)]
    if unknown:
        raise SystemExit(f"[study] unknown --transfer_starts {unknown}; choose from {', '.join(start_names(ladder))}")
    tasks = tasks or list(FINETUNE_TASKS)
    if set(tasks) - set(FINETUNE_TASKS):
        raise SystemExit(
            f"[study] unknown --transfer_tasks {sorted(set(tasks) - set(FINETUNE_TASKS))}; choose from "
            f"{', '.join(FINETUNE_TASKS)}"
        )
    probes_path = os.path.join(study.folder, "probes.jsonl")
    for start_name in start_names(ladder):
        if start_name not in starts:
            continue
        rung, encoder_only = start_name.removesuffix("-encoder"), start_name.endswith("-encoder")
        checkpoint = None if start_name == "random" else study.pretrain("iid_denoising", int(rung))
        label = "random" if start_name == "random" else f"iid_denoising_{rung}x" + ("_encoder" if encoder_only else "")
        done = probe_rows(probes_path)
        for task in PROBE_TASKS:  # an encoder start's probes are its rung's (the same encoder): run once
            for seed in t.probe_seeds if checkpoint is None else (None,):
                key = checkpoint_key(checkpoint)
                if any(
                    r["task"] == PROBE_TASKS[task]
                    and checkpoint_key(r.get("checkpoint")) == key
                    and r.get("random_init_seed") == seed
                    for r in done
                ):
                    continue
                study.run_command(
                    probe_command(study, task, checkpoint, seed, probes_path),
                    f"probe {task} of {label.removesuffix('_encoder')}"
                    + (f", seed {seed}" if seed is not None else ""),
                )
        for task in tasks:
            for seed in t.seeds:
                study.finetune_transfer(task, label, checkpoint, seed, FRESH_DECODER if encoder_only else ())
        if not study.args.print_commands:
            rows = table(study, probes_path)
            write(
                study.folder,
                rows,
                {"preset": study.name, "scale_down": study.args.scale_down, "transfer": dataclasses.asdict(t)},
            )
    return [] if study.args.print_commands else table(study, probes_path)


def table(study, probes_path: str) -> list[dict]:
    """Every comparison whose runs have finished: per task and rung, fine-tuning and probe rows."""
    t, p = study.preset.transfer, study.preset
    runs = os.path.join(study.folder, "runs")

    def finetuned(task: str, label: str) -> list[dict]:
        dirs = [os.path.join(runs, f"transfer_{task}_{label}_seed{seed}") for seed in t.seeds]
        finished = [d for d in dirs if study.finished(d, study.steps(t.steps[task]))]
        return [select(d, task) for d in finished]

    probes = probe_rows(probes_path)
    rows = []
    for multiple in t.ladder:
        checkpoint = os.path.join(runs, "pretrain_iid_denoising", "checkpoints", str(study.pretrain_steps(multiple)))
        pretraining_flops = study.flops(
            study.pretrain_steps(multiple), p.pretrain_batch, study.pretrain_lengths("iid_denoising")
        )
        for task, (method, suffix) in itertools.product(FINETUNE_TASKS, FINETUNE_METHODS.items()):
            pretrained = finetuned(task, f"iid_denoising_{multiple}x{suffix}")
            random = finetuned(task, "random")
            if not pretrained or not random:
                continue
            finetuning_flops = study.flops(study.steps(t.steps[task]), t.batch, t.lengths[task])
            rows.append(
                comparison(
                    task,
                    multiple,
                    method,
                    [s["dev"] for s in pretrained],
                    [s["dev"] for s in random],
                    {
                        "pretraining_flops": pretraining_flops,
                        "finetuning_flops_per_run": finetuning_flops,
                        "epochs": study.epochs(
                            FINETUNE_TASKS[task][0], t.lengths[task], study.steps(t.steps[task]), t.batch
                        ),
                        "selected": {"pretrained": pretrained, "random": random},
                    },
                )
            )
        for task, name in PROBE_TASKS.items():
            pretrained = [
                r["score"]
                for r in probes
                if r["task"] == name and checkpoint_key(r.get("checkpoint")) == checkpoint_key(checkpoint)
            ]
            random = [
                r["score"]
                for r in probes
                if r["task"] == name and r.get("checkpoint") is None and r.get("random_init_seed") in t.probe_seeds
            ]
            if pretrained and random:
                rows.append(
                    comparison(
                        task, multiple, "probe", pretrained[-1:], random, {"pretraining_flops": pretraining_flops}
                    )
                )
    return rows
