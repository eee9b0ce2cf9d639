"""`plan` for a multi-slice mesh: the same per-device memory as the one-slice mesh of its shape,
and the bytes each slice sends over the data-centre network per step."""

import jax
import numpy as np

from helpers import SMALL_MODEL, step_config
from t5pod import partitioning, planning, trainer


def test_a_multi_slice_plan_reports_the_gradient_bytes_each_slice_sends_over_dcn():
    # 8 test devices as 2 slices of a (2, 2) mesh: a (4, 2) mesh in all.
    sliced = planning.plan(SMALL_MODEL, step_config(mesh_shape=(2, 2), dcn_mesh_shape=(2, 1)))
    flat = planning.plan(SMALL_MODEL, step_config(mesh_shape=(4, 2)))
    assert sliced["mesh"] == flat["mesh"] == {"data": 4, "model": 2} and sliced["dcn_slices"] == 2
    for key in ("params_bytes", "opt_state_bytes", "peak_bytes"):
        assert sliced[key] == flat[key], key
    # Independently: the initialised parameters' bytes (float32), of which a 2-slice all-reduce
    # sends 2 * (2 - 1) / 2 = all once per slice; one slice sends nothing.
    mesh = partitioning.make_mesh((4, 2))
    params = trainer.create_state(SMALL_MODEL, step_config(mesh_shape=(4, 2)), mesh).init(jax.random.PRNGKey(0)).params
    total = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(params))
    assert sliced["dcn_bytes_per_step"] == total and flat["dcn_bytes_per_step"] == 0
    assert planning.dcn_bytes_per_step(params, 4) == total * 3 // 2  # 2 * 3 / 4
    assert "across 2 slices:" in planning.format_plan(sliced, None)
