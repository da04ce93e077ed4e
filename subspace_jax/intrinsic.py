"""Intrinsic dimension: the smallest subspace size d whose accuracy reaches a threshold.

Pure NumPy on measured accuracies; no training here. A *curve* is a dict
``{d: acc_S}`` of per-seed accuracies at each measured d (S seeds, the same
S for every d). The search is:

1. a coarse log grid of d (given);
2. bisection rounds: for each threshold, the bracket (last failing d, first
   passing d) of the mean curve is split by ``points`` new d's evenly spaced
   in log d; the new d's of all thresholds are measured together (one
   vmapped program per round in the experiment).

Only finished runs count: a diverged run is NaN in ``acc_S`` and is left out
of every mean (``nanmean``) and bootstrap resample; a d with no finished run
is left out of the curve (no estimate there).

Estimates: ``d`` is the smallest measured d whose mean over seeds reaches the
threshold; ``d_interp`` the first crossing of the mean curve, linear in
log d between the bracketing points; the confidence interval is a percentile
bootstrap of ``d_interp``, resampling the seeds of every d independently.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np


def as_arrays(curve: Mapping[int, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """``{d: acc_S}`` -> ``(d_K, acc_KxS)`` sorted by d, without the d's whose
    runs all diverged (NaN); other NaNs (diverged seeds) stay."""
    d_K = np.asarray(sorted(d for d in curve if np.isfinite(np.asarray(curve[d], float)).any()),
                     dtype=np.int64)
    acc_KxS = np.asarray([np.asarray(curve[d], float) for d in d_K], float).reshape(len(d_K), -1)
    return d_K, acc_KxS


def seed_means(acc_KxS) -> np.ndarray:
    """Mean over the finished (finite) seeds of each d."""
    return np.nanmean(acc_KxS, axis=1)


def crossing(d_K, acc_xK, threshold: float) -> np.ndarray:
    """First crossing of ``threshold`` by each curve ``acc_xK`` (any leading axes).

    Linear interpolation in log d between the last point below the threshold
    and the first at or above it. Censored values: ``d_K[0]`` when the first
    point already passes (the crossing is at or below it), ``inf`` when no
    point passes (above the largest d).
    """
    d_K = np.asarray(d_K, float)
    acc_xK = np.asarray(acc_xK, float)
    passes_xK = acc_xK >= threshold
    first_x = passes_xK.argmax(-1)
    prev_x = np.maximum(first_x - 1, 0)
    a0 = np.take_along_axis(acc_xK, prev_x[..., None], -1)[..., 0]
    a1 = np.take_along_axis(acc_xK, first_x[..., None], -1)[..., 0]
    x0, x1 = np.log(d_K[prev_x]), np.log(d_K[first_x])
    # a0 < threshold <= a1 whenever first > 0, so a1 > a0 there.
    frac = np.where(a1 > a0, (threshold - a0) / np.where(a1 > a0, a1 - a0, 1.0), 1.0)
    d_x = np.where(first_x > 0, np.exp(x0 + np.clip(frac, 0.0, 1.0) * (x1 - x0)), d_K[first_x])
    return np.where(passes_xK.any(-1), d_x, np.inf)


def smallest_passing(d_K, mean_K, threshold: float) -> int | None:
    """The smallest measured d whose mean accuracy reaches ``threshold``."""
    passing = [int(d) for d, a in zip(d_K, mean_K) if a >= threshold]
    return min(passing) if passing else None


def bracket(d_K, mean_K, threshold: float) -> tuple[int, int] | None:
    """``(last failing d, first passing d)`` of the mean curve, or None when
    no point passes or the smallest one already does (nothing to bisect)."""
    order = np.argsort(d_K)
    d_K, mean_K = np.asarray(d_K)[order], np.asarray(mean_K)[order]
    passes_K = mean_K >= threshold
    if not passes_K.any() or passes_K[0]:
        return None
    i = int(passes_K.argmax())
    return int(d_K[i - 1]), int(d_K[i])


def split(lo: int, hi: int, points: int) -> list[int]:
    """Up to ``points`` integers strictly between lo and hi, evenly spaced in log d."""
    ratios = np.arange(1, points + 1) / (points + 1)
    inner = np.round(lo * (hi / lo) ** ratios).astype(int)
    return sorted({int(d) for d in inner if lo < d < hi})


def next_candidates(curve: Mapping[int, Sequence[float]], thresholds: Sequence[float],
                    points: int) -> list[int]:
    """The unmeasured d's of one bisection round, for all thresholds together."""
    d_K, acc_KxS = as_arrays(curve)
    mean_K = seed_means(acc_KxS)
    new = set()
    for threshold in thresholds:
        b = bracket(d_K, mean_K, threshold)
        if b is not None:
            new.update(split(*b, points))
    return sorted(new - set(int(d) for d in d_K))


