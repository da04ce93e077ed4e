"""Aggregates over runs: only finished (``ok``) runs count; diverged ones are counted beside.

Every mean, sd, threshold and choice over runs in the project goes through
here, so the rule is stated once:

* a run whose ``status`` is not ``"ok"`` (diverged, NaN) never enters a mean or
  a threshold; ``diverged`` counts it beside the estimate;
* with no ``ok`` run there is no estimate (``None``), never a 0;
* a choice between options (a learning rate, a trial) prefers the option with
  fewer diverged runs, then the better mean over its ok runs: an option that
  diverges on some seeds is never preferred for its lucky ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def is_ok(record: dict) -> bool:
    return record.get("status", "ok") == "ok"


def ok_values(records: Sequence[dict], key: str) -> np.ndarray:
    """``key`` of the ok runs that have a finite value."""
    vals = [r.get(key) for r in records if is_ok(r)]
    arr = np.asarray([v for v in vals if v is not None], float)
    return arr[np.isfinite(arr)]


def mean_sd(values) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof=1; 0.0 for one value); (None, None) for none."""
    vals = np.asarray(values, float)
    if not len(vals):
        return None, None
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def stats(records: Sequence[dict], keys: Sequence[str]) -> dict:
    """``{key}_mean`` / ``{key}_sd`` over ok runs, plus ``runs``, ``ok`` and ``diverged``."""
    n_ok = sum(is_ok(r) for r in records)
    row = {"runs": len(records), "ok": n_ok, "diverged": len(records) - n_ok}
    for key in keys:
        row[key + "_mean"], row[key + "_sd"] = mean_sd(ok_values(records, key))
    return row


def best_seed(records: Sequence[dict], key: str = "val_acc") -> int | None:
    """The seed of the ok run best on ``key`` (the choosing half), ties to the
    smaller seed; None when no run is ok. One record per seed."""
    return choose({int(r["seed"]): [r] for r in records}, key)


def choose(options: dict, key: str) -> object | None:
    """The option whose runs have the fewest diverged, then the best mean ``key``.

    ``options`` maps an option to its records; ties keep the first option in
    sorted order. Returns None when no option has an ok run.
    """
    best, best_rank = None, None
    for option in sorted(options):
        runs = options[option]
        vals = ok_values(runs, key)
        if not len(vals):
            continue
        rank = (-sum(not is_ok(r) for r in runs), float(vals.mean()))
        if best_rank is None or rank > best_rank:
            best, best_rank = option, rank
    return best
