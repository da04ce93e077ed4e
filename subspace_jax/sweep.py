"""Running groups of vmapped runs as resumable units, and summarising them.

A *unit* is one compiled program: one model and one static config, vmapped
over seeds x a grid of hyperparameters. Its id is its readable name plus a
hash of everything its numbers depend on (``Unit.depends_on``: the data and
train configs, seeds, grid, and the ids of units whose outputs it reads), so
a workdir re-used with a changed config trains what changed and reuses only
what did not. Each finished unit is written to ``runs/<id>.json`` and reused
on re-run; a unit that raises is recorded in ``runs/<id>.failed.json`` and
the sweep continues. A unit trained through ``run_unit`` is checkpointed
after every epoch (``runs/<id>.partial.npz``): Ctrl-C stops it at the end of
the running epoch and a re-run continues from there with the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import traceback
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from subspace_jax import data, report, train, vectorize
from subspace_jax.workdir import Progress, Workdir, to_jsonable


def unit_id(name: str, depends_on: Any) -> str:
    """``name`` plus a hash of ``depends_on`` (any JSON-able value or ConfigDict)."""
    text = json.dumps(to_jsonable(depends_on), sort_keys=True)
    return f"{name}_{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def config_except(cfg, *fields: str) -> dict:
    """The config as a dict without ``fields`` (those that enumerate units,
    e.g. ``models``): for units that depend on every other field."""
    return {k: v for k, v in to_jsonable(cfg).items() if k not in fields}


class Unit(NamedTuple):
    """One resumable piece of a sweep.

    ``thunk(unit_id)`` runs it and returns ``(records, history rows)``; the id
    names any side files it writes (``runs/<id>.*``), so they change with it.
    """
    name: str                 # readable; results are returned under it
    depends_on: Any           # everything the unit's numbers depend on
    thunk: Callable[[str], tuple[list, list]]

    @property
    def id(self) -> str:
        return unit_id(self.name, self.depends_on)


def prepare(cfg, workdir: str):
    """The start of every experiment: the data, then the workdir with config.json
    (bad data raises ``data.DataError`` before anything is written).

    Returns ``(workdir, dataset, device_data)``.
    """
    ds = data.from_config(cfg.data)
    print(f"data: {ds.summary()}", flush=True)
    wd = Workdir(workdir)
    wd.write_json("config.json", cfg)
    return wd, ds, train.Data.from_dataset(ds)


_CURRENT_CHECKPOINT: list = [None]


@contextlib.contextmanager
def checkpointing(checkpoint):
    """Makes ``checkpoint`` (a ``Workdir.checkpoint``) the one the block's first ``run_unit``
    uses, then restores the one current before (``run_units`` sets each unit's)."""
    previous = _CURRENT_CHECKPOINT[0]
    _CURRENT_CHECKPOINT[0] = checkpoint
    try:
        yield checkpoint
    finally:
        _CURRENT_CHECKPOINT[0] = previous


def run_unit(run_fn: Callable, seeds: Sequence[int], hp: dict[str, np.ndarray],
             data: train.Data, labels: dict[str, np.ndarray], checkpoint=None,
             keep_params: bool = False) -> tuple[list[dict], list[dict]]:
    """Runs every (seed, hp row) vmapped, one epoch per compiled chunk; returns
    (records, history rows).

    ``labels`` are per-row values to copy into each record (e.g. ``d``).
    ``checkpoint`` (``Workdir.checkpoint(unit_id)``) saves the unit after each
    epoch and resumes it on re-run; by default, the first ``run_unit`` inside a
    ``checkpointing`` block uses its checkpoint (``run_units``: the unit's). ``keep_params`` adds each run's kept flat
    parameters to its record as ``theta``.
    """
    if checkpoint is None:
        checkpoint, _CURRENT_CHECKPOINT[0] = _CURRENT_CHECKPOINT[0], None  # one use per unit
    out = vectorize.vmapped_chunks(run_fn, vectorize.run_keys(seeds), hp, data, checkpoint)
    out = jax.device_get(out)
    records, rows = [], []
    n_rows = len(next(iter(hp.values())))
    for s, seed in enumerate(seeds):
        for r in range(n_rows):
            base = {"seed": int(seed), **{k: v[r] for k, v in hp.items()},
                    **{k: v[r] for k, v in labels.items()}}
            final = {k: np.asarray(v[s, r]) for k, v in out.final.items()}
            diverged = bool(final.pop("diverged"))
            rec = {**base, **final, "status": "diverged" if diverged else "ok"}
            if keep_params:
                rec["theta"] = np.asarray(out.params[s, r])
            records.append(rec)
            epochs = len(out.history["val_acc"][s, r])
            for e in range(epochs):
                rows.append({**base, "epoch": e + 1,
                             **{k: v[s, r, e] for k, v in out.history.items()}})
    return records, rows


def run_units(wd: Workdir, units: Sequence[Unit], label: str) -> dict[str, list[dict]]:
    """Runs ``units`` resumably; returns records by unit name (failed ones absent).

    A unit is reused only when a record with its id (name + hash of what it
    depends on) exists, so a changed config never returns old results.
    """
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"unit names must be unique, got {names}")
    progress = Progress(len(units), label)
    results = {}
    for unit in units:
        uid = unit.id
        done = wd.run_record(uid)
        if done is not None:
            results[unit.name] = done["records"]
            progress.step(uid, skipped=True)
            continue
        t0 = time.time()
        try:
            with checkpointing(wd.checkpoint(uid)):
                records, rows = unit.thunk(uid)
        except Exception as e:  # noqa: BLE001 - one failed unit never ends the sweep
            wd.write_json(f"runs/{uid}.failed.json",
                          {"error": repr(e), "traceback": traceback.format_exc()})
            progress.step(f"{uid} FAILED: {e!r}", time.time() - t0)
            continue
        for row in rows:
            row["unit"] = uid
        wd.finish_run(uid, {"unit": uid, "depends_on": unit.depends_on,
                            "seconds": time.time() - t0, "records": records}, rows)
        wd.checkpoint(uid).remove()
        results[unit.name] = wd.run_record(uid)["records"]
        progress.step(uid, time.time() - t0)
    return results


