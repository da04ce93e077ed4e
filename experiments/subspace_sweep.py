"""Accuracy vs random-subspace size d, for the conv (21,840) and FC (199,210) nets.

    python launch.py --experiment=subspace_sweep            # default, ~9 min on 2 CPU cores
    python launch.py --experiment=subspace_sweep --quick    # seconds

theta_D = theta0_D + P_Dxd omega_d with a dense Gaussian P (unit-norm columns),
omega_0 = 0, for d in {3, 10, 30, 100, 300, 1000}, plus full-space training.
All d of one seed run in one compiled program: one P of d=1000 with columns
masked off per run (so a single P per seed is in memory). Two seeds (each seed
fixes init, data order and P). Adam; full space lr 1e-3, batch 64; subspace
lr 0.05, batch 128 (lr from a 1-epoch pilot on the validation split over
{0.003, 0.03, 0.1}; give several values in ``subspace_learning_rates`` and
each d gets the one with the best mean validation accuracy). 4 epochs;
the params of the best validation epoch are scored once on the test set.

Cost: 542 s (9 min 2 s) on the 2-core AMD EPYC (2026-12-05, commit 7709858,
alone; its conv-matmul VJP since reverted, within noise): conv full 30 s, conv subspace 174 s, FC full 18 s, FC subspace 315 s.
The FC subspace unit is bound by reading its 199,210 x 1,000 P twice a step
(~0.8 GB each; one core already saturates this machine's ~19 GB/s, so the
second device does not help it): at that bandwidth its floor is ~265 s. The
same job took 717 s that morning before the dense projection's vmap rule
(subspace.py) and 806 s on 2026-12-04 before the channel-major conv stack;
issue 12's target, 8 min, is missed by 1 min 2 s. Run as two concurrent
processes, one per model (bandwidth-bound FC beside compute-bound conv), the
same job took 351 s with equal accuracies (2026-12-07,
benchmarks/results/main_job_overlap_amd.log); not built into run_units yet.
Measured (2 seeds, 4 epochs, current protocol; docs/results/subspace_sweep.md
has the table), test accuracy: conv full 98.7%, d=1000 95.8%, d=300 91.5%,
d=100 76.5%; FC full 97.4%, d=1000 91.7%, d=300 82.3%, d=100 63.0%. The
subspace-nn write-up reported after 100 epochs on the conv net: full 99.0%,
d=1000 93.5%.

Any projection kind (``subspace.PROJECTIONS``) and the learning-rate rule
(``subspace_lr_rule``: fixed | sqrt, lr(d) = lr0 min(1, sqrt(d0 / d)) with d0
= ``subspace_lr_d0``; each lr0 of ``subspace_learning_rates`` goes through
the rule and each d keeps the best on ``val_acc``), e.g. the conv net's d up
to 10,000 (issue 15, items 2-4):

    python launch.py --experiment=subspace_sweep --config.projection=per_layer \
        --workdir=runs/subspace_sweep_per_layer
    python launch.py --experiment=subspace_sweep --config.projection=burn_in:steps=500 \
        --workdir=runs/subspace_sweep_burn_in500
    python launch.py --experiment=subspace_sweep \
        --config.projection=trajectory:snapshots=1000 --workdir=runs/subspace_sweep_trajectory
    python launch.py --experiment=subspace_sweep --config.models='("conv_subspace",)' \
        --config.dims='(1000,3000,10000)' --config.subspace_lr_rule=sqrt \
        --config.subspace_learning_rates='(0.025,0.05,0.1)' --workdir=runs/subspace_sweep_lr_sqrt

Burn-in and trajectory kinds train in full space first (extra information:
the reported free parameters stay d; see experiments/intrinsic_dimension.py).

Writes: config.json, metrics.jsonl (per epoch and run), runs/*.json,
summary.json (the table; per row its mean validation curve and best epoch),
summary.md, accuracy_vs_d.png, val_curves.png (validation accuracy per epoch).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, models, plots, subspace, sweep, train
from subspace_jax.workdir import tick, ticking
from subspace_jax.errors import ConfigError


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.models = ("conv_subspace", "fc_200_200")
    cfg.dims = (3, 10, 30, 100, 300, 1000)
    cfg.seeds = (0, 1)
    cfg.full_learning_rates = (1e-3,)
    cfg.subspace_learning_rates = (0.05,)  # lr0's of the rule below; best on val_acc per d
    cfg.subspace_lr_rule = "fixed"         # fixed: lr0 at every d | sqrt: lr0 min(1, sqrt(d0 / d))
    cfg.subspace_lr_d0 = 1000
    cfg.subspace_batch_size = 128
    cfg.projection = "dense"
    cfg.data = C.data_config()
    cfg.train = C.train_config(epochs=4, batch_size=64, learning_rate=1e-3)
    if quick:
        cfg.models = ("zoo_cnn_small", "zoo_fc16")
        cfg.dims = (10, 100)
        cfg.seeds = (0,)
        cfg.subspace_learning_rates = (0.03, 0.1)
        cfg.data.train_size = 2000
        cfg.data.val_size = 1000
        cfg.train.epochs = 2
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    checks.nonempty(cfg.models, "models")
    spec = data.spec(cfg.data)  # the shape models are built for
    for name in cfg.models:
        D = models.param_count(models.get(name, *spec))  # get() raises with the valid names
        checks.subspace_dims(cfg.dims, "dims", name, D)
        subspace.check_kind(cfg.projection, D, d=max(int(d) for d in cfg.dims))
    subspace.check_lr_rule(cfg.subspace_lr_rule, cfg.subspace_lr_d0)
    if not cfg.seeds:
        raise ConfigError("config.seeds must name at least one seed.")
    for field in ("full_learning_rates", "subspace_learning_rates"):
        if not cfg[field] or any(float(v) <= 0 for v in cfg[field]):
            raise ConfigError(f"config.{field}={tuple(cfg[field])} must be positive learning rates.")


def subspace_hp(cfg, dims) -> dict[str, np.ndarray]:
    """Rows: every d times every lr0 of ``subspace_learning_rates``, each
    through ``subspace_lr_rule`` at its d (``subspace.learning_rate``)."""
    lr0_R = np.tile(np.asarray(cfg.subspace_learning_rates, np.float32), len(dims))
    d_R = np.repeat(np.asarray(dims, np.int32), len(cfg.subspace_learning_rates))
    lr_R = lr0_R * subspace.learning_rate(cfg.subspace_lr_rule, 1.0, d_R, int(cfg.subspace_lr_d0))
    return {"d_active": d_R, "learning_rate": lr_R,
            "weight_decay": np.full(len(d_R), cfg.train.weight_decay, np.float32)}


def units_for(cfg, wd, ds, dat):
    n_train = len(ds.train_y)
    units = []
    for name in cfg.models:
        model = models.for_data(name, ds)
        D = models.param_count(model)
        dims = sorted({int(d) for d in cfg.dims})  # validate() refused d > D

        def full(uid, model=model, D=D):
            run = train.make_run(model, cfg.train, C.subspace_config(0), n_train, tick)
            lrs = np.asarray(cfg.full_learning_rates, np.float32)
            hp = {"learning_rate": lrs, "weight_decay": np.full_like(lrs, cfg.train.weight_decay),
                  "d_active": np.zeros(len(lrs), np.int32)}
            with ticking(f"{model.name} full", cfg.train.epochs):
                return sweep.run_unit(run, cfg.seeds, hp, dat, {"d": np.full(len(lrs), D)})

        def sub(uid, model=model, dims=dims):
            tcfg = ml_collections.ConfigDict(cfg.train.to_dict())
            tcfg.batch_size = cfg.subspace_batch_size
            run = train.make_run(model, tcfg, C.subspace_config(max(dims), cfg.projection), n_train,
                                 tick)
            hp = subspace_hp(cfg, dims)
            with ticking(f"{model.name} subspace", tcfg.epochs):
                return sweep.run_unit(run, cfg.seeds, hp, dat, {"d": hp["d_active"]})

        common = {"model": name, "data": cfg.data, "train": cfg.train,
                  "seeds": tuple(cfg.seeds)}
        units.append(sweep.Unit(f"{name}_full", {**common, "lrs": cfg.full_learning_rates},
                                full))
        lr_rule = ({} if cfg.subspace_lr_rule == "fixed" else  # fixed: the old ids hold
                   {"lr_rule": cfg.subspace_lr_rule, "lr_d0": cfg.subspace_lr_d0})
        units.append(sweep.Unit(f"{name}_subspace_{cfg.projection}",
                                {**common, "lrs": cfg.subspace_learning_rates, "dims": dims,
                                 "projection": cfg.projection, **lr_rule,
                                 "batch_size": cfg.subspace_batch_size}, sub))
    return units


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd, ds, dat = sweep.prepare(cfg, workdir)
    units = units_for(cfg, wd, ds, dat)
    results = sweep.run_units(wd, units, "subspace_sweep")

    units_by_name = {u.name: u for u in units}
    summary = {"models": {}, "epochs": cfg.train.epochs,
               "failed_units": [u.name for u in units if u.name not in results]}
    lines = ["| model | params D | d | lr | val acc % | test acc % | best epoch | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in cfg.models:
        D = models.param_count(models.for_data(name, ds))
        table = {}
        for part, unit in (("full", units_by_name[f"{name}_full"]),
                           ("subspace", units_by_name[f"{name}_subspace_{cfg.projection}"])):
            records = results.get(unit.name, [])
            table[part] = sweep.select_and_summarise(records, "d")
            sweep.add_curves(table[part], records,
                             wd.metrics(unit.id, ("seed", "d", "learning_rate", "epoch")), "d")
        summary["models"][name] = {"params": D, **table}
        for label, row in ([(f"{r['d']:,}", r) for r in table["subspace"]]
                           + [("full", r) for r in table["full"]]):
            edge = f" ({row['at_edge']} end of the grid)" if row.get("at_edge") else ""
            lines.append(f"| {name} | {D:,} | {label} | {row['learning_rate']:.4g}{edge} | "
                         f"{sweep.fmt_pct(row['val_acc_mean'], row['val_acc_sd'])} | "
                         f"{sweep.fmt_pct(row['test_acc_mean'], row['test_acc_sd'])} | "
                         f"{'-' if row['best_epoch_mean'] is None else row['best_epoch_mean']:g}"
                         f" of {cfg.train.epochs} | {row['seeds']} |")
    wd.write_json("summary.json", summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig = plots.accuracy_vs_d(summary["models"], f"epochs={cfg.train.epochs}, "
                              f"seeds={len(cfg.seeds)}, {cfg.projection} P")
    print("figure:", wd.save_figure(fig, "accuracy_vs_d.png"))
    fig = plots.val_curves(summary["models"], f"{cfg.projection} P, mean over ok seeds of "
                           "the lr chosen per d")
    print("figure:", wd.save_figure(fig, "val_curves.png"))
    return summary
