"""Running groups of vmapped runs as resumable units, and summarising them.

A *unit* is one compiled program: one model and one static config, vmapped
over seeds x a grid of hyperparameters. Each finished unit is written to
``runs/<unit_id>.json`` and skipped on re-run; a unit that raises is recorded
in ``runs/<unit_id>.failed.json`` and the sweep continues.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable, Sequence

import jax
import numpy as np

from subspace_jax import data, train, vectorize
from subspace_jax.workdir import Progress, Workdir


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


def run_unit(run_fn: Callable, seeds: Sequence[int], hp: dict[str, np.ndarray],
             data: train.Data, labels: dict[str, np.ndarray]) -> tuple[list[dict], list[dict]]:
    """Runs every (seed, hp row) in one program; returns (records, history rows).

    ``labels`` are per-row values to copy into each record (e.g. ``d``).
    """
    out = vectorize.vmapped(run_fn, vectorize.run_keys(seeds), hp, data)
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
            records.append(rec)
            epochs = len(out.history["val_acc"][s, r])
            for e in range(epochs):
                rows.append({**base, "epoch": e + 1,
                             **{k: v[s, r, e] for k, v in out.history.items()}})
    return records, rows


def run_units(wd: Workdir, units: Sequence[tuple[str, Callable[[], tuple[list, list]]]],
              name: str) -> dict[str, list[dict]]:
    """Runs ``(unit_id, thunk)`` units resumably; returns records by unit id."""
    progress = Progress(len(units), name)
    results = {}
    for unit_id, thunk in units:
        done = wd.run_record(unit_id)
        if done is not None:
            results[unit_id] = done["records"]
            progress.step(unit_id, skipped=True)
            continue
        t0 = time.time()
        try:
            records, rows = thunk()
        except Exception as e:  # noqa: BLE001 - one failed unit never ends the sweep
            wd.write_json(f"runs/{unit_id}.failed.json",
                          {"error": repr(e), "traceback": traceback.format_exc()})
            progress.step(f"{unit_id} FAILED: {e!r}", time.time() - t0)
            continue
        for row in rows:
            row["unit"] = unit_id
        wd.finish_run(unit_id, {"unit": unit_id, "seconds": time.time() - t0,
                                "records": records}, rows)
        results[unit_id] = wd.run_record(unit_id)["records"]
        progress.step(unit_id, time.time() - t0)
    return results


def select_and_summarise(records: Sequence[dict], group_by: str, select_by: str = "learning_rate",
                         metric: str = "val_acc") -> list[dict]:
    """Per ``group_by`` value, picks the ``select_by`` value with the best mean
    validation metric over seeds (diverged runs count as failures), then
    reports mean and sd over seeds of validation and test accuracy.
    Test accuracy is never used to choose.
    """
    table = []
    for g in sorted({r[group_by] for r in records}):
        group = [r for r in records if r[group_by] == g]
        best, best_score = None, -np.inf
        for option in sorted({r[select_by] for r in group}):
            runs = [r for r in group if r[select_by] == option]
            score = np.mean([r[metric] if r["status"] == "ok" and r[metric] is not None
                             else -np.inf for r in runs])
            if best is None or score > best_score:
                best, best_score = option, score
        chosen = [r for r in group if r[select_by] == best and r["status"] == "ok"]
        row = {group_by: g, select_by: best, "seeds": len(chosen),
               "diverged": sum(r["status"] != "ok" for r in group)}
        for key in ("val_acc", "test_acc", "train_acc"):
            vals = np.asarray([r[key] for r in chosen], float)
            row[key + "_mean"] = float(vals.mean()) if len(vals) else None
            row[key + "_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0 if len(vals) else None
        table.append(row)
    return table


def fmt_pct(mean, sd) -> str:
    if mean is None:
        return "diverged"
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"
