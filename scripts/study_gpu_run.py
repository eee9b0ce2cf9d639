"""The `gpu` preset's transfer rows on a machine with JAX but without TensorFlow or seqio.

`python scripts/study_gpu.py pack` (where TensorFlow is) writes a bundle: the pre-training text's
documents and the transfer tasks' examples as token ids, tokenised by the real seqio tasks. This
program, which imports neither TensorFlow nor seqio, reads the bundle and on one accelerator:

  1. pre-trains with i.i.d. denoising (the paper's §3.3: each token noise with probability 0.15,
     each run of noise one sentinel; inputs of 511 raw tokens, documents shuffled and concatenated
     as the reference pipeline does) until --pretrain_steps or --pretrain_seconds;
  2. probes the frozen encoder (mean-pooled outputs; t5pod.linear_probe) of the pre-trained model and
     of random initialisations on SST-2 1k and 4k and STS-B;
  3. fine-tunes SST-2 1k and STS-B from random weights, from the whole pre-trained model and from its
     encoder with a fresh decoder, one run per seed, packing examples as seqio does, and decodes the
     held-out slice and dev set at every evaluation.

It writes OUT/results.json (settings, pre-training curve and FLOPs, probes, runs) and
OUT/predictions.npz (each run's decoded ids at each evaluation), both again after every stage, so a
run cut short keeps what it finished. `python scripts/study_gpu.py score` turns them into
study/gpu/transfer.json with the tasks' own metrics.

    python scripts/study_gpu_run.py --bundle=bundle.npz --out=OUT --pretrain_seconds=300
"""

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import re
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_gpu_data import (  # noqa: E402  (beside this file)
    finetune_batches,
    iid_denoising_batches,
    pack,
    padded,
    prefetched,
    ragged,
)

# The gpu preset (scripts/study.py): T5 1.1 small with the study's 8,192-entry embedding.
GPU_MODEL = dict(
    vocab_size=8192,
    d_model=512,
    d_ff=1024,
    num_heads=6,
    d_kv=64,
    num_layers=8,
    num_decoder_layers=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
)
# A model small enough to run every stage in seconds: the smoke stage, and tests on CPU.
TOY_MODEL = dict(GPU_MODEL, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=1, num_decoder_layers=1)
# task -> (steps, evaluation period, lengths), as the cpu and gpu presets' transfer rows.
FINETUNE = {
    "sst2_1k": (320, 32, {"inputs": 128, "targets": 8}),
    "stsb": (750, 75, {"inputs": 128, "targets": 16}),
}
STARTS = ("random", "pretrained", "encoder")  # encoder: the pre-trained encoder, a fresh decoder
FRESH_DECODER = re.compile(r"decoder/.*")  # as study_transfer.FRESH_DECODER


# ---------------------------------------------------------------- model (JAX)


class Runner:
    """Jitted functions of one model configuration, shared by every run that uses them."""

    def __init__(self, model_fields: dict, dtype: str):
        import jax
        from flax import linen as nn

        from t5pod import models
        from t5pod.configs import T5Config

        self.jax = jax
        self.config = T5Config(**model_fields, dtype=dtype)
        self.model = models.build(self.config)
        features = models.dummy_features(self.config)
        self.init = jax.jit(lambda rng: nn.unbox(self.model.init(rng, **features)["params"]))
        self._steps, self._decoders, self._opt_inits = {}, {}, {}
        self.encode = jax.jit(functools.partial(models.mean_pooled_encoding, self.model))

    def train_step(self, learning_rate: str | float, warmup: int):
        """A jitted (state, batch, rng) -> (state, metrics): Adafactor on the rsqrt (pre-training) or
        a constant (fine-tuning) schedule, z-loss 1e-4, as gin/runs/*.gin."""
        key = (learning_rate, warmup)
        if key not in self._steps:
            from t5pod import optimizer, train_step

            if learning_rate == "rsqrt":
                schedule = optimizer.learning_rate_schedule("rsqrt", 1.0, warmup)
            else:
                schedule = optimizer.learning_rate_schedule("constant", float(learning_rate))
            opt = optimizer.adafactor(schedule)
            step = functools.partial(
                train_step.train_step, model=self.model, optimizer=opt, schedule=schedule, z_loss=1e-4
            )
            self._steps[key] = (opt, self.jax.jit(step, donate_argnums=(0,)))
            self._opt_inits[id(opt)] = self.jax.jit(opt.init)
        return self._steps[key]

    def state(self, params, opt):
        from t5pod import train_step

        # opt.init jitted once per optimizer: run eagerly it dispatches one small program per parameter.
        return train_step.TrainState(
            step=self.jax.numpy.zeros((), self.jax.numpy.int32),
            params=params,
            opt_state=self._opt_inits[id(opt)](params),
        )

    def decode(self, params, inputs: np.ndarray, max_length: int, batch: int = 512) -> np.ndarray:
        """Greedy decoding of [rows, length] inputs -> [rows, max_length] ids."""
        from t5pod import decoding

        if max_length not in self._decoders:
            self._decoders[max_length] = self.jax.jit(
                lambda p, x: decoding.sample_decode(self.model, p, x, max_length)[0]
            )
        return _in_batches(self._decoders[max_length], params, inputs, batch)

    def features(self, params, inputs: np.ndarray, batch: int = 512) -> np.ndarray:
        """Mean-pooled encoder outputs [rows, embed] of [rows, length] inputs."""
        return _in_batches(self.encode, params, inputs, batch)


