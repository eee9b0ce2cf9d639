"""Multi-host runtime: JAX's own distributed service (jax.distributed), never a home-made one.

On Cloud TPU VMs `jax.distributed.initialize()` finds the slice by itself (--multihost). Elsewhere
(GPU clusters, several CPU processes) pass --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from t5pod.configs import DEFAULT_HEARTBEAT_TIMEOUT_S


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    multihost: bool = False,
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
) -> bool:
    """Joins the job's processes; returns False (and does nothing) for a single-process run."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator_address and not multihost:
        return False
    if coordinator_address and (num_processes is None or process_id is None):
        num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
        process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
        if num_processes is None or process_id is None:
            raise ValueError(
                "--coordinator_address needs --num_processes=N and --process_id=I "
                "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)."
            )
    if "cpu" in os.environ.get("JAX_PLATFORMS", "").split(","):
        # Cross-process collectives on CPU go through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        initialization_timeout=120,
    )
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def is_peer_failure(error: BaseException) -> bool:
    """Whether an error from a collective or the coordination service means another process died."""
    text = f"{type(error).__name__}: {error}".lower()
    return any(
        word in text
        for word in (
            "connection",
            "heartbeat",
            "gloo",
            "coordination",
            "unavailable",
            "peer",
            "deadline",
            "barrier",
            "socket",
            "closed",
        )
    )


def agree(flag: bool) -> bool:
    """True on every process when it is True on any (SIGTERM, a refusal may reach only some)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.max(multihost_utils.process_allgather(np.array([flag], np.int32))))


def checked_by_first(check) -> int:
    """Runs check() (-> a non-negative int) on process 0 only, and gives every process its result.

    A refusal (ValueError, OSError) is raised on process 0 with its own message and on the others
    as a pointer to it, so that no process is left waiting in a collective.
    """
    value, error = 0, None
    if jax.process_index() == 0:
        try:
            value = int(check())
        except (ValueError, OSError) as refusal:
            value, error = -1, refusal
    if jax.process_count() > 1:
        value = int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))
    if error is not None:
        raise error
    if value < 0:
        raise ValueError("process 0 refused to start; its error message says why.")
    return value