def search(evaluate: Callable[[list[int], str], Mapping[int, Sequence[float]] | None],
           grid: Sequence[int], thresholds: Sequence[float], rounds: int,
           points: int) -> dict[int, np.ndarray]:
    """Coarse grid, then ``rounds`` bisection rounds; returns the whole curve.

    ``evaluate(ds, phase)`` measures the d's in ``ds`` (phase ``"grid"`` or
    ``"bisect<r>"``) and returns ``{d: acc_S}``, or None if it failed (the
    search stops there with what it has).
    """
    curve: dict[int, np.ndarray] = {}
    ds, phase = sorted({int(d) for d in grid}), "grid"
    for r in range(rounds + 1):
        if r:
            ds, phase = next_candidates(curve, thresholds, points), f"bisect{r}"
        if not ds:
            break
        got = evaluate(ds, phase)
        if got is None:
            break
        curve.update({int(d): np.asarray(a, float) for d, a in got.items()})
    return curve


def bootstrap_crossings(d_K, acc_KxS, threshold: float, samples: int = 1000,
                        seed: int = 0) -> np.ndarray:
    """``d_interp`` of ``samples`` curves whose seeds are resampled, per d, with
    replacement (the seeds of different d's are resampled independently; only
    the finished, finite ones)."""
    acc_KxS = np.asarray(acc_KxS, float)
    rng = np.random.default_rng(seed)
    mean_BxK = np.empty((samples, len(acc_KxS)))
    for k, acc_S in enumerate(acc_KxS):
        ok = acc_S[np.isfinite(acc_S)]
        mean_BxK[:, k] = ok[rng.integers(0, len(ok), size=(samples, len(ok)))].mean(1)
    return crossing(d_K, mean_BxK, threshold)


def estimate(curve: Mapping[int, Sequence[float]], threshold: float, samples: int = 1000,
             level: float = 0.9, seed: int = 0) -> dict:
    """d_int for one threshold: point estimates, percentile bootstrap CI, censoring.

    ``censored`` is ``"above"`` when no d reaches the threshold (d_int > the
    largest d; the CI's upper end is then inf), ``"below"`` when the smallest
    d already does (d_int <= it), else None. The CI is of ``d_interp``, so
    with a coarse search it can lie below ``d``; with few seeds it is too
    narrow (see experiments/intrinsic_dimension.py).
    """
    d_K, acc_KxS = as_arrays(curve)
    mean_K = seed_means(acc_KxS)
    d_pass = smallest_passing(d_K, mean_K, threshold)
    boot_B = bootstrap_crossings(d_K, acc_KxS, threshold, samples, seed)
    # inverted_cdf picks sample values: no interpolation with inf (censored) ones.
    lo, hi = np.quantile(boot_B, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    censored = "above" if d_pass is None else "below" if d_pass == d_K[0] else None
    return {"threshold": float(threshold), "d": d_pass,
            "d_interp": float(crossing(d_K, mean_K, threshold)),
            "ci": [float(lo), float(hi)], "ci_level": float(level), "ci_samples": int(samples),
            "bracket": bracket(d_K, mean_K, threshold), "censored": censored,
            "d_range": [int(d_K[0]), int(d_K[-1])], "seeds": int(acc_KxS.shape[1]),
            "diverged_runs": int((~np.isfinite(acc_KxS)).sum())}


def fmt_d(est: dict) -> str:
    """``"750"``, ``"> 1,600"`` or ``"<= 50"``."""
    if est["censored"] == "above":
        return f"> {est['d_range'][1]:,}"
    return f"<= {est['d']:,}" if est["censored"] == "below" else f"{est['d']:,}"


def fmt_ci(est: dict) -> str:
    lo, hi = est["ci"]
    hi_text = "inf" if not math.isfinite(hi) else f"{hi:,.0f}"
    return f"[{lo:,.0f}, {hi_text}]"
