"""One run per MODEL_DIR: a lease file with its owner and a heartbeat.

A file lock does not exist on buckets, so the run writes MODEL_DIR/run.lease (JSON: owner,
host, pid, start and last heartbeat times, timeout) and rewrites the heartbeat from a thread.
Another run that finds a live lease stops with a message naming the owner. A lease of a process
on this host holds while that process exists, however old its heartbeat (a stopped process keeps
its folder); it is free at once when the process is gone, or when its pid is this process's own (a
lease left by an earlier boot or container). A lease of another host is free when its heartbeat is
older than its timeout, or further in the future than that (a clock that jumped).

A run that lost its lease anyway (its host's clock jumped, or it was stopped for longer than the
timeout on another host's view) must not write on: `check()` before each checkpoint and metrics
write stops it with one line, and its heartbeat never overwrites another owner's lease.
"""

import json
import os
import socket
import threading
import time
import uuid

import tensorflow as tf

LEASE_FILE = "run.lease"


class RunLockError(RuntimeError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_lease(model_dir: str, name: str = LEASE_FILE) -> dict | None:
    """The lease in MODEL_DIR, or None when there is none (or only a torn one)."""
    return _read(os.path.join(model_dir, name))


def _read(path: str) -> dict | None:
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except (tf.errors.NotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # absent, or torn by a write that was killed half-way: not a live lease


def _write(path: str, lease: dict):
    # Write beside and rename: a reader never sees half a lease on a disk (buckets write whole objects).
    temporary = f"{path}.{lease['owner']}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(json.dumps(lease))
    tf.io.gfile.rename(temporary, path, overwrite=True)


def is_live(lease: dict, now: float | None = None) -> bool:
    """Whether a lease still holds (the module docstring says when)."""
    now = time.time() if now is None else now
    if lease.get("host") == socket.gethostname():
        pid = int(lease.get("pid", -1))
        return pid != os.getpid() and _pid_alive(pid)
    return abs(now - float(lease.get("heartbeat", 0))) <= float(lease.get("timeout_s", 0))


def refusal(model_dir: str, timeout_s: float, name: str = LEASE_FILE, what: str | None = None) -> str | None:
    """Why a new run may not take MODEL_DIR now (a live lease of another run), or None. `what` names
    the thing leased in the message (default: MODEL_DIR <model_dir>)."""
    lease = read_lease(model_dir, name)
    what = what or f"MODEL_DIR {model_dir}"
    if lease is None or not is_live(lease):
        return None
    age = time.time() - float(lease.get("heartbeat", 0))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(lease.get("started", 0))))
    beat = f"{age:.0f} s ago" if age >= 0 else f"{-age:.0f} s in the future by this host's clock"
    return (
        f"{what} is in use by another run (host {lease.get('host')}, pid {lease.get('pid')}, "
        f"started {started}, heartbeat {beat}). Stop that run or choose another; a killed "
        f"run's lease expires {timeout_s:.0f} s after its last heartbeat (at once on its own host)."
    )


class RunLease:
    """Holds MODEL_DIR's lease while a run trains: acquire(), then release() (or use `with`)."""

    def __init__(self, model_dir: str, timeout_s: float = 120.0, name: str = LEASE_FILE, what: str | None = None):
        if timeout_s <= 0:
            raise ValueError(f"The run lease timeout must be positive, got {timeout_s}.")
        self.path = os.path.join(model_dir, name)
        self.what = what or f"MODEL_DIR {model_dir}"
        self.timeout_s = float(timeout_s)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.taken_over: dict | None = None  # the expired lease this run replaced, if any
        self.lost_to: dict | None = None  # the lease of the run that took this one's, once seen

    def _lease(self, started: float) -> dict:
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": started,
            "heartbeat": time.time(),
            "timeout_s": self.timeout_s,
        }

    def acquire(self):
        """Takes the lease, or raises RunLockError naming the live run that holds it."""
        current = _read(self.path)
        if current is not None and current.get("owner") != self.owner:
            reason = refusal(os.path.dirname(self.path), self.timeout_s, os.path.basename(self.path), self.what)
            if reason:
                raise RunLockError(reason)
        self.taken_over = current
        tf.io.gfile.makedirs(os.path.dirname(self.path))
        self._started = time.time()
        _write(self.path, self._lease(self._started))
        # Two runs that start in the same instant both write; the later write wins and the other
        # run sees that it lost.
        time.sleep(0.05)
        holder = _read(self.path)
        if holder is None or holder.get("owner") != self.owner:
            raise RunLockError(
                f"{self.what} was taken by another run starting at the "
                f"same time (host {holder and holder.get('host')}, pid {holder and holder.get('pid')})."
            )
        self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.timeout_s / 4):
            holder = _read(self.path)
            if holder is not None and holder.get("owner") != self.owner:
                self.lost_to = holder  # never overwrite the run that holds it now
                return
            _write(self.path, self._lease(self._started))

    def check(self):
        """Raises RunLockError when another run holds the lease now: call before writing."""
        if self._thread is None:
            return
        holder = self.lost_to or _read(self.path)
        if holder is not None and holder.get("owner") != self.owner:
            self.lost_to = holder
            raise RunLockError(
                f"This run lost {self.what} to another run (host {holder.get('host')}, "
                f"pid {holder.get('pid')}) while it was stopped or its clock jumped; it stops before writing "
                "more. Let the other run finish, or stop it and run this command again to resume."
            )

    def release(self):
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        holder = _read(self.path)
        if holder is not None and holder.get("owner") == self.owner:
            tf.io.gfile.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
