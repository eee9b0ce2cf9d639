"""Import of T5X checkpoints into t5pod: the parameters, and the Adafactor state and step.

T5X saves its train state with flax's msgpack in `checkpoint_N/checkpoint`:
{"version": 3, "optimizer": {"target": parameters, "state": {"step": int, "param_states":
{parameter path: {"m", "v", "v_row", "v_col"}}}}}. Small arrays are inline; large ones are
tensorstore specs (zarr) naming a folder beside the file. Newer T5X writes Orbax checkpoints
(a `checkpoint_N` folder without the msgpack file), read here with Orbax.

T5X's parameter names are t5pod's with a `kernel` leaf under each dense layer; its attention
kernels are [embed, heads * kv] where t5pod's are [embed, heads, kv] (a reshape, row-major).
"""

import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
import tensorstore as ts
from flax import linen as nn
from flax import serialization

from t5pod import checkpoints, hf_import, models, optimizer
from t5pod.configs import T5Config
from t5pod.hf_import import ConversionError

MSGPACK_FILE = "checkpoint"
# Adafactor's second-moment fields, as T5X and optax both name them.
_MOMENTS = ("v_row", "v_col", "v")


def _checkpoint_file(src: str) -> str | None:
    """The msgpack file of src (a checkpoint_N folder or the file itself); None for an Orbax folder."""
    if tf.io.gfile.isdir(src):
        path = os.path.join(src, MSGPACK_FILE)
        return path if tf.io.gfile.exists(path) else None
    if tf.io.gfile.exists(src):
        return src
    raise ConversionError(f"{src} does not exist; pass a T5X checkpoint_N folder or its `checkpoint` file.")


def _read_tensorstore(spec: dict, folder: str) -> np.ndarray:
    """An array T5X wrote with tensorstore; its kvstore path is relative to the checkpoint folder."""
    spec = dict(spec)
    store = dict(spec["kvstore"])
    path = store.get("path", "")
    if not path.startswith(("/", "gs://")):
        path = os.path.join(folder, path)
    if path.startswith("gs://"):
        bucket, _, inside = path[len("gs://") :].partition("/")
        store = {"driver": "gcs", "bucket": bucket, "path": inside}
    else:
        store = {"driver": "file", "path": path}
    spec["kvstore"] = store
    return ts.open(spec, open=True).result().read().result()


def _arrays(tree, folder: str):
    """tree with every tensorstore spec replaced by its array, and every array as numpy."""
    if isinstance(tree, dict):
        if "driver" in tree and "kvstore" in tree:
            return np.asarray(_read_tensorstore(tree, folder))
        return {key: _arrays(value, folder) for key, value in tree.items()}
    return np.asarray(tree)


def read_checkpoint(src: str) -> dict:
    """{"target": parameters, "state": {"step", "param_states"}} of a T5X checkpoint, as numpy."""
    path = _checkpoint_file(src)
    if path is None:
        try:
            tree = ocp.PyTreeCheckpointer().restore(checkpoints.absolute(src))
        except (ValueError, FileNotFoundError, KeyError) as error:
            raise ConversionError(
                f"{src} has no T5X msgpack `checkpoint` file and is not an Orbax checkpoint ({error})."
            ) from None
        folder = src
    else:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
        try:
            tree = serialization.msgpack_restore(raw)
        except Exception as error:  # msgpack raises its own exception types for a damaged file
            raise ConversionError(f"{path} is not a T5X msgpack checkpoint ({type(error).__name__}).") from None
        folder = os.path.dirname(path)
    optimizer_tree = tree.get("optimizer", tree) if isinstance(tree, dict) else None
    if not isinstance(optimizer_tree, dict) or "target" not in optimizer_tree:
        raise ConversionError(f"{src} is not a T5X train state (no optimizer/target).")
    return _arrays({"target": optimizer_tree["target"], "state": optimizer_tree.get("state", {})}, folder)


def _t5x_leaf(tree: dict, path: tuple):
    """T5X's array for t5pod's parameter path: the same path, or with `kernel` under it."""
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, dict):
        node = node.get("kernel")
    return node


