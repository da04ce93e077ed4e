"""Intrinsic dimension d_int90, searched automatically, with bootstrap intervals.

    python launch.py --experiment=intrinsic_dimension           # default: 6 min H100, ~4-7 h CPU
    python launch.py --experiment=intrinsic_dimension --quick   # ~20-30 s, 2 CPU cores
    python launch.py --experiment=intrinsic_dimension --config.data.permute_pixels=True \
        --workdir=runs/intrinsic_dimension_shuffled_pixels
    python launch.py --experiment=intrinsic_dimension --config.data.random_label_fraction=1.0 \
        --config.measure_on=train --config.data.train_size=5000 \
        --config.grid='(400,800,1600,3200,6400)' --config.projection=fastfood \
        --workdir=runs/intrinsic_dimension_random_labels     # lr 0.05, 10 epochs: fits nothing
    python launch.py --experiment=intrinsic_dimension --config.data.random_label_fraction=1.0 \
        --config.measure_on=train --config.data.train_size=5000 --config.projection=fastfood \
        --config.models='("fc_200_200",)' --config.train.epochs=100 \
        --config.grid='(1000,4000,16000,64000)' --config.subspace_learning_rate=0.01 \
        --workdir=runs/idim_random_labels_lr0.01              # fits: d_int90 8,537
    # Bases beyond random (subspace.py), and the sqrt learning-rate rule with 3 factors:
    python launch.py --experiment=intrinsic_dimension --config.projection=per_layer \
        --workdir=runs/intrinsic_dimension_per_layer
    python launch.py --experiment=intrinsic_dimension --config.models='("fc_200_200",)' \
        --config.projection=per_layer:base=sparse --workdir=runs/idfc_per_layer_sparse
    python launch.py --experiment=intrinsic_dimension --config.projection=burn_in:steps=500 \
        --workdir=runs/intrinsic_dimension_burn_in500
    python launch.py --experiment=intrinsic_dimension \
        --config.projection=trajectory:snapshots=1600,every=1 \
        --workdir=runs/intrinsic_dimension_trajectory
    python launch.py --experiment=intrinsic_dimension --config.subspace_lr_rule=sqrt \
        --config.subspace_lr_factors='(0.5,1.0,2.0)' --workdir=runs/intrinsic_dimension_lr_sqrt
    # Shuffled pixels, conv, sqrt rule: 36 min on the 2-core CPU; test 93.6% at d = 6,400
    # where the fixed 0.05 fell to 76.2% (docs/results/intrinsic_dimension.md)
    python launch.py --experiment=intrinsic_dimension --config.models='("conv_subspace",)' \
        --config.data.permute_pixels=True --config.grid='(400,1600,3200,6400)' \
        --config.bisection_rounds=0 --config.seeds='(0,1)' --config.subspace_lr_rule=sqrt \
        --config.subspace_lr_factors='(0.25,0.5,1.0)' --workdir=runs/idim_shuffled_conv_sqrt

d_int90 (Li et al. 2018): the smallest d at which training theta0_D + P omega_d (omega_0 = 0,
P of kind ``projection``) reaches the global baseline (``global_threshold``, 90% accuracy) or
the individual one (``individual_fraction`` x the full-space accuracy of the same model, seeds
and epochs). Search (``intrinsic``): the coarse ``grid`` in one program per model, then
``bisection_rounds`` rounds of ``bisection_points`` new d's per bracket (resolution with the
defaults 2^(1/64), about 1%); every d runs every seed, each with its own P, init and data
order. What chooses never decides (``decision_metric``). The 90% bootstrap interval is too
narrow with few seeds (simulated coverage 72% with 3 seeds, 79% with 5, 87% with 10); ">" /
"<=" mark a threshold not reached in, or already reached at the edge of, the grid.

Cost of the default (fc_200_200 and conv_subspace, 3 seeds, 10 epochs, 3 rounds of 3 points):
5 min 44 s on a shared H100; on this 2-core CPU roughly 4-7 h, estimated from 10-step slices
(FC grid ~10 min per epoch, its dense P 1.3 GB per seed: ``seeds_per_program=1`` bounds it;
conv grid ~3.5 min per epoch; a sparse or fastfood P cuts the FC part).
Expected: Li et al. give 750 (global) and ~525-575 (individual) for fc_200_200 (``PUBLISHED``);
the H100 run (previous protocol, docs/results/intrinsic_dimension.md) gave 637 / 476,
conv_subspace 213 / 195.

Writes: config.json, metrics.jsonl, runs/*.json, summary.json, summary.md, intrinsic_dimension.png.
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, intrinsic, models, report, subspace, sweep, train
from subspace_jax.errors import ConfigError
from subspace_jax.workdir import tick, ticking

# Li et al. 2018 ("Measuring the Intrinsic Dimension of Objective Landscapes"), MNIST:
# fc_200_200's accuracy at d = 100, 300, 500, 750, 1000, 1500 was about 0.60, 0.82, 0.86,
# 0.90, 0.91, 0.93; a later reproduction could not get LeNet below about 1,200. The
# subspace-nn write-up, conv_subspace after 100 epochs: full 99.0%, d = 10,000 98.8%,
# d = 3,000 97.0%, d = 1,000 93.5%.
PUBLISHED = {
    "fc_200_200": {"global": "750", "individual": "~525-575",
                   "note": "Li et al. 2018, MNIST FC 784-200-200-10"},
    "conv_subspace": {"global": "-", "individual": "-",
                      "note": "Li et al. LeNet (44,426 params): 290, shuffled pixels ~1,400; "
                              "subspace-nn (this net, 100 epochs): d=1,000 93.5%"},
}
MEASURES = ("val", "train")


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.models = ("fc_200_200", "conv_subspace")
    cfg.projection = "dense"          # any of subspace.PROJECTIONS, e.g. sparse, fastfood
    cfg.seeds = (0, 1, 2)             # each seed: its own P, init and data order
    cfg.seeds_per_program = 0         # 0 = all seeds in one program; 1 bounds memory
    cfg.grid = (50, 100, 200, 400, 800, 1600)
    cfg.bisection_rounds = 3
    cfg.bisection_points = 3          # new d's per bracket and round
    cfg.global_threshold = 0.9
    cfg.individual_fraction = 0.9     # of the full-space accuracy
    cfg.measure_on = "val"            # val | train (random labels)
    cfg.bootstrap_samples = 1000
    cfg.ci_level = 0.9
    cfg.subspace_learning_rate = 0.05  # lr0 of the rule below
    cfg.subspace_lr_rule = "fixed"     # fixed: lr0 at every d | sqrt: lr0 min(1, sqrt(d0 / d))
    cfg.subspace_lr_d0 = 1000
    cfg.subspace_lr_factors = (1.0,)   # several: each d keeps the best on val_acc (choosing half)
    cfg.subspace_batch_size = 128
    cfg.data = C.data_config()
    cfg.train = C.train_config(epochs=10, batch_size=64, learning_rate=1e-3)  # full space
    if quick:
        cfg.models = ("zoo_fc16",)
        cfg.grid = (16, 64, 256, 1024)
        cfg.bisection_rounds = 1
        cfg.bisection_points = 2
        cfg.subspace_batch_size = 32  # 2,000 images: enough steps to learn in 2 epochs
        cfg.data.train_size = 2000
        cfg.data.val_size = 1000
        cfg.train.batch_size = 32
        cfg.train.epochs = 2
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    checks.nonempty(cfg.models, "models")
    spec = data.spec(cfg.data)  # the shape models are built for
    for name in cfg.models:
        D = models.param_count(models.get(name, *spec))  # get() raises with the valid names
        checks.subspace_dims(cfg.grid, "grid", name, D)  # d > D is an error, never clamped
        subspace.check_kind(cfg.projection, D, d=max(int(d) for d in cfg.grid))
    if cfg.measure_on not in MEASURES:
        raise ConfigError(f"config.measure_on={cfg.measure_on!r}; valid: {', '.join(MEASURES)}.")
    if not cfg.seeds:
        raise ConfigError("config.seeds must name at least one seed.")
    name, options = subspace.parse_kind(cfg.projection)
    if name == "trajectory" and "snapshots" not in options:
        raise ConfigError(f"config.projection={cfg.projection!r}: give snapshots=M (M >= the "
                          "largest grid d), e.g. trajectory:snapshots=1600, so that every "
                          "search phase reads the same trajectory.")
    subspace.check_lr_rule(cfg.subspace_lr_rule, cfg.subspace_lr_d0)
    factors = tuple(cfg.subspace_lr_factors)
    if not factors or any(float(f) <= 0 for f in factors) or len(set(factors)) < len(factors):
        raise ConfigError(f"config.subspace_lr_factors={factors!r} must be distinct numbers > 0.")
    if len(factors) > 1 and cfg.measure_on != "val":
        raise ConfigError("config.subspace_lr_factors: several factors need measure_on='val' "
                          "(the choosing validation half picks one; on train it would also "
                          "decide).")
    if cfg.bisection_rounds < 0 or cfg.bisection_points < 1:
        raise ConfigError("config.bisection_rounds must be >= 0 and bisection_points >= 1.")
    if not (0 < cfg.global_threshold <= 1 and 0 < cfg.individual_fraction <= 1):
        raise ConfigError("config.global_threshold and individual_fraction must be in (0, 1].")
    if not (0 < cfg.ci_level < 1 and cfg.bootstrap_samples >= 1):
        raise ConfigError("config.ci_level must be in (0, 1) and bootstrap_samples >= 1.")


# ---------------------------------------------------------------- units
def train_config(cfg, subspace_run: bool) -> ml_collections.ConfigDict:
    tcfg = ml_collections.ConfigDict(cfg.train.to_dict())
    # measure_on='val': each run keeps the params of its best epoch on the choosing validation
    # half. 'train' (random labels): the last epoch, since the validation labels stay true and
    # would pick a non-memorising epoch; training accuracy then decides (decision_metric).
    tcfg.keep_best = cfg.measure_on == "val"
    if subspace_run:
        tcfg.batch_size = cfg.subspace_batch_size
        tcfg.learning_rate = cfg.subspace_learning_rate
    return tcfg


def seed_chunks(cfg) -> list[tuple[int, ...]]:
    seeds = tuple(int(s) for s in cfg.seeds)
    n = int(cfg.seeds_per_program) or len(seeds)
    return [seeds[i:i + n] for i in range(0, len(seeds), n)]


def run_phase(wd, cfg, name: str, phase: str, dims, d_max: int, ds, dat, failed: list):
    """Trains ``dims`` (d_max = 0: full space) for every seed, one unit per seed
    chunk; returns the records, or None if a unit failed."""
    model = models.for_data(name, ds)
    subspace_run = d_max > 0
    tcfg = train_config(cfg, subspace_run)
    scfg = C.subspace_config(d_max, cfg.projection if subspace_run else "dense")

    @functools.cache  # one run (so one compile) per phase, built once a unit needs it
    def run_fn():
        return train.make_run(model, tcfg, scfg, len(ds.train_y), tick)

    def run_chunk(seeds):
        with ticking(f"{name} {phase}", tcfg.epochs):
            return sweep.run_unit(run_fn(), seeds, hp, dat, {"d": d_R, "lr_factor": factor_R})

    d_R, factor_R, lr_R = learning_rates(cfg, tcfg, dims, subspace_run)
    hp = {"d_active": d_R if subspace_run else np.zeros(len(d_R), np.int32),
          "learning_rate": lr_R, "weight_decay": np.full(len(d_R), tcfg.weight_decay, np.float32)}
    depends = {"data": cfg.data, "train": tcfg, "subspace": scfg, "d": d_R}
    if not np.all(lr_R == np.float32(tcfg.learning_rate)):  # else tcfg names it (old ids hold)
        depends["learning_rate"] = lr_R
    units = [sweep.Unit(f"{name}_{phase}_seeds{'-'.join(map(str, seeds))}",
                        {**depends, "seeds": seeds},
                        lambda _, seeds=seeds: run_chunk(seeds))
             for seeds in seed_chunks(cfg)]
    results = sweep.run_units(wd, units, f"{name} {phase}")
    missing = [u.id for u in units if u.name not in results]
    if missing:
        failed.extend(missing)
        return None
    return [{**r, "phase": phase} for u in units for r in results[u.name]]


def learning_rates(cfg, tcfg, dims, subspace_run: bool):
    """Rows ``(d_R, factor_R, lr_R)``: every d times every factor of the rule's
    learning rate (``subspace.learning_rate``); the full space: tcfg's, once."""
    if not subspace_run:
        return (np.asarray(dims, np.int32), np.ones(len(dims), np.float32),
                np.full(len(dims), tcfg.learning_rate, np.float32))
    factors = np.asarray(cfg.subspace_lr_factors, np.float32)
    d_R = np.repeat(np.asarray(dims, np.int32), len(factors))
    factor_R = np.tile(factors, len(dims))
    lr_R = subspace.learning_rate(cfg.subspace_lr_rule, tcfg.learning_rate, d_R,
                                  int(cfg.subspace_lr_d0)) * factor_R
    return d_R, factor_R, lr_R.astype(np.float32)


