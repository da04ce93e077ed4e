"""Experiment outputs: atomic JSON files, metrics.jsonl, resumable runs, progress.

Layout of a workdir::

    config.json        the full config of the invocation
    metrics.jsonl      one JSON object per logged epoch of every run
    runs/<id>.json     final record of each finished run (skipped on re-run)
    summary.json       the experiment's table
    *.png              figures
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Iterable

import numpy as np


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


class Workdir:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.join(self.path, "runs"), exist_ok=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, obj: Any) -> str:
        """Writes atomically: a reader never sees a half-written file."""
        target = self.file(name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(obj), f, indent=1, sort_keys=True)
        os.replace(tmp, target)
        return target

    def save_npy(self, name: str, arr) -> str:
        """One array to ``name`` (.npy), atomically like the JSON records."""
        target = self.file(name)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.asarray(arr))
        os.replace(tmp, target)
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

    def run_record(self, run_id: str) -> dict | None:
        path = self.file(f"runs/{run_id}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def finish_run(self, run_id: str, record: dict, history_rows: Iterable[dict] = ()) -> None:
        self.append_metrics(history_rows)
        self.write_json(f"runs/{run_id}.json", record)

    def save_figure(self, fig, name: str) -> str:
        target = self.file(name)
        tmp = target + ".tmp.png"
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, target)
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
    """Host callback for ``train.make_run(on_epoch=...)``: one line per epoch.

    Under vmap the callback fires once per run and epoch; only the first call
    of each epoch prints.
    """

    def __init__(self, label: str, epochs: int, stream=None):
        self.label, self.epochs, self.stream = label, epochs, stream
        self.seen: set[int] = set()
        self.start = time.time()

    def __call__(self, epoch, val_acc=None) -> None:
        e = int(epoch) + 1
        if e in self.seen:
            return
        self.seen.add(e)
        now = time.time()
        elapsed = now - self.start
        if e == 1:
            self.first = now  # epoch 1 includes compilation: later rates exclude it
            eta = elapsed * (self.epochs - 1)
        else:
            eta = (now - self.first) / (e - 1) * (self.epochs - e)
        print(f"  {self.label}: epoch {e}/{self.epochs}  elapsed {elapsed:.0f}s, "
              f"ETA {eta:.0f}s", file=self.stream or sys.stdout, flush=True)
