"""The T5 paper's study (§3, Tables 1 and 4) as one program: pre-train, fine-tune, evaluate, tabulate.

For each study row it pre-trains with the row's objective (rows that share an objective share the
checkpoint), fine-tunes from that checkpoint on the GLUE and SuperGLUE tasks once per seed, and
scores every task at every fine-tuning checkpoint by decoding its validation split (INFERENCE_EVAL).
As in the paper, each task reports its best checkpoint; a benchmark's average is the mean of its
tasks' scores, a task with two metrics counting their mean. Finished runs are skipped and runs cut
short resume, so the same command continues a study. It writes `<out>/<preset>/results.json` and
`results.md` (the table, the paper's figures beside ours), again after each finished row. Rows an
earlier command measured with the same settings stay in the table, so rows can be run one at a time;
results made with other settings are moved aside to results-<time>.json first.

    python scripts/study.py --preset=cpu --rows=baseline,no_pretraining \\
        --glue_dir=GLUE_TSVS --superglue_dir=SUPERGLUE_JSONL --text_file_pattern='BOOKS/*.txt'
    python scripts/study.py --preset=paper --rows=baseline,prefix_lm --print_commands

With --rows=transfer (study_transfer.py) it measures transfer where small data lets it show:
single-task fine-tuning (SST-2 with 1,000 labels, STS-B) from random weights and from the i.i.d.
denoising pre-training at 1x, 2x and 4x its steps, five seeds each, checkpoints chosen on a held-out
slice of the training set; and linear probes of the frozen encoder. It writes transfer.json and
transfer.md beside results.json. Every row states its model FLOPs.

Presets:
  cpu    for a 2-core machine: the tiny T5 1.1-style model (models/tiny.gin with an 8,192-entry
         embedding: 2.9M parameters), a SentencePiece vocabulary of 8,000 pieces trained with
         `train-vocab` on --text_file_pattern, pre-training on those files (not C4): 4,500 steps of
         32 x 128 tokens (1.1e14 FLOPs; at 1,500 the loss still sat on its unigram plateau), about
         45 minutes (80 to 100 for the objectives whose targets are the whole text). Fine-tuning as
         the paper: GLUE's small tasks as one examples-proportional mixture, SuperGLUE's as another,
         no rate limit, about 10 epochs of each task; lr 3e-3 and dropout 0 for both starts (the
         paper: 1e-3 and 0.1, too slow at this size). Transfer rows: 320 steps of SST-2 1k (40
         epochs), 750 of STS-B (10 epochs), 4 and 7 minutes each.
  gpu    for one H100/H200-class GPU: T5 1.1 small in bfloat16, 8,000 pre-training steps of 128 x 512
         tokens (1.1e17 FLOPs, about 19 minutes on an H200), then the transfer rows (rung 1x, three
         seeds). Where TensorFlow cannot be installed, scripts/study_gpu.py runs the same rows from a
         bundle of token ids.
  paper  the paper's baseline: T5 1.0 base, C4, 2^19 pre-training steps of 128 x 512 tokens (about
         34B tokens), then 2^18 fine-tuning steps on glue_v002_proportional and, separately,
         super_glue_v102_proportional, dropout 0.1.
"""

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_transfer  # noqa: E402  (beside this file)

# Figures of the paper (Raffel et al., 2020): GLUE and SuperGLUE averages on the validation sets.
# Table 1 (baseline, no pre-training) and Table 4 (objectives); span corruption from Table 7 (span 3).
ROWS = {
    "baseline": ("iid_denoising", "Table 1/4: i.i.d. denoising, replace spans (the paper's baseline)", 83.28, 71.36),
    "no_pretraining": (None, "Table 1: no pre-training", 66.22, 53.04),
    "prefix_lm": ("prefix_lm", "Table 4: prefix language modelling", 80.69, 68.11),
    "bert_style": ("bert_style", "Table 4: BERT-style", 82.96, 69.85),
    "deshuffling": ("deshuffling", "Table 4: deshuffling", 73.17, 58.47),
    "span_corruption": ("span_corruption", "Table 7: span corruption, mean span 3", 83.49, 72.53),
    # Table 4 at equal pre-training FLOPs: the objectives whose targets are the whole text cost about
    # twice i.i.d. denoising's per step (cpu preset: 1.54e9 against 0.79e9 FLOPs a row), so the baseline
    # pre-trained twice as long (the compute ladder's 2x checkpoint) matches their FLOPs.
    "baseline_2x": ("iid_denoising", "Table 4 at equal FLOPs: i.i.d. denoising, twice the steps", 83.28, 71.36),
}
# Rows pre-trained for a multiple of the preset's steps (the same run, continued).
ROW_MULTIPLES = {"baseline_2x": 2}
GLUE_TASKS = (
    "glue_cola_v002",
    "glue_sst2_v002",
    "glue_mrpc_v002",
    "glue_stsb_v002",
    "glue_rte_v002",
    "glue_mnli_v002",
    "glue_mnli_matched_v002",
    "glue_mnli_mismatched_v002",
    "glue_qqp_v002",
    "glue_qnli_v002",
)
# Objectives whose targets are the whole text need targets as long as the inputs.
FULL_TARGETS = ("prefix_lm", "bert_style", "deshuffling", "mass_style")


