"""Experiment outputs: atomic JSON files, metrics.jsonl, resumable runs, progress.

Layout of a workdir::

    config.json        the full config of the invocation
    metrics.jsonl      one JSON object per logged epoch of every run
    runs/<id>.json     final record of each finished run (skipped on re-run)
    runs/<id>.partial.npz  an unfinished unit's last chunk of epochs (``Checkpoint``)
    summary.json       the experiment's table
    *.png              figures
    .lock              pid and host of the process writing here (``Lock``)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import time
from typing import Any, Iterable

import numpy as np

from subspace_jax.errors import InputError


def to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if hasattr(x, "to_dict"):  # ml_collections.ConfigDict
        return to_jsonable(x.to_dict())
    if isinstance(x, np.float32):  # shortest repr: 0.03, not 0.029999999329447746
        return to_jsonable(float(str(x)))
    if isinstance(x, (np.ndarray, np.generic)) or type(x).__module__.startswith("jax"):
        arr = np.asarray(x)
        if arr.ndim:
            return [to_jsonable(v) for v in arr]
        return to_jsonable(arr[()] if arr.dtype == np.float32 else arr.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; a diverged value is recorded as null
    return x


@contextlib.contextmanager
def atomic(path: str, mode: str = "wb"):
    """A file to write ``path`` through: it replaces ``path`` only when the block ends
    without an error, so a reader (or a resumed run) never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # the block failed: drop the partial file
            os.remove(tmp)


