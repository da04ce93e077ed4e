"""Accuracy vs fraction of weights kept for every scorer and procedure, on one footing.

    python launch.py --experiment=pruning_compare          # default: 4 min 39 s on an H100; hours on 2 CPUs
    python launch.py --experiment=pruning_compare --quick  # ~15-20 s on 2 CPU cores

Models: LeNet-300-100 (266,610 params) and the 21,840-param conv net.
Densities (fraction of prunable weights, the kernels, kept): 50% down to
0.1%; the dense run is the 100% point. Procedures, all through the same
masked ``train.make_run`` and vmapped over seeds:

* at init (one-shot, then train ``train.epochs``): random, magnitude, SNIP,
  GraSP, SynFlow (100 rounds, exponential schedule);
* after training (from the dense run's best-validation weights), fine-tuned
  for ``prune.finetune_epochs``: one-shot and iterative (each density prunes
  the previous level's fine-tuned survivors) with magnitude and OBD
  (Hessian diagonal: exact up to 2,000 params, else the Gauss-Newton diagonal);
* IMP: magnitude pruning with rewinding to init, retraining ``train.epochs``
  per density of the grid (the per-level rate follows the grid, not a fixed
  20%; see ``lottery`` for the fixed-rate study).

Selection is global over the raw scores (``prune.mode``), with the
layer-collapse guard on (every kernel keeps >= 1 weight). Layer collapse is
measured separately on the unguarded at-init masks: the largest compression
(1 / density on ``collapse_densities``) at which every layer keeps a weight.
Learning rate per (method, density) by mean validation accuracy when several
are given; test accuracy is only reported.

Expected from the literature, and seen in the default run (README): near-
dense accuracy down to ~10% kept for every method after training; at init
SNIP/GraSP/SynFlow beat random below ~10%; magnitude at init collapses
layers first (18x), SynFlow last (5,623x on LeNet; Tanaka et al. 2020).

One unit (one compiled program, seeds vmapped) per model, resumable. The
quick form (zoo_fc16, 2 seeds, 3 densities, 1 epoch, 10 SynFlow rounds)
keeps the at-init scorers and one one-shot (OBD) and one iterative
(magnitude) arm and leaves IMP to ``lottery --quick``: compile time, not
training, dominates it.

Writes: config.json, metrics.jsonl, runs/<model>.json, runs/<model>.masks.npz,
summary.json, summary.md, accuracy_vs_density.png.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, models, sweep, vectorize
from subspace_jax.pruning import masks
from subspace_jax.pruning import plots as pplots
from subspace_jax.pruning import procedures as P
from subspace_jax.errors import ConfigError


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.models = ("lenet_300_100", "conv_subspace")
    cfg.seeds = (0, 1, 2)
    cfg.densities = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
    cfg.collapse_densities = tuple(float(d) for d in np.logspace(0, -4, 17)[1:])
    cfg.at_init = P.AT_INIT
    cfg.one_shot = P.AFTER_TRAINING
    cfg.iterative = P.AFTER_TRAINING
    cfg.imp = True
    cfg.learning_rates = (1e-3,)
    cfg.data = C.data_config()
    cfg.train = C.train_config(epochs=4, batch_size=64, learning_rate=1e-3)
    cfg.prune = P.prune_config(finetune_epochs=2)
    if quick:  # compile time dominates: fewer after-training arms, IMP left to `lottery`
        cfg.models = ("zoo_fc16",)
        cfg.seeds = (0, 1)
        cfg.densities = (0.3, 0.05, 0.01)
        cfg.collapse_densities = (0.1, 0.01, 0.001)
        cfg.one_shot = ("obd",)
        cfg.iterative = ("magnitude",)
        cfg.imp = False
        cfg.data.train_size = 1000
        cfg.data.val_size = 250
        cfg.data.synthetic_size = 1250  # so data.source=synthetic also works
        cfg.train.epochs = 1
        cfg.prune.finetune_epochs = 1
        cfg.prune.score_batch = 64
        cfg.prune.synflow_rounds = 10
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    spec = data.spec(cfg.data)  # the shape models are built for
    for name in cfg.models:
        models.get(name, *spec)
    if not cfg.seeds:
        raise ConfigError("config.seeds must name at least one seed.")
    for field in ("densities", "collapse_densities"):
        if not cfg[field] or any(not 0.0 < float(d) <= 1.0 for d in cfg[field]):
            raise ConfigError(f"config.{field}={tuple(cfg[field])} must be fractions in (0, 1].")
    for s in (*cfg.at_init, *cfg.one_shot, *cfg.iterative):
        if s not in P.SCORERS:
            raise ConfigError(f"unknown scorer {s!r}; valid: {', '.join(P.SCORERS)}")
    if not cfg.learning_rates or any(float(v) <= 0 for v in cfg.learning_rates):
        raise ConfigError(f"config.learning_rates={tuple(cfg.learning_rates)} must be positive.")


def _hp(cfg):
    lrs = np.asarray(cfg.learning_rates, np.float32)
    rows = len(lrs)
    dens = np.asarray(sorted(cfg.densities, reverse=True), np.float32)  # iterative: denser first
    return {"learning_rate": lrs, "weight_decay": np.full_like(lrs, cfg.train.weight_decay),
            "d_active": np.zeros(rows, np.int32), "densities": np.tile(dens, (rows, 1)),
            "collapse_densities": np.tile(np.asarray(cfg.collapse_densities, np.float32),
                                          (rows, 1))}


def units_for(cfg, wd, ds, dat):
    """One unit (one compiled program, all procedures, seeds vmapped) per model."""
    n_train, shape = len(ds.train_y), ds.train_x.shape[1:]
    hp = _hp(cfg)
    units = []
    for name in cfg.models:
        def unit(uid, name=name):
            model = models.for_data(name, ds)
            lay = masks.model_layout(model, tuple(cfg.prune.prunable))
            run = P.make_pruning_run(model, cfg.train, cfg.prune, n_train,
                                     at_init=tuple(cfg.at_init), one_shot=tuple(cfg.one_shot),
                                     iterative=tuple(cfg.iterative), imp=cfg.imp,
                                     collapse=bool(cfg.at_init), input_shape=shape)
            out = jax.device_get(vectorize.vmapped(run, vectorize.run_keys(cfg.seeds), hp, dat))
            masks.save_npz(wd.file(f"runs/{uid}.masks.npz"),
                           {k: v.mask for k, v in out.items()
                            if getattr(v, "mask", None) is not None}, lay)
            labels = {"model": name}
            records, rows = P.unit_records(out, cfg.seeds, hp, lay,
                                           masks.flops_per_weight(model, shape), labels)
            records += P.collapse_records(out, cfg.seeds, hp["collapse_densities"][0], lay, labels)
            return records, rows
        units.append(sweep.Unit(name, {**sweep.config_except(cfg, "models"), "model": name},
                                unit))
    return units


def _collapse_table(records):
    table = []
    for method in sorted({r["method"] for r in records}):
        vals = [r["max_compression"] for r in records if r["method"] == method]
        ok = [v for v in vals if v is not None]
        table.append({"method": method, "seeds": len(vals),
                      "max_compression_min": min(ok) if len(ok) == len(vals) else None,
                      "max_compression_mean": float(np.mean(ok)) if ok else None})
    return table


def _fmt_x(v) -> str:
    return "collapsed" if v is None else f"{v:,.0f}x"


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd, ds, dat = sweep.prepare(cfg, workdir)
    units = units_for(cfg, wd, ds, dat)
    results = sweep.run_units(wd, units, "pruning_compare")

    summary = {"models": {}, "failed_units": [u.name for u in units if u.name not in results]}
    lines = []
    for name in cfg.models:
        records = results.get(name, [])
        runs = [r for r in records if not r["method"].startswith("collapse/")]
        table = P.summarise(runs)
        collapse = _collapse_table([r for r in records if r["method"].startswith("collapse/")])
        summary["models"][name] = {"params": models.param_count(models.for_data(name, ds)),
                                   "table": table, "collapse": collapse}
        lines += [f"## {name} ({summary['models'][name]['params']:,} params)", "",
                  "| method | kept % | non-zero params | flops | val acc % | test acc % | seeds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in sorted(table, key=lambda r: (r["method"] != "dense", r["method"],
                                                -r["density_target"])):
            lines.append(f"| {row['method']} | {100 * (row['density_mean'] or 0):.2f} | "
                         f"{row['nonzero_mean'] or 0:,.0f} | {row['flops_mean'] or 0:,.0f} | "
                         f"{sweep.fmt_pct(row['val_acc_mean'], row['val_acc_sd'])} | "
                         f"{sweep.fmt_pct(row['test_acc_mean'], row['test_acc_sd'])} | "
                         f"{row['seeds']} |")
        lines += ["", "Layer collapse (unguarded at-init masks): largest compression 1/density "
                  "with every layer keeping a weight (min and mean over seeds).", "",
                  "| scorer | min | mean |", "|---|---:|---:|"]
        for row in collapse:
            lines.append(f"| {row['method']} | {_fmt_x(row['max_compression_min'])} | "
                         f"{_fmt_x(row['max_compression_mean'])} |")
        lines.append("")
    wd.write_json("summary.json", summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig = pplots.accuracy_vs_density(
        {n: m["table"] for n, m in summary["models"].items()},
        subtitle=f"epochs={cfg.train.epochs}, fine-tune={cfg.prune.finetune_epochs}, "
                 f"seeds={len(cfg.seeds)}, {cfg.prune.mode} selection")
    print("figure:", wd.save_figure(fig, "accuracy_vs_density.png"))
    return summary