CHOOSES = "val_acc"  # the choosing validation half; decide_acc never chooses


def choose_learning_rates(records) -> list[dict]:
    """Per d, the records of the lr factor with the best mean ``val_acc`` over
    seeds (``report.choose``: fewest diverged first); with every factor
    diverged, the smallest factor's (diverged) records."""
    chosen = []
    for d in sorted({int(r["d"]) for r in records}):
        options: dict[float, list] = {}
        for r in records:
            if int(r["d"]) == d:
                options.setdefault(float(r.get("lr_factor", 1.0)), []).append(r)
        best = report.choose(options, CHOOSES)
        chosen.extend(options[min(options) if best is None else best])
    return chosen


def decision_metric(cfg) -> str:
    """The accuracy that decides: the validation half that chose no epoch, or
    (random labels, last epoch kept) the training accuracy.

    The split that chooses never decides: ``val_acc`` (one half of the
    validation images, a fixed random split, ``train.validation_halves``)
    chooses each run's epoch and the lr factor; ``decide_acc`` (the other half,
    which chose nothing) makes every d_int90 decision: both thresholds, the
    individual baseline's accuracy, the bisection brackets. Its cost in noise:
    5,000 instead of 10,000 images, a binomial sd of 0.42 instead of 0.30
    points at 90% for one run. Test accuracy is reported and decides nothing.
    """
    return "decide_acc" if cfg.measure_on == "val" else "train_acc"