def _paths(tree) -> list[tuple]:
    return [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _set(tree: dict, path: tuple, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _t5x_paths(tree, prefix=()) -> set[tuple]:
    """Parameter paths of a T5X target, `kernel` leaves folded into their layer."""
    if isinstance(tree, dict):
        if set(tree) == {"kernel"}:
            return {prefix}
        return set().union(*(_t5x_paths(value, prefix + (key,)) for key, value in tree.items()))
    return {prefix}


def convert_params(target: dict, config: T5Config) -> dict:
    """t5pod parameters of config from a T5X target; one error naming every misfit."""
    abstract = nn.unbox(models.abstract_variables(config)["params"])
    params, problems = {}, []
    wanted = _paths(abstract)
    for path in wanted:
        shape = _leaf(abstract, path).shape
        value = _t5x_leaf(target, path)
        name = "/".join(path)
        if value is None:
            problems.append(f"{name} is missing")
        elif value.size != int(np.prod(shape)) or (value.ndim == len(shape) and value.shape != shape):
            problems.append(f"{name} is {list(value.shape)} in the checkpoint, {list(shape)} in the model")
        else:
            _set(params, path, value.reshape(shape))
    unknown = sorted("/".join(p) for p in _t5x_paths(target) - set(wanted))
    if unknown:
        problems.append(f"the checkpoint has parameters the model lacks: {', '.join(unknown[:4])}")
    if problems:
        raise ConversionError(
            f"The T5X checkpoint does not fit the gin model ({'; '.join(problems[:4])}); pass the gin "
            "file of the model it was trained as (e.g. --gin_file=models/t5_1_1/base.gin)."
        )
    return params


def _leaf(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _factored_estimate(moments: dict, t5x_shape: tuple) -> np.ndarray:
    """The full second moment Adafactor's factored v_row/v_col stand for (the estimate its update
    uses): v_row reduced the largest dimension d0, v_col the second largest d1."""
    d1, d0 = (int(d) for d in np.argsort(t5x_shape)[-2:])
    v_row = np.expand_dims(moments["v_row"], d0)
    v_col = np.expand_dims(moments["v_col"], d1)
    return v_row * v_col / np.mean(v_row, axis=d1, keepdims=True)


def convert_optimizer_state(state: dict, params: dict, target: dict) -> tuple:
    """t5pod's Adafactor state (optimizer.adafactor's) from T5X's param_states and step.

    Returns (state, refactored): arrays copy bit for bit where T5X and t5pod keep the same moments
    (T5X and optax factor a parameter over its two largest dimensions, when the smaller is at least
    128). A factored moment of an attention kernel, [embed, heads * kv] in T5X and [embed, heads, kv]
    here, is factored over other dimensions: it becomes the full estimate T5X's update used,
    re-factored; `refactored` names those parameters.
    """
    tx = optimizer.adafactor(optimizer.learning_rate_schedule("rsqrt", 1.0, 1))
    fresh = tx.init(params)
    factored = fresh[0]
    step = int(np.asarray(state.get("step", 0)))
    param_states = state.get("param_states", {})
    moments = {name: {} for name in _MOMENTS}
    refactored = []
    for path in _paths(params):
        t5x_state = _leaf(param_states, path)
        t5x_state = t5x_state.get("kernel", t5x_state)
        momentum = np.asarray(t5x_state.get("m", np.zeros(1)))
        if momentum.size > 1:
            raise ConversionError(
                f"The T5X optimizer state of {'/'.join(path)} has momentum; t5pod's Adafactor has none. "
                "Convert the parameters only (--no_optimizer_state)."
            )
        ours = {name: _leaf(getattr(factored, name), path) for name in _MOMENTS}
        theirs = {name: np.asarray(t5x_state[name], np.float32) for name in _MOMENTS}
        if all(theirs[name].shape == ours[name].shape for name in _MOMENTS):
            for name in _MOMENTS:
                _set(moments[name], path, theirs[name])
            continue
        shape, t5x_shape = _leaf(params, path).shape, _t5x_leaf(target, path).shape
        if theirs["v"].shape == t5x_shape and ours["v"].shape == shape:  # unfactored in both: a reshape
            _set(moments["v"], path, theirs["v"].reshape(shape))
            for name in ("v_row", "v_col"):
                _set(moments[name], path, theirs[name].reshape(ours[name].shape))
            continue
        full = theirs["v"] if theirs["v"].shape == t5x_shape else _factored_estimate(theirs, t5x_shape)
        full = full.reshape(shape)
        if ours["v"].shape == shape:  # factored in T5X only
            _set(moments["v"], path, full)
            _set(moments["v_row"], path, np.zeros(ours["v_row"].shape, np.float32))
            _set(moments["v_col"], path, np.zeros(ours["v_col"].shape, np.float32))
        else:
            d1, d0 = (int(d) for d in np.argsort(shape)[-2:])
            _set(moments["v_row"], path, full.mean(axis=d0))
            _set(moments["v_col"], path, full.mean(axis=d1))
            _set(moments["v"], path, np.zeros(ours["v"].shape, np.float32))
        refactored.append("/".join(path))
    new_factored = factored._replace(count=np.asarray(step, np.int32), **moments)
    rest = tuple(_with_count(s, step) for s in fresh[1:])
    return (new_factored, *rest), refactored


def _with_count(state, step: int):
    return state._replace(count=np.asarray(step, np.int32)) if "count" in state._fields else state


def convert(src: str, out_dir: str, config: T5Config, optimizer_state: bool = True) -> dict:
    """SRC (a T5X checkpoint) -> OUT_DIR: an Orbax checkpoint at T5X's step with the parameters (and
    the Adafactor state unless optimizer_state is False) and a model.gin. Nothing is left behind on
    failure. Returns {"step", "parameters", "optimizer_state", "refactored"}."""
    out_dir = os.path.abspath(out_dir)
    hf_import.check_new_folder(out_dir)
    config = dataclasses.replace(config, scan_layers=False, remat_policy="none")
    tree = read_checkpoint(src)
    params = convert_params(tree["target"], config)
    step = int(np.asarray(tree["state"].get("step", 0)))
    opt_state, refactored = None, []
    if optimizer_state and tree["state"].get("param_states"):
        opt_state, refactored = convert_optimizer_state(tree["state"], params, tree["target"])
    with hf_import.new_folder(out_dir) as staging:
        checkpoints.save_params(staging, params, config, step=step, extra_metadata={"source": src}, opt_state=opt_state)
        with open(os.path.join(staging, "model.gin"), "w") as f:
            f.write(hf_import.model_gin(config, out_dir, None, src, command="convert-t5x"))
    return {
        "step": step,
        "parameters": len(_paths(params)),
        "optimizer_state": opt_state is not None,
        "refactored": refactored,
    }