def _in_batches(function, params, inputs: np.ndarray, batch: int) -> np.ndarray:
    """function(params, rows) over [rows, length] inputs in batches of `batch` rows, the last one
    padded so that one compiled shape serves them all."""
    out = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        out.append(np.asarray(function(params, np.pad(chunk, ((0, batch - len(chunk)), (0, 0)))))[: len(chunk)])
    return np.concatenate(out)


def merge_fresh_decoder(pretrained, fresh):
    """The pre-trained parameters with every parameter under decoder/ taken from `fresh`."""
    from flax import traverse_util

    flat, new = traverse_util.flatten_dict(pretrained, sep="/"), traverse_util.flatten_dict(fresh, sep="/")
    return traverse_util.unflatten_dict(
        {k: new[k] if FRESH_DECODER.fullmatch(k) else v for k, v in flat.items()}, sep="/"
    )


# ---------------------------------------------------------------- stages


class Study:
    def __init__(self, args, bundle):
        self.args, self.bundle = args, bundle
        self.results = {"settings": vars(args).copy(), "stages": {}, "probes": [], "runs": []}
        self.predictions = {}
        self.start = time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def log(self, message: str):
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)

    def save(self):
        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, "results.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self.results, f, indent=1)
        os.replace(path + ".tmp", path)
        if self.predictions:
            np.savez_compressed(os.path.join(self.args.out, "predictions.tmp.npz"), **self.predictions)
            os.replace(
                os.path.join(self.args.out, "predictions.tmp.npz"), os.path.join(self.args.out, "predictions.npz")
            )

    def pretrain(self, runner: Runner, prefix: str = "") -> object:
        import jax

        from t5pod import flops, train_step

        args = self.args
        lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
        documents = ragged(self.bundle, "pretrain")
        batches = prefetched(
            iid_denoising_batches(
                documents,
                batch=args.pretrain_batch,
                lengths=lengths,
                sentinel_base=int(self.bundle["sentinel_base"]),
                seed=0,
            )
        )
        opt, step_fn = runner.train_step("rsqrt", args.warmup_steps)
        state = runner.state(runner.init(jax.random.PRNGKey(0)), opt)
        per_example = flops.train_flops_per_example(runner.config, args.inputs_length, args.targets_length)
        curve, begin, compiled_at, sums = [], time.time(), None, None
        for number in range(args.pretrain_steps):
            batch = next(batches)
            state, metrics = step_fn(state, batch, jax.random.PRNGKey(number))
            step_sums = {k: v for k, v in metrics.items() if k.endswith("_sum")}
            sums = step_sums if sums is None else jax.tree_util.tree_map(lambda a, b: a + b, sums, step_sums)
            if number == 0:
                jax.block_until_ready(state.params)
                compiled_at = time.time()
                self.log(f"{prefix}pre-training: step compiled in {compiled_at - begin:.1f} s")
            done = number + 1
            if done % args.log_period == 0 or done == args.pretrain_steps:
                summary = train_step.summarize(jax.device_get({**sums, "learning_rate": metrics["learning_rate"]}))
                sums = None
                seconds = time.time() - compiled_at
                curve.append(
                    {
                        "step": done,
                        "seconds": round(seconds, 1),
                        **{k: round(v, 4) for k, v in summary.items() if k != "target_tokens"},
                    }
                )
                self.log(
                    f"{prefix}pre-training step {done}: loss {summary['loss']:.3f}, accuracy {summary['accuracy']:.3f}"
                )
                if time.time() - begin > args.pretrain_seconds:
                    break
        seconds = time.time() - compiled_at
        steps = curve[-1]["step"]
        total_flops = per_example * args.pretrain_batch * steps
        self.results["stages"][prefix + "pretrain"] = {
            "steps": steps,
            "batch": args.pretrain_batch,
            "lengths": lengths,
            "flops": total_flops,
            "flops_per_example": per_example,
            "seconds_after_compile": round(seconds, 1),
            "model_flops_per_second": total_flops * (steps - 1) / steps / max(seconds, 1e-9),
            "curve": curve,
            "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(state.params))),
        }
        self.save()
        return state.params

    def probe_features(self, runner: Runner, params) -> dict:
        """Pooled features of every probe example: {split name: [rows, embed] float32}."""
        return {
            name: runner.features(params, padded(ragged(self.bundle, name), self.args.probe_length))
            for name in ("probe_sst2_4k", "probe_sst2_dev", "probe_stsb_train", "probe_stsb_dev")
        }

    def finetune(self, runner: Runner, task: str, start_name: str, start_params, seed: int, scale: int = 1):
        import jax

        from t5pod import flops, train_step

        steps, period, lengths = FINETUNE[task]
        steps, period = max(steps // scale, 1), max(period // scale, 1)
        examples = list(zip(ragged(self.bundle, f"{task}_train_inputs"), ragged(self.bundle, f"{task}_train_targets")))
        evaluation = {
            which: padded(ragged(self.bundle, f"{task}_{which}_inputs"), lengths["inputs"])
            for which in ("heldout", "dev")
        }
        opt, step_fn = runner.train_step(self.args.finetune_learning_rate, 0)
        # A copy: the step donates its state, and the start's arrays serve the next runs too.
        state = runner.state(jax.tree_util.tree_map(lambda x: x.copy(), start_params), opt)
        batches, begin, losses, evaluated = (
            finetune_batches(examples, lengths, self.args.finetune_batch, seed),
            time.time(),
            [],
            [],
        )
        for number in range(steps):
            batch = next(batches)
            state, metrics = step_fn(state, batch, jax.random.PRNGKey(seed * 100_003 + number))
            if (number + 1) % period == 0 or number + 1 == steps:
                losses.append(train_step.summarize(jax.device_get(metrics))["loss"])
                for which, inputs in evaluation.items():
                    key = f"{task}/{start_name}/{seed}/{number + 1}/{which}"
                    self.predictions[key] = runner.decode(state.params, inputs, lengths["targets"]).astype(np.uint16)
                evaluated.append(number + 1)
        rows = pack(examples, lengths)
        examples_per_row = sum(len(r) for r in rows) / len(rows)
        run = {
            "task": task,
            "start": start_name,
            "seed": seed,
            "steps": steps,
            "evaluated_steps": evaluated,
            "train_loss": [round(x, 4) for x in losses],
            "seconds": round(time.time() - begin, 1),
            "examples_per_row": examples_per_row,
            "epochs": steps * self.args.finetune_batch * examples_per_row / len(examples),
            "flops": flops.train_flops_per_example(runner.config, lengths["inputs"], lengths["targets"])
            * steps
            * self.args.finetune_batch,
        }
        self.results["runs"].append(run)
        self.save()
        return run


def fit_probe(job):
    """In a worker process: one probe's (name, seed, task, score, regularisation)."""
    from t5pod import linear_probe

    name, seed, task, kind, train_x, train_y, eval_x, eval_y = job
    score, strength = linear_probe.fit_and_score(kind, train_x, train_y, eval_x, eval_y)
    return {
        "start": name,
        "seed": seed,
        "task": task,
        "score": score,
        "regularisation": strength,
        "train_examples": len(train_y),
    }


def probe_jobs(bundle, name: str, seed: int, features: dict) -> list:
    """The three probes of one model: SST-2 1k (the first 1,000 of the 4k subset) and 4k, STS-B."""
    sst2_y, stsb_y = bundle["probe_sst2_4k_labels"], bundle["probe_stsb_train_labels"]
    first_1k = int(bundle["probe_sst2_1k_rows"])
    return [
        (
            name,
            seed,
            "sst2_1k",
            "classification",
            features["probe_sst2_4k"][:first_1k],
            sst2_y[:first_1k],
            features["probe_sst2_dev"],
            bundle["probe_sst2_dev_labels"],
        ),
        (
            name,
            seed,
            "sst2_4k",
            "classification",
            features["probe_sst2_4k"],
            sst2_y,
            features["probe_sst2_dev"],
            bundle["probe_sst2_dev_labels"],
        ),
        (
            name,
            seed,
            "stsb",
            "regression",
            features["probe_stsb_train"],
            stsb_y,
            features["probe_stsb_dev"],
            bundle["probe_stsb_dev_labels"],
        ),
    ]


def run_study(study: Study, model_fields: dict, *, scale: int, prefix: str = "") -> None:
    """Pre-train, probe (fitted in worker processes while fine-tuning runs) and fine-tune."""
    import jax

    args = study.args
    runner = Runner(model_fields, args.dtype)
    if args.load_params:
        pretrained = load_params(study, runner, args.load_params)
    else:
        pretrained = study.pretrain(runner, prefix)
        if args.save_params:
            save_params(study, pretrained, args.save_params)
        if args.stop_after_pretraining:
            return
    finetune_runner = Runner(model_fields, args.finetune_dtype) if args.finetune_dtype != args.dtype else runner
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds an accelerator
    # The workers' BLAS threads: a few each, so the fitting leaves cores to the fine-tuning's input pipeline.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.probe_threads)
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.probe_workers, mp_context=context) as pool:
        futures = [
            pool.submit(fit_probe, job)
            for job in probe_jobs(study.bundle, "pretrained", 0, study.probe_features(runner, pretrained))
        ]
        for seed in range(args.probe_seeds):
            fresh = runner.init(jax.random.PRNGKey(1000 + seed))
            futures += [
                pool.submit(fit_probe, job)
                for job in probe_jobs(study.bundle, "random", seed, study.probe_features(runner, fresh))
            ]
        study.log(f"{prefix}probe features computed; fitting in {args.probe_workers} processes")
        durations, recorded = {}, set()  # task -> seconds of its runs; probes already in the results
        jobs = [(seed, task, start) for seed in range(args.seeds) for task in args.tasks.split(",") for start in STARTS]
        for seed, task, start in jobs:  # seed by seed: a run cut short by time keeps both starts level
            estimate = max(durations.get(task) or [max(sum(durations.values(), []), default=0.0)])
            if study.elapsed() + estimate > args.total_seconds:
                study.log(f"{prefix}no time for {task} from {start}, seed {seed}: skipped")
                continue
            if start == "pretrained":
                params = pretrained
            else:
                fresh = finetune_runner.init(jax.random.PRNGKey(seed))
                params = fresh if start == "random" else merge_fresh_decoder(pretrained, fresh)
            began = time.time()
            run = study.finetune(finetune_runner, task, start, params, seed, scale)
            durations.setdefault(task, []).append(time.time() - began)
            study.log(
                f"{prefix}fine-tuned {task} from {start}, seed {seed}: {run['seconds']} s, "
                f"last loss {run['train_loss'][-1]:.3f}"
            )
            _record_probes(study, futures, recorded, wait=False)
        _record_probes(study, futures, recorded, wait=True)
        study.log(
            f"{prefix}probes: "
            + ", ".join(f"{p['start']}{p['seed']}/{p['task']} {p['score']:.1f}" for p in study.results["probes"])
        )