@dataclasses.dataclass(frozen=True)
class Preset:
    model_gin: tuple[str, ...]
    vocab_size: int  # the model's embedding size
    vocabulary: str | None  # a SentencePiece model; None: trained with train-vocab on the text files
    pretrain_source: str  # the task prefix: "text" (TEXT_FILE_PATTERN) or "c4_v220"
    pretrain_steps: int
    pretrain_batch: int
    input_length: int
    targets_length: int  # for objectives that return a part of the text
    pretrain_settings: dict
    finetune_mixtures: tuple[str, ...]  # fine-tuned one after the other, each from the pre-trained start
    finetune_steps: dict  # mixture -> steps
    finetune_batch: int
    finetune_lengths: dict
    finetune_period: dict  # mixture -> steps between checkpoints and evaluations
    finetune_settings: dict  # gin macros; DROPOUT_RATE is stated beside the table
    pretrain_dropout: float
    seeds: tuple[int, ...]
    transfer: "study_transfer.TransferSettings | None"  # the transfer rows; None: not defined for the preset


# The transfer rows (study_transfer.py) at CPU scale. Measured packing with the study's 8,000-piece
# vocabulary: SST-2 1k holds 3.9 examples per 128-token row (8 steps of 32 rows an epoch), STS-B with
# 16 target tokens 2.2 (74 steps an epoch): 320 steps are 40 epochs of SST-2 1k, 750 are 10 of STS-B.
# Each run is evaluated 10 times (every 4 epochs of SST-2 1k, every epoch of STS-B).
CPU_TRANSFER = study_transfer.TransferSettings(
    steps={"sst2_1k": 320, "stsb": 750},
    period={"sst2_1k": 32, "stsb": 75},
    lengths={"sst2_1k": {"inputs": 128, "targets": 8}, "stsb": {"inputs": 128, "targets": 16}},
    batch=32,
    settings={"LEARNING_RATE": 3e-3, "DROPOUT_RATE": 0.0, "LOG_PERIOD": 100, "EVAL_STEPS": 1},
    seeds=(0, 1, 2, 3, 4),
    ladder=(1, 2, 4),
    probe_seeds=(0, 1, 2, 3, 4),
)

