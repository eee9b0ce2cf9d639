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

Presets:
  cpu    for a 2-core machine (a pre-training takes about 45 minutes, 80 to 100 for the objectives
         whose targets are the whole text, and a fine-tuning about 12; run rows over several
         sessions if need be: finished runs are skipped): the tiny T5 1.1-style model (models/tiny.gin with
         an 8,192-entry embedding: 2.9M parameters), a SentencePiece vocabulary of 8,000 pieces trained
         with `train-vocab` on --text_file_pattern, pre-training on those files (not C4), and one
         fine-tuning mixture of the GLUE and SuperGLUE tasks with small training sets
         (glue_super_glue_small_proportional: CoLA, SST-2, MRPC, STS-B, RTE, CB, RTE, WSC). 4,500
         pre-training steps: at 1,500 the loss still sat on its unigram plateau (broken near 1,700).
         Fine-tuning: 2,000 steps at lr 3e-3 with dropout 0 (the paper: 1e-3 and 0.1, too slow here).
  paper  the paper's baseline: T5 1.0 base, C4, 2^18 pre-training steps of 128 x 512 tokens, then
         2^18 fine-tuning steps on glue_v002_proportional and super_glue_v102_proportional.
"""

import argparse
import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time

# Figures of the paper (Raffel et al., 2020): GLUE and SuperGLUE averages on the validation sets.
# Table 1 (baseline, no pre-training) and Table 4 (objectives); span corruption from Table 7 (span 3).
ROWS = {
    "baseline": ("iid_denoising", "Table 1/4: i.i.d. denoising, replace spans (the paper's baseline)", 83.28, 71.36),
    "no_pretraining": (None, "Table 1: no pre-training", 66.22, 53.04),
    "prefix_lm": ("prefix_lm", "Table 4: prefix language modelling", 80.69, 68.11),
    "bert_style": ("bert_style", "Table 4: BERT-style", 82.96, 69.85),
    "deshuffling": ("deshuffling", "Table 4: deshuffling", 73.17, 58.47),
    "span_corruption": ("span_corruption", "Table 7: span corruption, mean span 3", 83.49, 72.53),
}
GLUE_TASKS = ("glue_cola_v002", "glue_sst2_v002", "glue_mrpc_v002", "glue_stsb_v002", "glue_rte_v002",
              "glue_mnli_v002", "glue_mnli_matched_v002", "glue_mnli_mismatched_v002", "glue_qqp_v002",
              "glue_qnli_v002")
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
    finetune_mixtures: tuple[str, ...]
    finetune_steps: int
    finetune_batch: int
    finetune_lengths: dict
    finetune_period: int  # checkpoints and evaluations
    finetune_settings: dict
    seeds: tuple[int, ...]


PRESETS = {
    "cpu": Preset(
        model_gin=("models/tiny.gin",), vocab_size=8192, vocabulary=None, pretrain_source="text",
        pretrain_steps=4500, pretrain_batch=32, input_length=128, targets_length=48,
        pretrain_settings={"WARMUP_STEPS": 1000, "LOG_PERIOD": 250},
        finetune_mixtures=("glue_super_glue_small_proportional",), finetune_steps=2000, finetune_batch=32,
        finetune_lengths={"inputs": 128, "targets": 8}, finetune_period=500,
        # Measured on SST-2 (README, "The study"): 1e-3, the paper's rate, is too slow for a run this
        # short, and dropout 0.1 on a model pre-trained without dropout holds a pre-trained start on
        # one class for its first 200-400 steps; 600 steps leave the mixture's tasks at chance.
        finetune_settings={"LEARNING_RATE": 3e-3, "DROPOUT_RATE": 0.0, "MIXING_RATE_LIMIT": 8192, "LOG_PERIOD": 250,
                           "EVAL_STEPS": 1},
        seeds=(0, 1)),
    "paper": Preset(
        model_gin=("models/t5_1_0/base.gin",), vocab_size=32128,
        vocabulary="gs://t5-data/vocabs/cc_all.32000/sentencepiece.model", pretrain_source="c4_v220",
        pretrain_steps=2**18, pretrain_batch=128, input_length=512, targets_length=192, pretrain_settings={},
        finetune_mixtures=("glue_v002_proportional", "super_glue_v102_proportional"), finetune_steps=2**18,
        finetune_batch=128, finetune_lengths={"inputs": 512, "targets": 84}, finetune_period=5000,
        finetune_settings={}, seeds=(0,)),
}


def _train_command(gin_files, settings: dict) -> list[str]:
    return ([sys.executable, "-m", "t5pod", "train"] + [f"--gin_file={f}" for f in gin_files]
            + [f"--gin.{name}={value!r}" for name, value in settings.items()])


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
        env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
        with open(os.path.join(self.folder, "log.txt"), "a", encoding="utf-8") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if result.returncode:
            raise SystemExit(f"[study] {what} failed (exit {result.returncode}); its output is in "
                             f"{os.path.join(self.folder, 'log.txt')}. Run the same command again to resume.")
        if not _finished(model_dir, steps):  # stopped early with its checkpoint saved (SIGTERM exits 0)
            from t5pod import checkpoints
            raise SystemExit(f"[study] {what} stopped at step {checkpoints.latest_step(model_dir) or 0} of {steps} "
                             "(preempted?); the runs after it need it whole. Run the same command again to resume.")
        print(f"[study] {what}: done in {time.time() - start:.0f} s", flush=True)

    def vocabulary(self) -> str:
        if self.preset.vocabulary:
            return self.preset.vocabulary
        path = os.path.join(self.folder, "vocab", "spm8k.model")
        if not os.path.exists(path) and not self.args.print_commands:
            command = [sys.executable, "-m", "t5pod", "train-vocab", f"--input={self.args.text_file_pattern}",
                       f"--output={path}", f"--vocab_size={self.args.vocab_pieces}", "--max_sentences=400000"]
            print(f"[study] vocabulary: {shlex.join(command[1:])}", flush=True)
            if subprocess.run(command, stdout=subprocess.DEVNULL).returncode:  # train-vocab's error went to stderr
                raise SystemExit(f"[study] the vocabulary could not be trained from {self.args.text_file_pattern!r}; "
                                 "see train-vocab's error above.")
        return path

    def data_settings(self) -> dict:
        settings = {"VOCABULARY_PATH": self.vocabulary(), "t5pod.T5Config.vocab_size": self.preset.vocab_size}
        for flag, macro in (("text_file_pattern", "TEXT_FILE_PATTERN"), ("glue_dir", "GLUE_DIR"),
                            ("superglue_dir", "SUPERGLUE_DIR")):
            if getattr(self.args, flag):
                settings[macro] = getattr(self.args, flag)
        return settings

    def pretrain(self, objective: str) -> str:
        p = self.preset
        model_dir = os.path.join(self.folder, "runs", f"pretrain_{objective}")
        targets = p.input_length if objective in FULL_TARGETS else p.targets_length
        settings = {**self.data_settings(), "MODEL_DIR": model_dir,
                    "MIXTURE_OR_TASK_NAME": f"{p.pretrain_source}_{objective}",
                    "TASK_FEATURE_LENGTHS": {"inputs": p.input_length, "targets": targets},
                    "TRAIN_STEPS": self.steps(p.pretrain_steps), "BATCH_SIZE": p.pretrain_batch,
                    # Three checkpoints, so a pre-training cut short resumes from at most a third back.
                    "CHECKPOINT_PERIOD": max(1, self.steps(p.pretrain_steps) // 3), **p.pretrain_settings}
        self._run(_train_command(("runs/pretrain.gin",) + p.model_gin, settings), model_dir,
                  self.steps(p.pretrain_steps), f"pre-training {objective}")
        return model_dir

    def finetune(self, row: str, mixture: str, start: str | None, seed: int) -> str:
        p = self.preset
        model_dir = os.path.join(self.folder, "runs", f"finetune_{row}_{mixture}_seed{seed}")
        steps, period = self.steps(p.finetune_steps), self.steps(p.finetune_period)
        settings = {**self.data_settings(), "MODEL_DIR": model_dir, "MIXTURE_OR_TASK_NAME": mixture,
                    "INITIAL_CHECKPOINT_PATH": start, "RANDOM_SEED": seed, "TASK_FEATURE_LENGTHS": p.finetune_lengths,
                    "TRAIN_STEPS": steps, "BATCH_SIZE": p.finetune_batch, "CHECKPOINT_PERIOD": period,
                    "EVAL_PERIOD": period, "KEEP_CHECKPOINTS": 1, "INFERENCE_EVAL": True, **p.finetune_settings}
        self._run(_train_command(("runs/finetune.gin",) + p.model_gin, settings), model_dir, steps,
                  f"fine-tuning {row} on {mixture}, seed {seed}")
        return model_dir

    def steps(self, steps: int) -> int:
        return max(1, steps // self.args.scale_down)


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
    return {"glue_average": statistics.fmean(glue) if glue else None,
            "super_glue_average": statistics.fmean(super_glue) if super_glue else None}


def _mean_spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "spread": (max(values) - min(values)) / 2, "runs": values}


def summarise(row: str, runs: list[dict]) -> dict:
    """Mean and half-range over seeds of every task score and of the benchmark averages."""
    tasks = sorted({t for run in runs for t in run["tasks"]})
    summary = {"tasks": {t: _mean_spread([run["tasks"][t]["score"] for run in runs if t in run["tasks"]])
                         for t in tasks}}
    for average in ("glue_average", "super_glue_average"):
        values = [run[average] for run in runs if run[average] is not None]
        summary[average] = _mean_spread(values) if values else None
    objective, description, paper_glue, paper_super_glue = ROWS[row]
    summary.update(description=description, objective=objective, paper_glue_average=paper_glue,
                   paper_super_glue_average=paper_super_glue)
    return summary


def _cell(value: dict | None) -> str:
    return "–" if value is None else f"{value['mean']:.1f} ± {value['spread']:.1f}"


def markdown(results: dict) -> str:
    rows = results["rows"]
    tasks = sorted({t for r in rows.values() for t in r["tasks"]}, key=lambda t: (not t.startswith("glue"), t))
    short = [t.replace("_v002", "").replace("_v102", "").replace("super_glue_", "sg_").replace("glue_", "")
             for t in tasks]
    lines = ["| row | GLUE avg | paper GLUE | SuperGLUE avg | paper SuperGLUE | " + " | ".join(short) + " |",
             "|---" * (5 + len(tasks)) + "|"]
    for name, r in rows.items():
        cells = [name, _cell(r["glue_average"]), f"{r['paper_glue_average']:.2f}", _cell(r["super_glue_average"]),
                 f"{r['paper_super_glue_average']:.2f}"] + [_cell(r["tasks"].get(t)) for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--rows", default="baseline,no_pretraining,prefix_lm,bert_style,deshuffling",
                        help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--out", default="study", help="results go to OUT/PRESET/")
    parser.add_argument("--text_file_pattern", help="the pre-training text for the text source (cpu preset)")
    parser.add_argument("--glue_dir", help="local GLUE TSVs (GLUE_DIR); unset: TFDS")
    parser.add_argument("--superglue_dir", help="local SuperGLUE JSONL (SUPERGLUE_DIR); unset: TFDS")
    parser.add_argument("--vocab_pieces", type=int, default=8000, help="pieces of the trained vocabulary")
    parser.add_argument("--scale_down", type=int, default=1, help="divide every step count by this (for tests)")
    parser.add_argument("--seeds", help="comma-separated fine-tuning seeds, instead of the preset's")
    parser.add_argument("--print_commands", action="store_true",
                        help="print the commands (e.g. to run on a pod slice) instead of running them")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"unknown --rows {unknown or args.rows!r}; choose from {', '.join(ROWS)}")
    if args.scale_down < 1 or args.vocab_pieces < 200:
        parser.error("--scale_down must be at least 1 and --vocab_pieces at least 200")
    from t5pod import cli
    cli.import_tensorflow_quietly()  # this process reads checkpoints: TensorFlow comes in, with its start-up lines
    study = Study(args.preset, args.out, args)
    if args.seeds:
        study.preset = dataclasses.replace(study.preset, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if study.preset.pretrain_source == "text" and not args.text_file_pattern:
        parser.error(f"the {args.preset} preset pre-trains on your text: set --text_file_pattern "
                     "(make study: STUDY_TEXT='/data/books/*.txt')")
    os.makedirs(study.folder, exist_ok=True)
    results = {"preset": args.preset, "preset_settings": dataclasses.asdict(study.preset),
               "scale_down": args.scale_down, "rows": {}}
    if not args.print_commands:
        results["rows"] = earlier_rows(study.folder, results)
    for row in rows:
        objective = ROWS[row][0]
        start = study.pretrain(objective) if objective else None
        runs = []
        for seed in study.preset.seeds:
            scores = {}
            for mixture in study.preset.finetune_mixtures:
                scores.update(task_scores(study.finetune(row, mixture, start, seed)))
            runs.append({"seed": seed, "tasks": scores, **benchmark_averages(scores)})
        if not args.print_commands:
            results["rows"][row] = {**summarise(row, runs), "seeds": runs}
            write_results(study.folder, results)  # after each row: a study cut short keeps the rows it finished
    if args.print_commands:  # for another machine: its own `python`
        print("\n".join(shlex.join(["python", *c[1:]]) for c in study.commands))
        return 0
    print(markdown(results))
    return 0


def earlier_rows(folder: str, results: dict) -> dict:
    """The rows of the folder's results.json if it was made with the same settings; else it is moved aside."""
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        earlier = json.load(f)
    settings = json.loads(json.dumps({k: results[k] for k in ("preset", "preset_settings", "scale_down")}))  # tuples: lists
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
    for name, text in (("results.json", json.dumps(results, indent=1, sort_keys=True)),
                       ("results.md", markdown(results))):
        path = os.path.join(folder, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
