"""The `gpu` preset's transfer rows by way of a bundle, for an accelerator machine without TensorFlow.

`make study` runs the gpu preset where t5pod's whole stack installs (`make install-gpu`). Where it
cannot (a machine with JAX but no TensorFlow or seqio, or no network), this splits the work:

    python scripts/study_gpu.py pack --vocabulary=VOCAB.model --text_file_pattern='BOOKS/*.txt' \\
        --glue_dir=GLUE_TSVS --bundle=bundle.npz
    python scripts/study_gpu_run.py --bundle=bundle.npz --out=OUT          # on the accelerator
    python scripts/study_gpu.py score --bundle=bundle.npz --results=OUT --out=study

`pack` tokenises, with the real seqio tasks, the pre-training text (one document per paragraph) and
the transfer tasks' examples (tasks/transfer.py: SST-2 1k and 4k, STS-B less 500 held out, their
held-out slices and dev sets) into one compressed .npz. `score` decodes the runner's predictions and
scores them with the tasks' own postprocessors and metrics, chooses each run's checkpoint on the
held-out slice, and writes OUT/gpu/transfer.json and transfer.md as `study.py --rows=transfer`
does, with the probes and the pre-training's FLOPs and speed in gpu-run.json.
"""

import argparse
import itertools
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import study_gpu_run  # noqa: E402  (beside this file)
import study_transfer  # noqa: E402

EOS = 1
# bundle name -> (task, split); each gets _inputs, _targets (ids without EOS) and _labels.
EXAMPLES = {
    "sst2_1k_train": ("glue_sst2_1k_v002", "train"),
    "sst2_1k_heldout": ("glue_sst2_1k_v002", "validation"),
    "sst2_1k_dev": ("glue_sst2_v002", "validation"),
    "stsb_train": ("glue_stsb_heldout_v002", "train"),
    "stsb_heldout": ("glue_stsb_heldout_v002", "validation"),
    "stsb_dev": ("glue_stsb_v002", "validation"),
    "probe_sst2_4k": ("glue_sst2_4k_v002", "train"),
}
# The probes' other splits are the fine-tuning ones: bundle name -> its source in EXAMPLES.
PROBE_ALIASES = {"probe_sst2_dev": "sst2_1k_dev", "probe_stsb_train": "stsb_train", "probe_stsb_dev": "stsb_dev"}
# The transfer task of each example set (its lengths in study_gpu_run.FINETUNE).
TASK_OF = {"sst2": "sst2_1k", "stsb": "stsb", "probe": "sst2_1k"}


def _ragged(rows: list) -> dict:
    lengths = np.array([len(r) for r in rows], np.int64)
    flat = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    if flat.size and flat.max() >= 2**16:
        raise ValueError("a token id does not fit 16 bits; the bundle stores ids as uint16")
    return {"flat": flat.astype(np.uint16), "offsets": np.concatenate([[0], np.cumsum(lengths)])}


def pack(args) -> dict:
    """The bundle's arrays (and writes them to args.bundle)."""
    import tasks
    from t5pod import evaluation
    from t5pod.data import pipeline, text_sources, vocabularies
    from t5pod.data.glue_metrics import as_text

    tasks.register_all(args.vocabulary, glue_dir=args.glue_dir)
    vocabulary = vocabularies.get_vocabulary(args.vocabulary)
    source = text_sources.TextFileSource(args.text_file_pattern, paragraphs=True)
    documents = source.get_dataset("train", shuffle=False).as_numpy_iterator()
    documents = [d["text"].decode("utf-8") for d in itertools.islice(documents, args.max_documents or None)]
    ids = [d for d in vocabulary.tokenizer.encode(documents) if d]  # empty documents dropped, as the objective does
    arrays = {f"pretrain_{k}": v for k, v in _ragged(ids).items()}
    arrays["sentinel_base"] = np.array(vocabulary.vocab_size)  # sentinels count down from here (extra ids)
    for name, (task_name, split) in EXAMPLES.items():
        lengths = study_gpu_run.FINETUNE[TASK_OF[name.split("_")[0]]][2]
        rows = evaluation.task_rows(task_name, split, lengths)
        postprocess = pipeline.get_task_or_mixture(task_name).postprocess_fn
        arrays.update({f"{name}_inputs_{k}": v for k, v in _ragged([r["input_ids"] for r in rows]).items()})
        targets = [[int(t) for t in r["targets"] if t not in (0, EOS)] for r in rows]
        arrays.update({f"{name}_targets_{k}": v for k, v in _ragged(targets).items()})
        labels = [postprocess(as_text(r["targets_pretokenized"]), example=r, is_target=True) for r in rows]
        arrays[f"{name}_labels"] = np.array(labels, np.float64)
    # The 1k subset is the first 1,000 of the 4k one (one permutation, tasks/transfer.py): its probe
    # reads the first rows of the 4k features.
    first = arrays["sst2_1k_train_inputs_offsets"][-1]
    if not np.array_equal(arrays["probe_sst2_4k_inputs_flat"][:first], arrays["sst2_1k_train_inputs_flat"]):
        raise ValueError("the SST-2 1k subset is not the start of the 4k subset; tasks/transfer.py changed?")
    arrays["probe_sst2_1k_rows"] = np.array(len(arrays["sst2_1k_train_labels"]))
    arrays["probe_sst2_4k_flat"] = arrays.pop("probe_sst2_4k_inputs_flat")
    arrays["probe_sst2_4k_offsets"] = arrays.pop("probe_sst2_4k_inputs_offsets")
    for alias, name in PROBE_ALIASES.items():
        arrays[f"{alias}_flat"], arrays[f"{alias}_offsets"] = (
            arrays[f"{name}_inputs_flat"],
            arrays[f"{name}_inputs_offsets"],
        )
        arrays[f"{alias}_labels"] = arrays[f"{name}_labels"]
    os.makedirs(os.path.dirname(os.path.abspath(args.bundle)), exist_ok=True)
    np.savez_compressed(args.bundle, **arrays)
    print(
        f"[study_gpu] {args.bundle}: {len(ids):,} documents, {len(arrays['pretrain_flat']):,} pre-training tokens, "
        f"{os.path.getsize(args.bundle) / 2**20:.1f} MiB"
    )
    return arrays


