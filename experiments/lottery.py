"""Lottery tickets: iterative magnitude pruning with rewinding vs random reinit, LeNet-300-100.

    python launch.py --experiment=lottery          # default: 2 min 34 s on an H100; est. ~1 h on 2 CPUs
    python launch.py --experiment=lottery --quick  # ~15-20 s on 2 CPU cores

Frankle & Carbin (2019), LeNet-300-100 on MNIST: train; prune 20% of the
surviving weights of each hidden layer and 10% of the output layer
(layerwise, by magnitude of the trained weights); rewind the survivors to
their initial values (``rewind_epochs=(0,)``; k > 0 rewinds to the weights
after k epochs of the dense run); retrain; repeat for 16 levels (2.8% of the
weights left). The control trains the same masks from a fresh random init.
Adam, lr 1.2e-3, batch 60; each training keeps its best-validation epoch,
whose test accuracy is reported and whose epoch is the early-stop epoch (the
"learns faster" measure). Pruning uses the kept (best-validation) weights;
test accuracy never decides anything. Seeds vmapped in one program per rewind
point; all levels in one ``lax.scan``.

Published (Frankle & Carbin 2019, 50k iterations): dense ~98% test; winning
tickets still match it at ~3.6% of the weights, the best ones (~21% left)
reach higher accuracy and stop earlier; randomly reinitialised controls
degrade from early levels on. Expected here with 10 epochs: the same shape
(tickets flat to a few % of the weights, controls falling first), absolute
accuracies a little below the 50k-iteration numbers.

Writes: config.json, metrics.jsonl (per epoch, level and arm), runs/*.json,
runs/*.masks.npz (bit-packed masks per level, see ``pruning.masks.save_npz``),
summary.json, summary.md, lottery.png, and the exported ticket: ``ticket.npz``
(the framework-free format of ``subspace_jax/export.py``; check it with
``python tools/check_model.py WORKDIR/ticket.npz``) plus ``ticket_report.md``
(per-layer sparsity, non-zero parameters and FLOPs). The ticket is the first
seed's network at the sparsest level of the first rewind point whose mean
decision-half validation accuracy over seeds still reaches the dense run's
(the densest level with the best one if none does). The split that chooses
never decides: each run's epoch is chosen on one half of the validation
images, the level is decided on the other (``train.validation_halves``).
``runs/<unit>.theta_seed<first seed>.npy`` keeps that seed's kept params of
every level (rows x levels x D) so the choice can be re-made without training.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, export, models, sweep, vectorize
from subspace_jax.pruning import masks
from subspace_jax.pruning import plots as pplots
from subspace_jax.pruning import procedures as P
from subspace_jax.errors import ConfigError

PUBLISHED = ("Frankle & Carbin 2019 (LeNet-300-100, MNIST): dense ~98% test; tickets match it "
             "down to ~3.6% of weights; best tickets (~21%) are more accurate and stop earlier; "
             "random reinit degrades much earlier.")


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.model = "lenet_300_100"
    cfg.seeds = (0, 1, 2)
    cfg.levels = 16
    cfg.rate = 0.2                 # fraction of the surviving weights pruned per level
    cfg.output_layer = "dense2/w"  # pruned at output_rate per level instead
    cfg.output_rate = 0.1
    cfg.rewind_epochs = (0,)       # 0 = rewind to init; k = to the weights after k epochs
    cfg.control = True             # random-reinitialisation control
    cfg.learning_rates = (1.2e-3,)
    cfg.data = C.data_config()
    cfg.train = C.train_config(epochs=10, batch_size=60, learning_rate=1.2e-3)
    cfg.prune = P.prune_config(mode="layerwise")
    if quick:
        cfg.seeds = (0, 1)
        cfg.levels = 3
        cfg.rate = 0.5
        cfg.output_rate = 0.25
        cfg.data.train_size = 1000
        cfg.data.val_size = 250
        cfg.data.synthetic_size = 1250  # so data.source=synthetic also works
        cfg.train.epochs = 2
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    models.get(cfg.model, *data.spec(cfg.data))  # the shape models are built for
    if not cfg.seeds:
        raise ConfigError("config.seeds must name at least one seed.")
    if int(cfg.levels) < 1:
        raise ConfigError(f"config.levels={cfg.levels} must be >= 1.")
    for field in ("rate", "output_rate"):
        if not 0.0 < float(cfg[field]) < 1.0:
            raise ConfigError(f"config.{field}={cfg[field]} must be in (0, 1).")
    if not cfg.learning_rates or any(float(v) <= 0 for v in cfg.learning_rates):
        raise ConfigError(f"config.learning_rates={tuple(cfg.learning_rates)} must be positive.")


def level_densities(cfg) -> np.ndarray:
    """Fraction of the (non-output) prunable weights kept after each level."""
    return (1.0 - float(cfg.rate)) ** np.arange(1, int(cfg.levels) + 1)


def prune_cfg(cfg):
    pcfg = ml_collections.ConfigDict(cfg.prune.to_dict())
    if cfg.output_layer and pcfg.mode == "layerwise":
        # density_out = density ** e keeps the output layer at (1 - output_rate) per level.
        e = math.log(1.0 - float(cfg.output_rate)) / math.log(1.0 - float(cfg.rate))
        pcfg.layer_exponents = ((cfg.output_layer, e),)
    return pcfg


def units_for(cfg, wd, ds, dat):
    model = models.for_data(cfg.model, ds)
    pcfg = prune_cfg(cfg)
    lay = masks.model_layout(model, tuple(pcfg.prunable))
    fpw = masks.flops_per_weight(model, ds.train_x.shape[1:])
    lrs = np.asarray(cfg.learning_rates, np.float32)
    hp = {"learning_rate": lrs, "weight_decay": np.full_like(lrs, cfg.train.weight_decay),
          "d_active": np.zeros(len(lrs), np.int32),
          "densities": np.tile(level_densities(cfg).astype(np.float32), (len(lrs), 1))}
    units = []
    for k in cfg.rewind_epochs:
        def unit(uid, k=int(k)):
            run = P.make_pruning_run(model, cfg.train, pcfg, len(ds.train_y), imp=True,
                                     control=cfg.control, rewind_epoch=k,
                                     input_shape=ds.train_x.shape[1:])
            out = jax.device_get(vectorize.vmapped(run, vectorize.run_keys(cfg.seeds), hp, dat))
            masks.save_npz(wd.file(f"runs/{uid}.masks.npz"),
                           {f"imp/rewind{k}": out[f"imp/rewind{k}"].mask}, lay)
            wd.save_npy(_theta_file(cfg, uid),
                        np.asarray(out[f"imp/rewind{k}"].theta[0], np.float32))
            return P.unit_records(out, cfg.seeds, hp, lay, fpw, {"model": cfg.model})
        units.append(sweep.Unit(f"{cfg.model}_imp_rewind{k}",
                                {**sweep.config_except(cfg, "rewind_epochs"), "rewind": k}, unit))
    return units


def _theta_file(cfg, uid: str) -> str:
    return f"runs/{uid}.theta_seed{cfg.seeds[0]}.npy"


def choose_ticket(cfg, table: list[dict]) -> dict | None:
    """The table row of the ticket to export (see the module docstring).

    Each run's epoch was chosen on the first validation half (``val_acc``);
    the comparison with the dense run that decides the level uses the second
    half (``decide_acc``), which chose nothing.
    """
    method = f"imp/rewind{int(cfg.rewind_epochs[0])}"
    dense = [r for r in table if r["method"] == "dense" and r["decide_acc_mean"] is not None]
    rows = [r for r in table if r["method"] == method and r["decide_acc_mean"] is not None]
    if not rows:
        return None
    if dense:
        good = [r for r in rows if r["decide_acc_mean"] >= dense[0]["decide_acc_mean"]]
        if good:
            return min(good, key=lambda r: r["density_target"])
    return max(rows, key=lambda r: (r["decide_acc_mean"], r["density_target"]))


def export_ticket(cfg, wd, uid: str, row: dict, ds) -> dict:
    """Writes ticket.npz and ticket_report.md for the first seed at ``row``
    (``uid``: the unit of the first rewind point)."""
    k = int(cfg.rewind_epochs[0])
    model = models.for_data(cfg.model, ds)
    lay = masks.model_layout(model, tuple(prune_cfg(cfg).prunable))
    level = int(np.argmin(np.abs(level_densities(cfg) - row["density_target"])))
    lr_row = int(np.argmin(np.abs(np.asarray(cfg.learning_rates, float) - row["learning_rate"])))
    theta_D = np.load(wd.file(_theta_file(cfg, uid)))[lr_row, level]
    named, _ = masks.load_npz(wd.file(f"runs/{uid}.masks.npz"))
    mask_D = named[f"imp/rewind{k}"][0, lr_row, level]
    if np.any(theta_D[mask_D == 0] != 0):
        raise AssertionError("a pruned weight of the ticket is not zero")
    desc = export.export_model(wd.file("ticket.npz"), model, models.unflatten(model, theta_D))
    rep = masks.report(np.asarray(masks.leaf_counts(jnp.asarray(mask_D), lay)), lay,
                       masks.flops_per_weight(model, ds.train_x.shape[1:]))
    text = (f"Ticket: {cfg.model}, seed {cfg.seeds[0]}, imp/rewind{k}, level {level + 1} "
            f"({100 * row['density_target']:.2f}% of prunable weights kept; chosen on "
            f"validation), learning rate {row['learning_rate']:g}.\n"
            f"Exported: ticket.npz, {desc['nonzero_params']:,} non-zero of "
            f"{desc['dense_params']:,} parameters (biases count).\n\n"
            + "```\n" + masks.format_report(rep) + "\n```\n")
    with open(wd.file("ticket_report.md"), "w") as f:
        f.write(text)
    return {"file": "ticket.npz", "level": level + 1, "density_target": row["density_target"],
            "seed": int(cfg.seeds[0]), "nonzero_params": desc["nonzero_params"],
            "dense_params": desc["dense_params"], "report": rep}


def _fmt(mean, sd) -> str:
    return "-" if mean is None else f"{mean:.1f} ± {sd:.1f}"


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd, ds, dat = sweep.prepare(cfg, workdir)
    units = units_for(cfg, wd, ds, dat)
    results = sweep.run_units(wd, units, "lottery")

    records = [r for unit in results.values() for r in unit]
    table = P.summarise(records)
    summary = {"model": cfg.model, "published": PUBLISHED, "table": table,
               "failed_units": [u.name for u in units if u.name not in results]}
    dense = [r for r in table if r["method"] == "dense"]
    lines = [f"IMP on {cfg.model}: accuracy (%) at the best validation epoch and that epoch "
             f"(early stop), mean ± sd over {len(cfg.seeds)} seeds.", "",
             "| method | weights kept % | val acc % (chooses epoch) | val acc % (decides level) "
             "| test acc % | early-stop epoch | seeds ok / diverged |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    order = lambda r: (r["method"] != "dense", r["method"], -r["density_target"])
    for row in sorted(table, key=order):
        kept = "-" if row["density_mean"] is None else f"{100 * row['density_mean']:.2f}"
        lines.append(f"| {row['method']} | {kept} | "
                     f"{sweep.fmt_pct(row['val_acc_mean'], row['val_acc_sd'])} | "
                     f"{sweep.fmt_pct(row['decide_acc_mean'], row['decide_acc_sd'])} | "
                     f"{sweep.fmt_pct(row['test_acc_mean'], row['test_acc_sd'])} | "
                     f"{_fmt(row['best_epoch_mean'], row['best_epoch_sd'])} | "
                     f"{row['seeds']} / {row['diverged']} |")
    lines += ["", f"Published: {PUBLISHED}"]
    if dense:
        summary["dense_test_acc"] = dense[0]["test_acc_mean"]
    ticket = choose_ticket(cfg, table)
    first = units[0].id  # the unit of rewind_epochs[0], whose ticket is exported
    if ticket is not None and os.path.exists(wd.file(_theta_file(cfg, first))):
        summary["ticket"] = export_ticket(cfg, wd, first, ticket, ds)
        lines += ["", f"Exported ticket: ticket.npz (level {summary['ticket']['level']}, "
                      f"{summary['ticket']['nonzero_params']:,} non-zero parameters); "
                      "per-layer report in ticket_report.md."]
    wd.write_json("summary.json", summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig = pplots.lottery(table, f"{cfg.model}, {cfg.train.epochs} epochs, {len(cfg.seeds)} seeds, "
                                f"{cfg.rate:.0%}/level ({cfg.output_rate:.0%} output), "
                                f"{cfg.prune.mode}")
    print("figure:", wd.save_figure(fig, "lottery.png"))
    return summary