PRESETS = {
    "cpu": Preset(
        model_gin=("models/tiny.gin",),
        vocab_size=8192,
        vocabulary=None,
        pretrain_source="text",
        pretrain_steps=4500,
        pretrain_batch=32,
        input_length=128,
        targets_length=48,
        pretrain_settings={"WARMUP_STEPS": 1000, "LOG_PERIOD": 250},
        # As the paper: GLUE's and SuperGLUE's tasks each one examples-proportional mixture, no limit,
        # which gives every task of a mixture the same number of epochs. Measured packing: 2.64 GLUE
        # and 1.05 SuperGLUE examples per 128-token row, so 10,500 steps are 10.1 epochs of each GLUE
        # task (SST-2's 67k examples included) and 900 steps 10.1 of each SuperGLUE task.
        finetune_mixtures=("glue_small_proportional", "super_glue_small_proportional"),
        finetune_steps={"glue_small_proportional": 10500, "super_glue_small_proportional": 900},
        finetune_batch=32,
        finetune_lengths={"inputs": 128, "targets": 8},
        finetune_period={"glue_small_proportional": 1500, "super_glue_small_proportional": 150},
        # Measured on SST-2 (study/README.md): 1e-3, the paper's rate, is too slow for a run this
        # short, and dropout 0.1 on a model pre-trained without dropout holds a pre-trained start on
        # one class for its first 200-400 steps. Both starts use the same settings.
        finetune_settings={"LEARNING_RATE": 3e-3, "DROPOUT_RATE": 0.0, "LOG_PERIOD": 250, "EVAL_STEPS": 1},
        pretrain_dropout=0.0,
        seeds=(0, 1),
        transfer=CPU_TRANSFER,
    ),
    # For one H100/H200-class GPU: T5 1.1 small (8,192-entry embeddings, 52M parameters) in bfloat16,
    # 8,000 pre-training steps of 128 x 512 tokens: 1.1e17 model FLOPs (t5pod.flops). Measured on an
    # H200 (scripts/study_gpu_run.py --profile_steps, jax 0.11.2): 142 ms a step, 100 TFLOP/s of model
    # FLOPs (10% of its 989 TFLOP/s bfloat16 peak), so about 19 minutes, after about 100 s of setup and
    # compilation; then the transfer rows from every start with three seeds (a few minutes more).
    "gpu": Preset(
        model_gin=("models/t5_1_1/small.gin",),
        vocab_size=8192,
        vocabulary=None,
        pretrain_source="text",
        pretrain_steps=8000,
        pretrain_batch=128,
        input_length=512,
        targets_length=192,
        pretrain_settings={"WARMUP_STEPS": 1000, "LOG_PERIOD": 100, "t5pod.T5Config.dtype": "bfloat16"},
        finetune_mixtures=("glue_small_proportional", "super_glue_small_proportional"),
        finetune_steps={"glue_small_proportional": 2000, "super_glue_small_proportional": 300},
        finetune_batch=32,
        finetune_lengths={"inputs": 128, "targets": 8},
        finetune_period={"glue_small_proportional": 500, "super_glue_small_proportional": 50},
        finetune_settings={"LEARNING_RATE": 1e-3, "DROPOUT_RATE": 0.0, "LOG_PERIOD": 100, "EVAL_STEPS": 1},
        pretrain_dropout=0.0,
        seeds=(0,),
        transfer=dataclasses.replace(
            CPU_TRANSFER,
            ladder=(1,),
            seeds=(0, 1, 2),
            probe_seeds=(0, 1, 2),
            settings={"LEARNING_RATE": 1e-3, "DROPOUT_RATE": 0.0, "LOG_PERIOD": 100, "EVAL_STEPS": 1},
        ),
    ),
    # The paper's baseline (§3.1): T5 1.0 base on C4, 2^19 pre-training steps of 128 x 512 tokens
    # (about 34B tokens), then 2^18 fine-tuning steps on each benchmark's mixture, dropout 0.1.
    "paper": Preset(
        model_gin=("models/t5_1_0/base.gin",),
        vocab_size=32128,
        vocabulary="gs://t5-data/vocabs/cc_all.32000/sentencepiece.model",
        pretrain_source="c4_v220",
        pretrain_steps=2**19,
        pretrain_batch=128,
        input_length=512,
        targets_length=192,
        pretrain_settings={},
        finetune_mixtures=("glue_v002_proportional", "super_glue_v102_proportional"),
        finetune_steps={"glue_v002_proportional": 2**18, "super_glue_v102_proportional": 2**18},
        finetune_batch=128,
        finetune_lengths={"inputs": 512, "targets": 84},
        finetune_period={"glue_v002_proportional": 5000, "super_glue_v102_proportional": 5000},
        finetune_settings={"DROPOUT_RATE": 0.1},
        pretrain_dropout=0.0,
        seeds=(0,),
        transfer=None,
    ),
}


def _train_command(gin_files, settings: dict) -> list[str]:
    return (
        [sys.executable, "-m", "t5pod", "train"]
        + [f"--gin_file={f}" for f in gin_files]
        + [f"--gin.{name}={value!r}" for name, value in settings.items()]
    )


def _finished(model_dir: str, steps: int) -> bool:
    from t5pod import checkpoints

    return os.path.isdir(model_dir) and (checkpoints.latest_step(model_dir) or 0) >= steps