def _decoded_score(vocabulary, task_name: str, ids: np.ndarray, labels: np.ndarray, metric: str) -> float:
    """The task's metric (already x 100) of decoded prediction ids [rows, length] against the labels."""
    from t5pod.data import pipeline

    task = pipeline.get_task_or_mixture(task_name)
    predictions = []
    for row in ids.tolist():
        row = row[: row.index(EOS)] if EOS in row else row
        text = vocabulary.decode([t for t in row if t != 0])
        predictions.append(task.postprocess_fn(text, example={}, is_target=False))
    values = {}
    for fn in task.metric_fns:
        values.update(fn(list(labels), predictions))
    value = values[metric]
    return 0.0 if value is None or np.isnan(value) else float(value)  # a constant prediction: no skill


def score(args) -> list[dict]:
    """transfer.json rows from the runner's results.json and predictions.npz."""
    import tasks
    from t5pod.data import vocabularies

    tasks.register_all(args.vocabulary, glue_dir=args.glue_dir)
    vocabulary = vocabularies.get_vocabulary(args.vocabulary)
    bundle = np.load(args.bundle)
    with open(os.path.join(args.results, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    predictions = np.load(os.path.join(args.results, "predictions.npz"))
    pretraining = results["stages"]["pretrain"]
    compute = round(pretraining["steps"] / args.preset_steps, 2)
    chosen = {}  # (task, start) -> [dev score per seed]
    runs = []
    for run in results["runs"]:
        task = run["task"]
        _, heldout_task, dev_task, metric = study_transfer.FINETUNE_TASKS[task]
        scores = []
        for step in run["evaluated_steps"]:
            key = f"{task}/{run['start']}/{run['seed']}/{step}"
            heldout = _decoded_score(
                vocabulary, heldout_task, predictions[f"{key}/heldout"], bundle[f"{task}_heldout_labels"], metric
            )
            dev = _decoded_score(vocabulary, dev_task, predictions[f"{key}/dev"], bundle[f"{task}_dev_labels"], metric)
            scores.append((step, heldout, dev))
        best = max(scores, key=lambda s: (s[1], -s[0]))  # the held-out score decides; ties: the earliest
        chosen.setdefault((task, run["start"]), []).append(best[2])
        runs.append({**run, "scores": scores, "chosen_step": best[0], "heldout": best[1], "dev": best[2]})
    rows = []
    for (task, start), values in sorted(chosen.items()):
        if start == "random":
            continue
        method = {"pretrained": "finetune", "encoder": "finetune_encoder"}[start]
        rows.append(
            study_transfer.comparison(
                task,
                compute,
                method,
                values,
                chosen.get((task, "random"), []),
                {
                    "pretraining_flops": pretraining["flops"],
                    "finetuning_flops_per_run": statistics.fmean(
                        r["flops"] for r in results["runs"] if r["task"] == task
                    ),
                },
            )
        )
    probes = results["probes"]
    for task in ("sst2_1k", "sst2_4k", "stsb"):
        trained = [p["score"] for p in probes if p["task"] == task and p["start"] == "pretrained"]
        random = [p["score"] for p in probes if p["task"] == task and p["start"] == "random"]
        if trained and random:
            rows.append(
                study_transfer.comparison(
                    task, compute, "probe", trained, random, {"pretraining_flops": pretraining["flops"]}
                )
            )
    folder = os.path.join(args.out, "gpu")
    os.makedirs(folder, exist_ok=True)
    settings = {
        "runner": results["settings"],
        "environment": results.get("environment"),
        "preset_steps": args.preset_steps,
    }
    study_transfer.write(folder, rows, settings)
    with open(os.path.join(folder, "gpu-run.json"), "w", encoding="utf-8") as f:
        json.dump({"pretraining": pretraining, "probes": probes, "runs": runs}, f, indent=1)
    print(study_transfer.markdown(rows))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("pack", "score"))
    parser.add_argument("--vocabulary", required=True, help="the study's SentencePiece model (train-vocab)")
    parser.add_argument("--glue_dir", help="local GLUE TSVs; unset: TFDS")
    parser.add_argument("--bundle", required=True, help="the .npz pack writes and score reads")
    parser.add_argument("--text_file_pattern", help="pack: the pre-training text")
    parser.add_argument("--max_documents", type=int, default=0, help="pack: keep only this many documents (tests)")
    parser.add_argument("--results", help="score: the runner's --out folder")
    parser.add_argument("--out", default="study", help="score: results go to OUT/gpu/")
    parser.add_argument("--preset_steps", type=int, default=8000, help="score: the preset's pre-training steps (1x)")
    args = parser.parse_args(argv)
    if args.max_documents < 0 or args.preset_steps < 1:
        parser.error("--max_documents must be at least 0 and --preset_steps at least 1")
    if not os.path.exists(args.vocabulary):
        parser.error(f"--vocabulary {args.vocabulary} does not exist (train one with `python -m t5pod train-vocab`)")
    if args.command == "pack":
        if not args.text_file_pattern:
            parser.error("pack needs --text_file_pattern")
        pack(args)
    else:
        if not args.results:
            parser.error("score needs --results (the runner's --out folder)")
        score(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