def save_params(study: Study, params, path: str):
    """The pre-trained parameters (float32, one array per '/'-joined name) and the pre-training's
    record beside them, so a later call can probe and fine-tune without pre-training again."""
    import jax
    from flax import traverse_util

    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    np.savez(path, **{name: np.asarray(value, np.float32) for name, value in flat.items()})
    with open(path + ".json", "w", encoding="utf-8") as f:
        json.dump(study.results["stages"]["pretrain"], f, indent=1)
    study.log(f"pre-trained parameters saved to {path}")


def load_params(study: Study, runner: Runner, path: str):
    """save_params' parameters, checked against the model's own, and its pre-training record."""
    import jax
    from flax import traverse_util

    expected = traverse_util.flatten_dict(jax.eval_shape(runner.init, jax.random.PRNGKey(0)), sep="/")
    with np.load(path) as saved:
        loaded = {name: saved[name] for name in saved.files}
    wrong = sorted(
        n
        for n in set(expected) | set(loaded)
        if n not in loaded or n not in expected or loaded[n].shape != expected[n].shape
    )
    if wrong:
        raise SystemExit(f"{path} does not hold this model's parameters: {', '.join(wrong[:5])} differ or are missing")
    with open(path + ".json", encoding="utf-8") as f:
        study.results["stages"]["pretrain"] = {**json.load(f), "loaded_from": path}
    study.save()
    return jax.device_put(traverse_util.unflatten_dict(loaded, sep="/"))