class Study:
    def __init__(self, preset_name: str, out: str, args):
        self.name, self.preset = preset_name, PRESETS[preset_name]
        self.folder = os.path.abspath(os.path.join(out, preset_name))
        self.args = args
        self.commands: list[list[str]] = []

    def _run(self, command: list[str], model_dir: str, steps: int, what: str):
        if not self.args.print_commands and _finished(model_dir, steps):
            print(f"[study] {what}: finished earlier, skipped ({model_dir})", flush=True)
            return
        self.commands.append(command)
        if self.args.print_commands:
            return
        print(f"[study] {what}: {shlex.join(command[1:])}", flush=True)
        start = time.time()
        returncode = self._logged(command)
        if returncode:
            raise SystemExit(
                f"[study] {what} failed (exit {returncode}); its output is in "
                f"{os.path.join(self.folder, 'log.txt')}. Run the same command again to resume."
            )
        if not _finished(model_dir, steps):  # stopped early with its checkpoint saved (SIGTERM exits 0)
            from t5pod import checkpoints

            raise SystemExit(
                f"[study] {what} stopped at step {checkpoints.latest_step(model_dir) or 0} of {steps} "
                "(preempted?); the runs after it need it whole. Run the same command again to resume."
            )
        print(f"[study] {what}: done in {time.time() - start:.0f} s", flush=True)

    @staticmethod
    def finished(model_dir: str, steps: int) -> bool:
        return _finished(model_dir, steps)

    def run_command(self, command: list[str], what: str):
        """A command that leaves no run folder (a probe): run unless only printing; its output to log.txt."""
        self.commands.append(command)
        if self.args.print_commands:
            return
        print(f"[study] {what}", flush=True)
        if self._logged(command):
            raise SystemExit(f"[study] {what} failed; its output is in {os.path.join(self.folder, 'log.txt')}.")

    def _logged(self, command: list[str]) -> int:
        """Runs command with its output appended to log.txt (after the command line); its exit status."""
        env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
        with open(os.path.join(self.folder, "log.txt"), "a", encoding="utf-8") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    def vocabulary(self) -> str:
        if self.preset.vocabulary:
            return self.preset.vocabulary
        path = os.path.join(self.folder, "vocab", "spm8k.model")
        if not os.path.exists(path) and not self.args.print_commands:
            command = [
                sys.executable,
                "-m",
                "t5pod",
                "train-vocab",
                f"--input={self.args.text_file_pattern}",
                f"--output={path}",
                f"--vocab_size={self.args.vocab_pieces}",
                "--max_sentences=400000",
            ]
            print(f"[study] vocabulary: {shlex.join(command[1:])}", flush=True)
            if subprocess.run(command, stdout=subprocess.DEVNULL).returncode:  # train-vocab's error went to stderr
                raise SystemExit(
                    f"[study] the vocabulary could not be trained from {self.args.text_file_pattern!r}; "
                    "see train-vocab's error above."
                )
        return path

    def data_settings(self) -> dict:
        settings = {"VOCABULARY_PATH": self.vocabulary(), "t5pod.T5Config.vocab_size": self.preset.vocab_size}
        if self.args.text_paragraphs:
            settings["TEXT_PARAGRAPHS"] = True
        for flag, macro in (
            ("text_file_pattern", "TEXT_FILE_PATTERN"),
            ("glue_dir", "GLUE_DIR"),
            ("superglue_dir", "SUPERGLUE_DIR"),
        ):
            if getattr(self.args, flag):
                settings[macro] = getattr(self.args, flag)
        return settings

    def pretrain(self, objective: str, multiple: int = 1) -> str:
        """The objective's pre-training run to `multiple` x the preset's steps (a longer one continues
        the same run); returns its checkpoint at exactly that step."""
        p = self.preset
        model_dir = os.path.join(self.folder, "runs", f"pretrain_{objective}")
        steps = self.pretrain_steps(multiple)
        settings = {
            **self.data_settings(),
            "MODEL_DIR": model_dir,
            "MIXTURE_OR_TASK_NAME": f"{p.pretrain_source}_{objective}",
            "TASK_FEATURE_LENGTHS": self.pretrain_lengths(objective),
            "TRAIN_STEPS": steps,
            "BATCH_SIZE": p.pretrain_batch,
            "DROPOUT_RATE": p.pretrain_dropout,
            # Three checkpoints per 1x, so a pre-training cut short resumes from at most a third
            # back, and every rung of the compute ladder is a kept checkpoint.
            "CHECKPOINT_PERIOD": max(1, self.pretrain_steps(1) // 3),
            **p.pretrain_settings,
        }
        self._run(
            _train_command(("runs/pretrain.gin",) + p.model_gin, settings),
            model_dir,
            steps,
            f"pre-training {objective}" + (f" to {multiple}x" if multiple > 1 else ""),
        )
        return os.path.join(model_dir, "checkpoints", str(steps))

    def pretrain_steps(self, multiple: int = 1) -> int:
        return self.steps(self.preset.pretrain_steps) * multiple

    def pretrain_lengths(self, objective: str) -> dict:
        p = self.preset
        return {"inputs": p.input_length, "targets": p.input_length if objective in FULL_TARGETS else p.targets_length}

    def finetune(self, row: str, mixture: str, start: str | None, seed: int) -> str:
        p = self.preset
        model_dir = os.path.join(self.folder, "runs", f"finetune_{row}_{mixture}_seed{seed}")
        steps, period = self.steps(p.finetune_steps[mixture]), self.steps(p.finetune_period[mixture])
        self._finetune_run(
            model_dir,
            mixture,
            start,
            seed,
            p.finetune_lengths,
            steps,
            period,
            p.finetune_batch,
            p.finetune_settings,
            f"fine-tuning {row} on {mixture}, seed {seed}",
        )
        return model_dir

    def finetune_transfer(self, task: str, start_name: str, start: str | None, seed: int, skip: tuple = ()) -> str:
        """One transfer fine-tuning run; skip: parameter patterns left at their fresh initialisation."""
        t = self.preset.transfer
        model_dir = os.path.join(self.folder, "runs", f"transfer_{task}_{start_name}_seed{seed}")
        settings = {**t.settings, **({"INITIAL_CHECKPOINT_SKIP": list(skip)} if skip else {})}
        self._finetune_run(
            model_dir,
            study_transfer.FINETUNE_TASKS[task][0],
            start,
            seed,
            t.lengths[task],
            self.steps(t.steps[task]),
            self.steps(t.period[task]),
            t.batch,
            settings,
            f"transfer fine-tuning {task} from {start_name}, seed {seed}",
        )
        return model_dir

    def _finetune_run(self, model_dir, mixture, start, seed, lengths, steps, period, batch, extra, what):
        settings = {
            **self.data_settings(),
            "MODEL_DIR": model_dir,
            "MIXTURE_OR_TASK_NAME": mixture,
            "INITIAL_CHECKPOINT_PATH": start,
            "RANDOM_SEED": seed,
            "TASK_FEATURE_LENGTHS": lengths,
            "TRAIN_STEPS": steps,
            "BATCH_SIZE": batch,
            "CHECKPOINT_PERIOD": period,
            "EVAL_PERIOD": period,
            "KEEP_CHECKPOINTS": 1,
            "INFERENCE_EVAL": True,
            **extra,
        }
        self._run(_train_command(("runs/finetune.gin",) + self.preset.model_gin, settings), model_dir, steps, what)

    def steps(self, steps: int) -> int:
        return max(1, steps // self.args.scale_down)

    def examples_per_row(self, mixture: str, lengths: dict) -> float:
        """Training examples per packed row of a mixture, measured on 2,000 rows (`t5pod data --stats`)
        and remembered in packing.json."""
        path = os.path.join(self.folder, "packing.json")
        known = json.load(open(path, encoding="utf-8")) if os.path.exists(path) else {}
        key = f"{mixture} {lengths['inputs']}/{lengths['targets']}"
        if key not in known:
            settings = {**self.data_settings(), "TASK_FEATURE_LENGTHS": lengths}
            command = [
                sys.executable,
                "-m",
                "t5pod",
                "data",
                f"--task={mixture}",
                "--split=train",
                "--stats=2000",
                "--features=model",
            ] + [f"--gin.{k}={v!r}" for k, v in settings.items()]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"[study] measuring {mixture}'s packing failed: {done.stderr.strip()[-500:]}")
            known[key] = json.loads(done.stdout.strip().splitlines()[-1])["examples_per_row"]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(known, f, indent=1, sort_keys=True)
        return known[key]

    def epochs(self, mixture: str, lengths: dict, steps: int, batch: int) -> dict[str, float]:
        """Epochs of each training task of a mixture in `steps` (examples-proportional mixing without a
        limit gives every member the same number)."""
        sizes = training_sizes(mixture)
        seen = steps * batch * self.examples_per_row(mixture, lengths)
        return {task: round(seen / sum(sizes.values()), 2) for task in sizes}

    @functools.cached_property
    def model_config(self):
        """The preset's T5Config, from its model gin files (parsed once)."""
        from t5pod import ginconf

        ginconf.parse(list(self.preset.model_gin), [f"t5pod.T5Config.vocab_size = {self.preset.vocab_size}"])
        return ginconf.model_config()

    def model_flops_per_example(self, lengths: dict) -> float:
        """t5pod.flops's training FLOPs of one packed row of these lengths, for the preset's model."""
        from t5pod import flops

        return flops.train_flops_per_example(self.model_config, lengths["inputs"], lengths["targets"])

    def flops(self, steps: int, batch: int, lengths: dict) -> float:
        return steps * batch * self.model_flops_per_example(lengths)


def training_sizes(mixture: str) -> dict[str, int]:
    """Training examples of each member of a fine-tuning mixture that trains (rate above 0)."""
    from t5pod.tasks import mixtures, transfer

    sizes = {**mixtures.GLUE_SIZES, **mixtures.SUPER_GLUE_SIZES}
    for name, (base, train, heldout) in transfer.SUBSETS.items():
        sizes[name] = train if train is not None else sizes[base] - heldout
    members = {
        "glue_small_proportional": mixtures.SMALL_GLUE_TASKS,
        "super_glue_small_proportional": mixtures.SMALL_SUPER_GLUE_TASKS,
        **{transfer.mixture_name(n): [n] for n in transfer.SUBSETS},
    }.get(mixture)
    if members is None:
        return {}  # the paper preset's full mixtures: not counted here
    return {task: sizes[task] for task in members if sizes[task]}


def task_scores(model_dir: str) -> dict[str, dict]:
    """Per task: the metrics of its best evaluation (highest mean of its metrics) and that step."""
    folder = os.path.join(model_dir, "inference_eval")
    best = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith("-metrics.jsonl"):
            continue
        task = name[: -len("-metrics.jsonl")]
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                metrics = {k: v for k, v in row.items() if k not in ("step", "examples")}
                # A constant prediction has no correlation (NaN); it scores 0, as no skill.
                score = statistics.fmean(0.0 if math.isnan(v) else v for v in metrics.values())
                if task not in best or score > best[task]["score"]:
                    best[task] = {"step": row["step"], "score": score, "metrics": metrics}
    return best


def benchmark_averages(scores: dict[str, dict]) -> dict[str, float]:
    glue = [s["score"] for t, s in scores.items() if t in GLUE_TASKS]
    super_glue = [s["score"] for t, s in scores.items() if t.startswith("super_glue")]
    return {
        "glue_average": statistics.fmean(glue) if glue else None,
        "super_glue_average": statistics.fmean(super_glue) if super_glue else None,
    }


def _mean_spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "spread": (max(values) - min(values)) / 2, "runs": values}


