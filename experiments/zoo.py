"""The "MNIST zoo" of the subspace-nn write-up, several seeds each, then exported.

    python launch.py --experiment=zoo            # default: 1 min 57 s on an H100 (not timed on CPU)
    python launch.py --experiment=zoo --quick    # ~55 s on a busy 2-core machine, mostly compiling

Four small models: zoo_fc16 (784-16-10, 12,730 params), zoo_fc32 (784-32-10,
25,450), zoo_cnn_small (convs 6,6 k4 pooled, dense 25; 3,369) and
zoo_cnn_large (convs 8,16 k4 pooled, dense 32; 10,754). Published test
accuracy: FC16 94.5%, FC32 96.5%, CNN small 95.6%, CNN large 97.6%.

Recipe: Adam, batch 64, 5 epochs, learning rate chosen per model from
``learning_rates`` by mean validation accuracy over seeds (the last 10,000
training images); the params of the best validation epoch are scored once on
the test set. One unit (one compiled program) per model, seeds x learning
rates vmapped. Default run (README): test 94.39, 96.24, 97.97 and 98.55%
(3 seeds); the quick form (2,000 training images, 1 epoch) only checks the
plumbing (about 35-75% test accuracy).

Writes: config.json, metrics.jsonl, runs/*.json (plus runs/*.theta_seed0.npy:
seed 0's kept flat params per learning rate), summary.json, summary.md,
accuracy_vs_params.png, and <model>.npz for each model: seed 0 at the chosen
learning rate, in the format of ``subspace_jax/export.py`` (check with
``python tools/check_model.py WORKDIR/zoo_fc16.npz``).
"""

from __future__ import annotations


import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, export, models, plots, sweep, train
from subspace_jax.workdir import tick, ticking
from subspace_jax.errors import ConfigError

PUBLISHED = {"zoo_fc16": 0.945, "zoo_fc32": 0.965, "zoo_cnn_small": 0.956, "zoo_cnn_large": 0.976}


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.models = tuple(PUBLISHED)
    cfg.seeds = (0, 1, 2)
    cfg.learning_rates = (1e-3, 3e-3)
    cfg.data = C.data_config()
    cfg.train = C.train_config(epochs=5, batch_size=64, learning_rate=1e-3)
    if quick:
        cfg.seeds = (0, 1)
        cfg.learning_rates = (1e-3,)
        cfg.data.train_size = 2000
        cfg.data.val_size = 1000
        cfg.train.epochs = 1
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    spec = data.spec(cfg.data)  # the shape models are built for
    for name in cfg.models:
        if models.get(name, *spec).arch is None:  # get() raises with the valid names
            raise ConfigError(f"model {name!r} cannot be exported (no arch)")
    if not cfg.seeds or 0 not in cfg.seeds:
        raise ConfigError(f"config.seeds={tuple(cfg.seeds)} must include seed 0 (it is exported).")
    if not cfg.learning_rates or any(float(v) <= 0 for v in cfg.learning_rates):
        raise ConfigError(f"config.learning_rates={tuple(cfg.learning_rates)} must be positive.")


def _theta_file(unit_id: str) -> str:
    return f"runs/{unit_id}.theta_seed0.npy"


def units_for(cfg, wd, ds, dat):
    n_train = len(ds.train_y)
    units = []
    for name in cfg.models:
        def unit(uid, name=name):
            model = models.for_data(name, ds)
            run = train.make_run(model, cfg.train, C.subspace_config(0), n_train, tick)
            lrs = np.asarray(cfg.learning_rates, np.float32)
            hp = {"learning_rate": lrs,
                  "weight_decay": np.full_like(lrs, cfg.train.weight_decay),
                  "d_active": np.zeros(len(lrs), np.int32)}
            labels = {"params": np.full(len(lrs), models.param_count(model))}
            with ticking(name, cfg.train.epochs):
                records, rows = sweep.run_unit(run, cfg.seeds, hp, dat, labels, keep_params=True)
            thetas = [r.pop("theta") for r in records]
            theta0_RxD = np.stack([t for r, t in zip(records, thetas) if r["seed"] == 0])
            wd.save_npy(_theta_file(uid), theta0_RxD.astype(np.float32))
            return records, rows
        units.append(sweep.Unit(name, {"model": name, "data": cfg.data, "train": cfg.train,
                                       "seeds": tuple(cfg.seeds), "lrs": cfg.learning_rates},
                                unit))
    return units


def export_seed0(wd, name: str, uid: str, records: list[dict], chosen_lr: float, ds) -> dict:
    """Writes ``<name>.npz`` from seed 0's params at the chosen learning rate."""
    model = models.for_data(name, ds)
    lrs = [r["learning_rate"] for r in records if r["seed"] == 0]  # row order of the unit
    row = int(np.argmin(np.abs(np.asarray(lrs, float) - chosen_lr)))
    theta_D = np.load(wd.file(_theta_file(uid)))[row]
    return export.export_model(wd.file(f"{name}.npz"), model, models.unflatten(model, theta_D))


def figure(table: dict, subtitle: str):
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in table.items():
        if row["test_acc_mean"] is None:
            continue
        p = ax.errorbar(row["params"], 100 * row["test_acc_mean"], yerr=100 * row["test_acc_sd"],
                        fmt="o", capsize=3, label=f"{name} (this run)")
        if name in PUBLISHED:
            ax.plot(row["params"], 100 * PUBLISHED[name], "x", color=p[0].get_color(), ms=9,
                    label=f"{name} (published)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST zoo: {subtitle}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd, ds, dat = sweep.prepare(cfg, workdir)
    units = {u.name: u for u in units_for(cfg, wd, ds, dat)}
    results = sweep.run_units(wd, list(units.values()), "zoo")

    summary = {"models": {}, "failed_units": [n for n in cfg.models if n not in results]}
    lines = ["| model | params | lr | val acc % | test acc % | published test % | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in cfg.models:
        if name not in results:
            continue
        (row,) = sweep.select_and_summarise(results[name], "params")
        if row["seeds"] and any(r["seed"] == 0 and r["status"] == "ok"
                                and r["learning_rate"] == row["learning_rate"]
                                for r in results[name]):
            desc = export_seed0(wd, name, units[name].id, results[name], row["learning_rate"], ds)
            row["exported"] = {"file": f"{name}.npz", "nonzero_params": desc["nonzero_params"]}
        row["published_test_acc"] = PUBLISHED.get(name)
        summary["models"][name] = row
        pub = f"{100 * PUBLISHED[name]:.1f}" if name in PUBLISHED else "-"
        lines.append(f"| {name} | {row['params']:,} | {row['learning_rate']:g} | "
                     f"{sweep.fmt_pct(row['val_acc_mean'], row['val_acc_sd'])} | "
                     f"{sweep.fmt_pct(row['test_acc_mean'], row['test_acc_sd'])} | "
                     f"{pub} | {row['seeds']} |")
    wd.write_json("summary.json", summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig = figure(summary["models"], f"epochs={cfg.train.epochs}, seeds={len(cfg.seeds)}")
    print("figure:", wd.save_figure(fig, "accuracy_vs_params.png"))
    return summary
