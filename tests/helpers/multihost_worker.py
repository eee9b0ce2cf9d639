"""One process of a multi-process test: a few train steps on one fixed global batch.

Usage: multihost_worker.py OUT NUM_PROCESSES PROCESS_ID PORT [slices]. Each process feeds only its
own rows of the global batch; process 0 writes the losses and the gathered parameters to OUT. With
`slices`, each process stands for a slice: a (2, 2) mesh within it and DCN_MESH_SHAPE (2, 1), the
same (4, 2) mesh as one process's, built as a multi-slice one.
"""

import os
import sys

out, num_processes, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/

from t5pod import distributed  # noqa: E402

if num_processes > 1:
    distributed.initialize(f"localhost:{port}", num_processes, process_id)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from t5pod import partitioning, train_loop, train_step, trainer  # noqa: E402
from test_training import MODEL, _fixed_batch, _step  # noqa: E402

config = _step(mesh_shape=(4, 2))
mesh = (
    partitioning.make_mesh((2, 2), dcn_shape=(2, 1)) if sys.argv[5:] == ["slices"] else partitioning.make_mesh((4, 2))
)
assert dict(mesh.shape) == {"data": 4, "model": 2}
setup = trainer.create_state(MODEL, config, mesh)
rows = _fixed_batch()
per_process = len(rows["encoder_input_tokens"]) // num_processes
local = {k: v[process_id * per_process : (process_id + 1) * per_process] for k, v in rows.items()}
losses = []
with mesh, nn.logical_axis_rules(setup.rules):
    state = setup.init(jax.random.PRNGKey(0))
    step = trainer.make_train_step(config, setup, mesh)
    batch = train_loop.global_batch(local, mesh)
    for i in range(3):
        state, metrics = step(state, batch, jax.random.fold_in(jax.random.PRNGKey(1), i))
        losses.append(train_step.summarize(jax.device_get(metrics))["loss"])
    params = multihost_utils.process_allgather(state.params, tiled=True)
if process_id == 0:
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, losses=np.array(losses), **flat)