def summarise(row: str, runs: list[dict]) -> dict:
    """Mean and half-range over seeds of every task score and of the benchmark averages."""
    tasks = sorted({t for run in runs for t in run["tasks"]})
    summary = {
        "tasks": {t: _mean_spread([run["tasks"][t]["score"] for run in runs if t in run["tasks"]]) for t in tasks}
    }
    for average in ("glue_average", "super_glue_average"):
        values = [run[average] for run in runs if run[average] is not None]
        summary[average] = _mean_spread(values) if values else None
    objective, description, paper_glue, paper_super_glue = ROWS[row]
    summary.update(
        description=description,
        objective=objective,
        paper_glue_average=paper_glue,
        paper_super_glue_average=paper_super_glue,
    )
    return summary


def _cell(value: dict | None) -> str:
    return "–" if value is None else f"{value['mean']:.1f} ± {value['spread']:.1f}"


def markdown(results: dict) -> str:
    rows = results["rows"]
    tasks = sorted({t for r in rows.values() for t in r["tasks"]}, key=lambda t: (not t.startswith("glue"), t))
    short = [
        t.replace("_v002", "").replace("_v102", "").replace("super_glue_", "sg_").replace("glue_", "") for t in tasks
    ]
    lines = [
        "| row | GLUE avg | paper GLUE | SuperGLUE avg | paper SuperGLUE | "
        + " | ".join(short)
        + " | pre-training FLOPs | fine-tuning FLOPs per seed |",
        "|---" * (7 + len(tasks)) + "|",
    ]
    for name, r in rows.items():
        flops = r.get("flops") or {}
        cells = [
            name,
            _cell(r["glue_average"]),
            f"{r['paper_glue_average']:.2f}",
            _cell(r["super_glue_average"]),
            f"{r['paper_super_glue_average']:.2f}",
        ] + [_cell(r["tasks"].get(t)) for t in tasks]
        cells += [f"{flops[k]:.2e}" if k in flops else "–" for k in ("pretraining", "finetuning_per_seed")]
        lines.append("| " + " | ".join(cells) + " |")
    settings = results.get("preset_settings", {})
    dropout = (settings.get("finetune_settings") or {}).get("DROPOUT_RATE")
    if dropout is not None:
        lines.append(
            f"\nDropout: pre-training {settings.get('pretrain_dropout', 0.0)}, fine-tuning {dropout}, "
            "the same for every start. Mean ± half-range over seeds; each task at its best evaluation."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument(
        "--rows",
        default="baseline,no_pretraining,prefix_lm,bert_style,deshuffling",
        help=f"comma-separated, from: {', '.join(ROWS)}, and transfer (the transfer rows: "
        "single-task fine-tuning and linear probes along a compute ladder)",
    )
    parser.add_argument(
        "--transfer_starts",
        default="",
        help="with transfer: comma-separated starts to run, from random, the ladder's multiples "
        "(e.g. random,1) and their encoder starts (e.g. 1-encoder: the pre-trained encoder "
        "with a fresh decoder); default random and the multiples. The table is written from "
        "every finished run.",
    )
    parser.add_argument(
        "--transfer_tasks",
        default="",
        help=f"with transfer: comma-separated fine-tuning tasks to run, from "
        f"{', '.join(study_transfer.FINETUNE_TASKS)}; default all",
    )
    parser.add_argument("--out", default="study", help="results go to OUT/PRESET/")
    parser.add_argument("--text_file_pattern", help="the pre-training text for the text source (cpu preset)")
    parser.add_argument(
        "--text_paragraphs",
        action="store_true",
        help="one pre-training document per blank-line-separated block of the text, not per line "
        "(hard-wrapped books: a line is a fragment of a sentence)",
    )
    parser.add_argument("--glue_dir", help="local GLUE TSVs (GLUE_DIR); unset: TFDS")
    parser.add_argument("--superglue_dir", help="local SuperGLUE JSONL (SUPERGLUE_DIR); unset: TFDS")
    parser.add_argument("--vocab_pieces", type=int, default=8000, help="pieces of the trained vocabulary")
    parser.add_argument("--scale_down", type=int, default=1, help="divide every step count by this (for tests)")
    parser.add_argument("--seeds", help="comma-separated fine-tuning seeds, instead of the preset's")
    parser.add_argument(
        "--finetune_learning_rate",
        type=float,
        help="the fine-tuning learning rate of every start (Tables 1 and 4 and the transfer rows), "
        "instead of the preset's",
    )
    parser.add_argument(
        "--print_commands",
        action="store_true",
        help="print the commands (e.g. to run on a pod slice) instead of running them",
    )
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS and r != "transfer"]
    if unknown or not rows:
        parser.error(f"unknown --rows {unknown or args.rows!r}; choose from {', '.join(ROWS)}")
    if args.scale_down < 1 or args.vocab_pieces < 200:
        parser.error("--scale_down must be at least 1 and --vocab_pieces at least 200")
    if args.finetune_learning_rate is not None and not 0 < args.finetune_learning_rate < 1:
        parser.error(f"--finetune_learning_rate must be in (0, 1), not {args.finetune_learning_rate}")
    from t5pod import cli

    cli.import_tensorflow_quietly()  # this process reads checkpoints: TensorFlow comes in, with its start-up lines
    study = Study(args.preset, args.out, args)
    if args.seeds:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        transfer = study.preset.transfer and dataclasses.replace(study.preset.transfer, seeds=seeds, probe_seeds=seeds)
        study.preset = dataclasses.replace(study.preset, seeds=seeds, transfer=transfer)
    if args.finetune_learning_rate is not None:
        rate = {"LEARNING_RATE": args.finetune_learning_rate}
        transfer = study.preset.transfer and dataclasses.replace(
            study.preset.transfer, settings={**study.preset.transfer.settings, **rate}
        )
        study.preset = dataclasses.replace(
            study.preset, finetune_settings={**study.preset.finetune_settings, **rate}, transfer=transfer
        )
    if "transfer" in rows and study.preset.transfer is None:
        parser.error(f"the {args.preset} preset defines no transfer rows")
    if study.preset.pretrain_source == "text" and not args.text_file_pattern:
        parser.error(
            f"the {args.preset} preset pre-trains on your text: set --text_file_pattern "
            "(make study: STUDY_TEXT='/data/books/*.txt')"
        )
    os.makedirs(study.folder, exist_ok=True)
    table_rows = [r for r in rows if r != "transfer"]
    if table_rows:
        run_table_rows(study, table_rows)
    if "transfer" in rows:
        starts = [s for s in args.transfer_starts.split(",") if s]
        tasks = [t for t in args.transfer_tasks.split(",") if t]
        transfer = study_transfer.run(study, starts or None, tasks or None)
        if not args.print_commands:
            print(study_transfer.markdown(transfer))
    if args.print_commands:  # for another machine: its own `python`
        print("\n".join(shlex.join(["python", *c[1:]]) for c in study.commands))
    return 0