def select_and_summarise(records: Sequence[dict], group_by: str, select_by: str = "learning_rate",
                         metric: str = "val_acc") -> list[dict]:
    """Per ``group_by`` value, chooses the ``select_by`` value on ``metric``
    (``report.choose``: fewest diverged seeds, then best mean of the ok ones),
    then reports mean and sd over the ok seeds of the chosen value; diverged
    seeds are counted beside. Test accuracy is never used to choose. Each row
    also lists every candidate's mean ``metric`` (``candidates``) and says in
    ``at_edge`` ("low" / "high" / None) whether the choice sat at an end of a
    grid of several values: the optimum may then lie outside the grid.
    """
    table = []
    for g in sorted({r[group_by] for r in records}):
        group = [r for r in records if r[group_by] == g]
        options = {o: [r for r in group if r[select_by] == o] for o in {r[select_by] for r in group}}
        best = report.choose(options, metric)
        chosen = options.get(best, [])
        row = {group_by: g, select_by: best,
               **report.stats(chosen, ("val_acc", "decide_acc", "test_acc", "train_acc"))}
        row["seeds"] = row.pop("ok")
        row["candidates"] = [{select_by: o, f"{metric}_mean": report.mean_sd(
            report.ok_values(options[o], metric))[0], "ok": sum(map(report.is_ok, options[o])),
            "runs": len(options[o])} for o in sorted(options)]
        row["at_edge"] = (None if len(options) < 2 or best is None else
                          "low" if best == min(options) else
                          "high" if best == max(options) else None)
        table.append(row)
    return table


def add_curves(table: list[dict], records: Sequence[dict], rows: Sequence[dict],
               group_by: str, select_by: str = "learning_rate", metric: str = "val_acc") -> None:
    """Adds to each ``select_and_summarise`` row the mean ``metric`` per epoch
    (``{metric}_curve``, over the ok seeds of its chosen value; ``rows``: the
    unit's metrics rows) and ``best_epoch_mean``: whether a run stopped rising."""
    def chosen(r, row):
        return r[group_by] == row[group_by] and r[select_by] == row[select_by]

    for row in table:
        ok = [r for r in records if chosen(r, row) and report.is_ok(r)]
        seeds = {r["seed"] for r in ok}
        by_epoch: dict[int, list[float]] = {}
        for m in rows:
            if chosen(m, row) and m["seed"] in seeds and m.get(metric) is not None:
                by_epoch.setdefault(int(m["epoch"]), []).append(float(m[metric]))
        row[f"{metric}_curve"] = [float(np.mean(by_epoch[e])) for e in sorted(by_epoch)]
        row["best_epoch_mean"] = report.mean_sd([r["best_epoch"] for r in ok
                                                 if "best_epoch" in r])[0]


def fmt_pct(mean, sd) -> str:
    if mean is None:
        return "diverged"
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"