def _record_probes(study: Study, futures: list, recorded: set, wait: bool):
    """Adds the fitted probes (all of them when wait) to the results, and saves them."""
    for number, future in enumerate(futures):
        if number not in recorded and (wait or future.done()):
            study.results["probes"].append(future.result())
            recorded.add(number)
    study.save()


def profile(study: Study, model_fields: dict, steps: int) -> dict:
    """Where a pre-training step's time goes: the host's batch, the step on batches already on the
    device, and the two together as the pre-training runs them (milliseconds per step)."""
    import jax

    from t5pod import flops

    args = study.args
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    batches = iid_denoising_batches(
        ragged(study.bundle, "pretrain"),
        batch=args.pretrain_batch,
        lengths=lengths,
        sentinel_base=int(study.bundle["sentinel_base"]),
        seed=0,
    )
    began = time.time()
    host = [next(batches) for _ in range(steps)]
    host_ms = 1000 * (time.time() - began) / steps
    runner = Runner(model_fields, args.dtype)
    began = time.time()
    opt, step_fn = runner.train_step("rsqrt", args.warmup_steps)
    state = runner.state(runner.init(jax.random.PRNGKey(0)), opt)
    jax.block_until_ready(state)
    init_s = time.time() - began
    on_device = [jax.device_put(b) for b in host]
    keys = [jax.random.PRNGKey(i) for i in range(steps)]
    began = time.time()
    state, metrics = step_fn(state, on_device[0], keys[0])
    jax.block_until_ready(metrics)
    compile_s = time.time() - began
    timings = {}
    for name, source in (("device_batches", on_device), ("host_batches", None)):
        began = time.time()
        for number in range(steps):
            state, metrics = step_fn(state, source[number] if source else next(batches), keys[number])
        jax.block_until_ready(metrics)
        timings[name] = 1000 * (time.time() - began) / steps
    per_step = (
        flops.train_flops_per_example(runner.config, args.inputs_length, args.targets_length) * args.pretrain_batch
    )
    result = {
        "host_batch_ms": host_ms,
        "init_s": init_s,
        "compile_s": compile_s,
        "step_ms_device_batches": timings["device_batches"],
        "step_ms_host_batches": timings["host_batches"],
        "model_tflops_per_s_device_batches": per_step / timings["device_batches"] / 1e9,
    }
    study.log(f"profile: {json.dumps({k: round(v, 2) for k, v in result.items()})}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="the bundle study_gpu.py pack wrote")
    parser.add_argument("--out", required=True, help="folder for results.json and predictions.npz")
    parser.add_argument("--model", choices=("gpu", "toy"), default="gpu", help="T5 1.1 small, or a toy model for tests")
    parser.add_argument("--dtype", default="bfloat16", help="pre-training activations (parameters stay float32)")
    parser.add_argument(
        "--finetune_dtype",
        default="bfloat16",
        help="fine-tuning activations; the pre-training's shares its compiled init",
    )
    parser.add_argument("--pretrain_steps", type=int, default=8000)
    parser.add_argument("--pretrain_seconds", type=float, default=1e9, help="stop pre-training after this long")
    parser.add_argument(
        "--total_seconds", type=float, default=1e9, help="start no fine-tuning run that would end after this"
    )
    parser.add_argument("--pretrain_batch", type=int, default=128)
    parser.add_argument("--inputs_length", type=int, default=512)
    parser.add_argument("--targets_length", type=int, default=192)
    parser.add_argument("--warmup_steps", type=int, default=1000)
    parser.add_argument("--log_period", type=int, default=100)
    parser.add_argument("--finetune_learning_rate", type=float, default=1e-3)
    parser.add_argument("--finetune_batch", type=int, default=32)
    parser.add_argument("--finetune_scale_down", type=int, default=1, help="divide fine-tuning steps by this (tests)")
    parser.add_argument("--tasks", default="sst2_1k,stsb")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per start")
    parser.add_argument("--probe_seeds", type=int, default=3, help="random initialisations probed")
    parser.add_argument("--probe_length", type=int, default=128)
    parser.add_argument("--probe_workers", type=int, default=4, help="processes fitting probes beside the fine-tuning")
    parser.add_argument("--probe_threads", type=int, default=2, help="BLAS threads of each probe process")
    parser.add_argument("--profile_steps", type=int, default=0, help="only time the pre-training step this many times")
    parser.add_argument("--smoke", action="store_true", help="first run every stage on the toy model for a few steps")
    parser.add_argument("--save_params", help="write the pre-trained parameters here (.npz) after pre-training")
    parser.add_argument("--stop_after_pretraining", action="store_true", help="with --save_params: stop there")
    parser.add_argument("--load_params", help="probe and fine-tune these saved parameters instead of pre-training")
    args = parser.parse_args(argv)
    for name in (
        "pretrain_steps",
        "pretrain_batch",
        "inputs_length",
        "targets_length",
        "warmup_steps",
        "log_period",
        "finetune_batch",
        "finetune_scale_down",
        "seeds",
        "probe_seeds",
        "probe_length",
        "probe_workers",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    if not 0 < args.finetune_learning_rate < 1:
        parser.error(f"--finetune_learning_rate must be in (0, 1), not {args.finetune_learning_rate}")
    unknown = set(args.tasks.split(",")) - set(FINETUNE)
    if unknown:
        parser.error(f"--tasks: unknown {sorted(unknown)}; choose from {', '.join(FINETUNE)}")
    if args.stop_after_pretraining and not args.save_params:
        parser.error("--stop_after_pretraining needs --save_params (else the pre-training is lost)")
    if args.load_params and not os.path.exists(args.load_params):
        parser.error(f"--load_params {args.load_params} does not exist (write it with --save_params)")
    if not os.path.exists(args.bundle):
        parser.error(f"--bundle {args.bundle} does not exist; write it with `python scripts/study_gpu.py pack`")

    import jax
    import flax
    import optax

    bundle = dict(np.load(args.bundle))
    study = Study(args, bundle)
    study.results["environment"] = {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
    }
    study.log(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; {jax.devices()}")
    if args.profile_steps:
        study.results["profile"] = profile(study, GPU_MODEL if args.model == "gpu" else TOY_MODEL, args.profile_steps)
        study.save()
        return 0
    if args.smoke:  # every stage once at toy size: an error shows in seconds, not after pre-training
        smoke_args = argparse.Namespace(
            **{
                **vars(args),
                "pretrain_steps": 2,
                "log_period": 1,
                "seeds": 1,
                "probe_seeds": 2,
                "finetune_scale_down": 160,
                "inputs_length": 64,
                "targets_length": 32,
                "pretrain_batch": 8,
                "out": os.path.join(args.out, "smoke"),
            }
        )
        smoke = Study(smoke_args, bundle)
        try:
            run_study(smoke, TOY_MODEL, scale=160, prefix="smoke ")
        except Exception:  # the smoke stage's only job is to show the error early and stop
            traceback.print_exc()
            return 2
        study.log("smoke stage passed")
    run_study(study, GPU_MODEL if args.model == "gpu" else TOY_MODEL, scale=args.finetune_scale_down)
    study.log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