class Workdir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.join(self.path, "runs"), exist_ok=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj: Any) -> str:
        """Writes atomically (``atomic``), as every writer of this class does."""
        target = self.file(name)
        with atomic(target, "w") as f:
            json.dump(to_jsonable(obj), f, indent=1, sort_keys=True)
        return target

    def write_text(self, name: str, text: str) -> str:
        target = self.file(name)
        with atomic(target, "w") as f:
            f.write(text)
        return target

    def save_npy(self, name: str, arr) -> str:
        """One array to ``name`` (.npy)."""
        target = self.file(name)
        with atomic(target) as f:
            np.save(f, np.asarray(arr))
        return target

    def save_npz(self, name: str, arrays: dict, compressed: bool = False) -> str:
        """Named arrays to ``name`` (.npz; ``compressed``: ``np.savez_compressed``)."""
        target = self.file(name)
        with atomic(target) as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
        return target

    def read_json(self, name: str) -> Any:
        with open(self.file(name)) as f:
            return json.load(f)

    def append_metrics(self, rows: Iterable[dict]) -> None:
        # Appended whole lines after a run finished; a crash loses at most that run.
        with open(self.file("metrics.jsonl"), "a") as f:
            for row in rows:
                f.write(json.dumps(to_jsonable(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def metrics(self, run_id: str, by: tuple[str, ...]) -> list[dict]:
        """The metrics rows of unit ``run_id``, one per value of the ``by`` keys:
        a unit re-run after a crash between its rows and its record logs twice,
        and the later row wins."""
        rows: dict = {}
        if os.path.exists(self.file("metrics.jsonl")):
            with open(self.file("metrics.jsonl")) as f:
                for line in f:
                    row = json.loads(line)
                    if row.get("unit") == run_id:
                        rows[tuple(row.get(k) for k in by)] = row
        return list(rows.values())

    def run_record(self, run_id: str) -> dict | None:
        path = self.file(f"runs/{run_id}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def finish_run(self, run_id: str, record: dict, history_rows: Iterable[dict] = ()) -> None:
        self.append_metrics(history_rows)
        self.write_json(f"runs/{run_id}.json", record)

    def checkpoint(self, run_id: str) -> "Checkpoint":
        return Checkpoint(self.file(f"runs/{run_id}.partial.npz"))

    def save_figure(self, fig, name: str) -> str:
        target = self.file(name)
        with atomic(target) as f:
            fig.savefig(f, format=os.path.splitext(name)[1][1:], dpi=120, bbox_inches="tight")
        return target


class Progress:
    """Prints ``[i/n] label  elapsed, ETA`` lines for long sweeps."""

    def __init__(self, total: int, name: str = "", stream=None):
        self.total, self.done, self.name, self.stream = total, 0, name, stream
        self.start = time.time()
        self.timed = 0  # units that actually ran (skipped ones cost ~0)
        self.timed_seconds = 0.0

    def step(self, label: str, seconds: float | None = None, skipped: bool = False) -> None:
        self.done += 1
        if not skipped and seconds is not None:
            self.timed += 1
            self.timed_seconds += seconds
        elapsed = time.time() - self.start
        left = self.total - self.done
        eta = (self.timed_seconds / self.timed * left) if self.timed else 0.0
        tag = "skipped (already finished)" if skipped else f"{seconds:.1f}s" if seconds else ""
        print(f"[{self.name} {self.done}/{self.total}] {label}  {tag}  "
              f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s", file=self.stream or sys.stdout, flush=True)


class EpochTicker:
    """One line per epoch: ``  label: epoch e/N  elapsed .., ETA ..``.

    Under vmap the callback fires once per run and epoch; only the first call
    of each epoch prints. Runs report to it through ``tick`` while it is
    current (``ticking``).
    """

    def __init__(self, label: str, epochs: int, stream=None):
        self.label, self.epochs, self.stream = label, epochs, stream
        self.seen: set[int] = set()
        self.start = time.time()
        self.first: float | None = None  # time of the first epoch seen, and its number
        self.first_epoch = 0

    def __call__(self, epoch, val_acc=None) -> None:
        e = int(epoch) + 1
        if e in self.seen:
            return
        self.seen.add(e)
        now = time.time()
        elapsed = now - self.start
        if self.first is None:  # epoch 1 (or the first after a resume) includes
            self.first, self.first_epoch = now, e  # compilation: later rates exclude it
            eta = elapsed * (self.epochs - e)
        else:
            eta = (now - self.first) / (e - self.first_epoch) * (self.epochs - e)
        print(f"  {self.label}: epoch {e}/{self.epochs}  elapsed {elapsed:.0f}s, "
              f"ETA {eta:.0f}s", file=self.stream or sys.stdout, flush=True)


# A module-level cell, not a contextvars.ContextVar: jax.debug.callback can run ``tick`` on
# an XLA worker thread (it does with two XLA CPU devices, as launch.py sets up, jax 0.10.2),
# which never sees a ContextVar set in the main thread, so every tick would be dropped
# (tests/test_interrupt.py's one-compiled-run test fails with one).
_CURRENT_TICKER: list[EpochTicker | None] = [None]


def tick(epoch, val_acc=None) -> None:
    """The one host callback for ``train.make_run(on_epoch=tick)``: forwards to
    the current ticker (``ticking``), a no-op when none is. Being one function,
    it leaves a compiled run the same whatever label its progress goes to."""
    ticker = _CURRENT_TICKER[0]
    if ticker is not None:
        ticker(epoch, val_acc)


@contextlib.contextmanager
def ticking(label: str, epochs: int, stream=None):
    """Makes a fresh ``EpochTicker(label, epochs)`` current for the block.

    On leaving, waits for the block's pending host callbacks
    (``jax.effects_barrier``), so no tick of this block lands in the next one's
    ticker, then restores the ticker that was current before."""
    previous = _CURRENT_TICKER[0]
    ticker = _CURRENT_TICKER[0] = EpochTicker(label, epochs, stream)
    try:
        yield ticker
    finally:
        try:
            import jax  # here: workdir itself needs no JAX
            jax.effects_barrier()
        finally:
            _CURRENT_TICKER[0] = previous


class WorkdirBusy(InputError):
    """Another live process holds the workdir's lock."""


LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lock:
    """``with Lock(path):`` one process at a time writes into a workdir.

    The lock file ``<path>/.lock`` holds the owner's pid and host. A second
    process on the same host refuses with one line naming both; a lock left by
    a process that no longer exists (killed, crashed) is taken over, so a dead
    run never holds a workdir forever. On another host the pid cannot be
    checked: the lock is honoured until its file is removed by hand. A
    directory the lock created and nothing else wrote into (bad data found
    after validation) is removed on release.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.file = os.path.join(self.path, LOCK_FILE)
        self.held = False
        self.created = False

    def _owner(self) -> dict | None:
        try:
            with open(self.file) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def acquire(self) -> "Lock":
        self.created = not os.path.exists(self.path)
        os.makedirs(self.path, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):  # lost races against a stale-lock takeover: retry
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # being written, or garbage: wait a moment
                    time.sleep(0.1)
                    owner = self._owner()
                same_host = owner is not None and owner.get("host") == me["host"]
                if owner is not None and (not same_host or _alive(int(owner["pid"]))):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
                    raise WorkdirBusy(
                        f"workdir {self.path} is in use by process {owner['pid']} on "
                        f"{owner.get('host')} (since {since}); wait for it to finish or pass "
                        f"another --workdir (if that process is gone, delete {self.file})")
                try:  # stale: its process is dead
                    os.remove(self.file)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise WorkdirBusy(f"workdir {self.path}: could not take {self.file}; another process "
                          "keeps taking it; pass another --workdir")

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                os.remove(self.file)
            if self.created and not os.listdir(self.path):  # a run that wrote nothing
                os.rmdir(self.path)
            self.held = False

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class Checkpoint:
    """The state of one unfinished unit between compiled chunks of epochs.

    ``runs/<unit id>.partial.npz`` holds the epochs done, the carry (params,
    optimiser state, best-so-far) and the history so far; it is written
    atomically after each chunk and removed when the unit finishes. The unit
    id hashes everything the unit depends on, so a partial file is only ever
    resumed by the same config.
    """

    def __init__(self, path: str):
        self.path = path

    def save(self, epoch: int, carry, history: dict) -> None:
        import jax  # here, not at the top: the rest of this module needs no JAX
        arrays = {f"carry_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(carry))}
        arrays.update({f"history_{k}": np.asarray(v) for k, v in history.items()})
        with atomic(self.path) as f:
            np.savez(f, epoch=np.int64(epoch), **arrays)

    def load(self, carry_like, epochs: int):
        """``(epoch, carry, history)``, or None when there is nothing to resume.

        ``carry_like``: the carry's structure and shapes (``jax.eval_shape``);
        a file that does not match it, or is unreadable, is ignored.
        """
        import jax
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path) as z:
                epoch = int(z["epoch"])
                leaves_like, treedef = jax.tree.flatten(carry_like)
                leaves = [z[f"carry_{i}"] for i in range(len(leaves_like))]
                history = {k[len("history_"):]: z[k] for k in z.files if k.startswith("history_")}
        except (OSError, KeyError, ValueError):
            return None
        if not 0 < epoch < epochs or any(a.shape != b.shape or a.dtype != b.dtype
                                         for a, b in zip(leaves, leaves_like)):
            return None
        print(f"  resuming {os.path.basename(self.path)} after epoch {epoch}/{epochs}", flush=True)
        return epoch, jax.tree.unflatten(treedef, leaves), history

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)