def run_table_rows(study: "Study", rows: list[str]):
    """Tables 1 and 4: pre-train per objective, fine-tune per benchmark mixture and seed, tabulate."""
    p = study.preset
    settings = {k: v for k, v in dataclasses.asdict(p).items() if k != "transfer"}
    results = {"preset": study.name, "preset_settings": settings, "scale_down": study.args.scale_down, "rows": {}}
    if not study.args.print_commands:
        results["rows"] = earlier_rows(study.folder, results)
    for row in rows:
        objective = ROWS[row][0]
        start = study.pretrain(objective, ROW_MULTIPLES.get(row, 1)) if objective else None
        runs = []
        for seed in p.seeds:
            scores = {}
            for mixture in p.finetune_mixtures:
                scores.update(task_scores(study.finetune(row, mixture, start, seed)))
            runs.append({"seed": seed, "tasks": scores, **benchmark_averages(scores)})
        if not study.args.print_commands:
            results["rows"][row] = {
                **summarise(row, runs),
                "seeds": runs,
                "flops": row_flops(study, objective, ROW_MULTIPLES.get(row, 1)),
            }
            write_results(study.folder, results)  # after each row: a study cut short keeps the rows it finished
    if not study.args.print_commands:
        print(markdown(results))


def row_flops(study: "Study", objective: str | None, multiple: int = 1) -> dict:
    """Model FLOPs (t5pod.flops) of a row's pre-training and of one seed's fine-tunings; the epochs of
    each fine-tuning task."""
    p = study.preset
    pretraining = (
        study.flops(study.pretrain_steps(multiple), p.pretrain_batch, study.pretrain_lengths(objective))
        if objective
        else 0.0
    )
    finetuning = sum(
        study.flops(study.steps(p.finetune_steps[m]), p.finetune_batch, p.finetune_lengths) for m in p.finetune_mixtures
    )
    epochs = {}
    for m in p.finetune_mixtures:
        if training_sizes(m):
            epochs.update(study.epochs(m, p.finetune_lengths, study.steps(p.finetune_steps[m]), p.finetune_batch))
    return {"pretraining": pretraining, "finetuning_per_seed": finetuning, "epochs": epochs}


def earlier_rows(folder: str, results: dict) -> dict:
    """The rows of the folder's results.json if it was made with the same settings; else it is moved aside."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        earlier = json.load(f)
    settings = json.loads(
        json.dumps({k: results[k] for k in ("preset", "preset_settings", "scale_down")})
    )  # tuples: lists
    same = all(earlier.get(k) == v for k, v in settings.items())
    if same:
        return earlier["rows"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("results.json", "results.md"):
        if os.path.exists(os.path.join(folder, name)):
            os.replace(os.path.join(folder, name), os.path.join(folder, name.replace("results", f"results-{stamp}")))
    print(f"[study] {path} was made with other settings; moved aside to results-{stamp}.json", flush=True)
    return {}


def write_results(folder: str, results: dict):
    """results.json and results.md (the table), each replaced whole so a reader never sees half a file."""
    for name, text in (
        ("results.json", json.dumps(results, indent=1, sort_keys=True)),
        ("results.md", markdown(results)),
    ):
        path = os.path.join(folder, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