def decision_values(records, metric: str, seeds) -> dict[int, list[float]]:
    """``{d: [metric per seed]}`` in ``seeds`` order; a diverged run is NaN
    (left out of every mean and resample, see ``intrinsic``)."""
    value = {(int(r["d"]), int(r["seed"])): (r[metric] if report.is_ok(r)
                                              and r[metric] is not None else np.nan)
             for r in records}
    return {d: [float(value[(d, int(s))]) for s in seeds] for d in sorted({d for d, _ in value})}


def stats(records) -> dict:
    """Mean and sd over the ok seeds of every accuracy; diverged runs counted beside."""
    row = report.stats(records, ("val_acc", "decide_acc", "train_acc", "test_acc"))
    row["seeds"] = row.pop("runs")
    return row


# ---------------------------------------------------------------- one model
def measure_model(cfg, name: str, wd, ds, dat, failed: list) -> dict:
    D = models.param_count(models.for_data(name, ds))
    metric = decision_metric(cfg)
    full = run_phase(wd, cfg, name, "full", [D], 0, ds, dat, failed)
    thresholds = {"global": float(cfg.global_threshold)}
    no_estimate = {}
    if full is None:
        no_estimate["individual"] = "the full-space baseline unit failed"
    else:
        full_mean, _ = report.mean_sd(report.ok_values(full, metric))
        if full_mean is None:
            no_estimate["individual"] = (f"all {len(full)} full-space baseline runs diverged: "
                                         "no individual threshold")
        else:
            thresholds["individual"] = float(cfg.individual_fraction) * full_mean

    records = []

    def evaluate(dims, phase):
        got = run_phase(wd, cfg, name, phase, dims, max(dims), ds, dat, failed)
        if got is None:
            return None
        got = choose_learning_rates(got)
        records.extend(got)
        return decision_values(got, metric, cfg.seeds)

    grid = sorted({int(d) for d in cfg.grid})
    curve = intrinsic.search(evaluate, grid, list(thresholds.values()),
                             int(cfg.bisection_rounds), int(cfg.bisection_points))
    estimates = {}
    if not len(intrinsic.as_arrays(curve)[0]):
        for baseline in thresholds:
            no_estimate[baseline] = "no subspace run finished"
    else:
        for baseline, threshold in thresholds.items():
            estimates[baseline] = intrinsic.estimate(curve, threshold, int(cfg.bootstrap_samples),
                                                     float(cfg.ci_level))
    rows = []
    for d in sorted(curve):
        at_d = [r for r in records if int(r["d"]) == d]
        rows.append({"d": d, "phase": at_d[0]["phase"],
                     "learning_rate": float(at_d[0]["learning_rate"]), **stats(at_d)})
    return {"params": D, "projection": cfg.projection, "measure_on": cfg.measure_on,
            "decided_on": metric,
            "full": stats(full) if full is not None else None, "thresholds": thresholds,
            "curve": rows, "d_int90": estimates, "no_estimate": no_estimate,
            "published": PUBLISHED.get(name)}


# ---------------------------------------------------------------- outputs
def pct(mean, sd) -> str:
    return sweep.fmt_pct(mean, sd)


def markdown(summary: dict, cfg) -> str:
    lines = [f"d_int90, {cfg.projection} projection, measured on {cfg.measure_on} accuracy, "
             f"{len(cfg.seeds)} seeds, {cfg.train.epochs} epochs; CI: "
             f"{100 * cfg.ci_level:g}% percentile bootstrap over seeds "
             f"({cfg.bootstrap_samples} resamples).", "",
             "| model | params D | baseline | threshold % | d_int90 | crossing (interp.) | "
             f"{100 * cfg.ci_level:g}% CI | published |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for name, m in summary["models"].items():
        for baseline, est in m["d_int90"].items():
            published = (m["published"] or {}).get(baseline, "-")
            lines.append(f"| {name} | {m['params']:,} | {baseline} | "
                         f"{100 * est['threshold']:.2f} | {intrinsic.fmt_d(est)} | "
                         f"{est['d_interp']:,.0f} | {intrinsic.fmt_ci(est)} | {published} |")
        for baseline, why in m["no_estimate"].items():
            published = (m["published"] or {}).get(baseline, "-")
            lines.append(f"| {name} | {m['params']:,} | {baseline} | - | no estimate: {why} "
                         f"| - | - | {published} |")
    decides = decision_metric(cfg)
    tag = {k: " (decides)" if k == decides else "" for k in ("decide_acc", "train_acc")}
    lines += ["", "| model | d | phase | lr | val acc % (chooses epoch, lr) | "
                  f"val acc % (other half){tag['decide_acc']} | train acc %{tag['train_acc']} | "
                  "test acc % (reported only) | runs | diverged |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in summary["models"].items():
        rows = m["curve"] + ([{"d": f"full ({m['params']:,})", "phase": "full",
                               "learning_rate": cfg.train.learning_rate, **m["full"]}]
                             if m["full"] else [])
        for r in rows:
            d = f"{r['d']:,}" if isinstance(r["d"], int) else r["d"]
            lr = f"{r['learning_rate']:.3g}" if r.get("learning_rate") is not None else "-"
            lines.append(f"| {name} | {d} | {r['phase']} | {lr} | "
                         f"{pct(r['val_acc_mean'], r['val_acc_sd'])} | "
                         f"{pct(r['decide_acc_mean'], r['decide_acc_sd'])} | "
                         f"{pct(r['train_acc_mean'], r['train_acc_sd'])} | "
                         f"{pct(r['test_acc_mean'], r['test_acc_sd'])} | {r['seeds']} | "
                         f"{r['diverged']} |")
    pre = subspace.pretraining(cfg.projection, max(int(d) for d in cfg.grid))
    if pre and pre["steps"]:
        lines += ["", f"{cfg.projection}: {pre['steps']:,} full-space steps per seed before "
                  "subspace training (at the largest d), information beyond the d free "
                  "parameters: not a random-subspace d_int90."]
    notes = [f"- {name}: {m['published']['note']}" for name, m in summary["models"].items()
             if m["published"]]
    if notes:
        lines += ["", "Published numbers:", *notes]
    if summary["failed_units"]:
        lines += ["", "Failed units (see runs/*.failed.json): "
                  + ", ".join(summary["failed_units"])]
    return "\n".join(lines) + "\n"


def figure(summary: dict, cfg):
    """One panel per model: accuracy vs d (mean +- sd over seeds), thresholds,
    d_int90 (solid line) and its bootstrap interval (shaded)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = decision_metric(cfg)
    n = len(summary["models"])
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    colors = {"global": "tab:red", "individual": "tab:green"}
    for ax, (name, m) in zip(axes[0], summary["models"].items()):
        rows = [r for r in m["curve"] if r[key + "_mean"] is not None]
        d = np.asarray([r["d"] for r in rows], float)
        for k, style, label in ((key, "o-", f"{key.replace('_acc', '')} (decides)"),
                                ("test_acc", "s:", "test (reported only)")):
            ok = [r for r in rows if r[k + "_mean"] is not None]
            ax.errorbar([r["d"] for r in ok], [100 * r[k + "_mean"] for r in ok],
                        yerr=[100 * r[k + "_sd"] for r in ok], fmt=style, capsize=3, ms=4,
                        alpha=1.0 if k == key else 0.5, label=label)
        for baseline, est in m["d_int90"].items():
            c = colors[baseline]
            ax.axhline(100 * est["threshold"], color=c, ls="--", lw=1,
                       label=f"{baseline} threshold {100 * est['threshold']:.1f}%")
            lo, hi = est["ci"]
            if np.isfinite(lo) and len(d):  # an open upper end is drawn to the panel's edge
                ax.axvspan(lo, hi if np.isfinite(hi) else 1.5 * d.max(), color=c, alpha=0.12)
            if est["d"] is not None:
                ax.axvline(est["d"], color=c, lw=1.5,
                           label=f"d_int90 ({baseline}) {intrinsic.fmt_d(est)}, "
                                 f"CI {intrinsic.fmt_ci(est)}")
        ax.set_xscale("log")
        ax.set_xlabel("subspace dimension d")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{name} (D={m['params']:,}, {m['projection']} P)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"mean ± sd over {len(cfg.seeds)} seeds, {cfg.train.epochs} epochs; shaded: "
                 f"{100 * cfg.ci_level:g}% bootstrap CI of d_int90", fontsize=9)
    fig.tight_layout()
    return fig


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd, ds, dat = sweep.prepare(cfg, workdir)
    failed: list[str] = []
    summary = {"models": {name: measure_model(cfg, name, wd, ds, dat, failed)
                          for name in cfg.models}}
    summary["failed_units"] = failed
    summary["settings"] = {"projection": cfg.projection, "measure_on": cfg.measure_on,
                           "pretraining": subspace.pretraining(
                               cfg.projection, max(int(d) for d in cfg.grid)),
                           "subspace_lr": {"rule": cfg.subspace_lr_rule,
                                           "lr0": cfg.subspace_learning_rate,
                                           "d0": cfg.subspace_lr_d0,
                                           "factors": list(cfg.subspace_lr_factors)},
                           "seeds": list(cfg.seeds), "epochs": cfg.train.epochs,
                           "ci": f"{100 * cfg.ci_level:g}% percentile bootstrap, "
                                 f"{cfg.bootstrap_samples} resamples of the seeds at each d"}
    wd.write_json("summary.json", summary)
    text = markdown(summary, cfg)
    with open(wd.file("summary.md"), "w") as f:
        f.write(text)
    print(text)
    print("figure:", wd.save_figure(figure(summary, cfg), "intrinsic_dimension.png"))
    return summary
