"""Learning vs memorisation: compressing MLPs trained on real and on random labels.

    python launch.py --experiment=memorization          # default: 43 min on 2 CPU cores (measured)
    python launch.py --experiment=memorization --quick  # smoke form: 30-90 s on 2 CPU cores

Hypothesis (the blog post "Compressing Neural Networks To See If They Learn",
alok.github.io, 2018): a network that learned real labels (data on a low-dimensional
manifold) can be compressed much further than one that memorised random labels before its
training accuracy drops. Context: Zhang et al. 2017 (the same networks fit random labels, only
more slowly), Arpit et al. 2017 (real data are fitted "simple patterns first"), Li et al. 2018
(shuffled MNIST labels need far larger subspaces than the ~750 dimensions of real ones). The
post's own numbers are not reproduced here.

Teachers: for each ``label_fractions`` value f (0 = real, 1 = every training label redrawn
uniformly, so about 90% change; ``data.random_label_fraction`` with the fixed ``data.seed``;
validation and test labels stay real), an MLP 784-``hidden``-10. Teachers of one seed share
the root key (same init and batch order, only the labels differ) and keep their last epoch
(``keep_best=False``: validation accuracy says nothing about fitting random labels). Each is
compressed three ways, scored on its own training labels and on the real test set:
distillation on noise (``subspace_jax.distill``, logit MSE; each round ``shrink`` fewer
hidden units, down to ``min_hidden``), magnitude pruning (``pruning.procedures.one_shot``,
global over the kernels) as pruned and after ``finetune``, and subspace training from the
teacher's init (``subspace_fractions`` only; ``summarise`` gives the smallest d that fits).
The test set decides nothing. The ``conclusion`` compares, level by level, the share of the
teacher's above-chance training accuracy each compressed network keeps (1 = all, 0 = chance),
real vs random; mean ± sd over seeds, vmapped (one program per shape serves every label
fraction and noise kind).

Cost of the default: 10,000 training images (``data.train_size``; the post: all of MNIST),
100 epochs, batch 128; 21 distillation rounds (512 -> 5 units) of 3 epochs over 60,000 noise
inputs; 3 seeds; subspace training 10 epochs. 42 min 34 s end to end on this 2-core CPU
(docs/results/memorization.md); per part about teachers 5 min, distillation 25 min, pruning
2 min, subspace 12 min. Expected (measured there, previous protocol): compression separates
learning from memorisation in all three strategies, e.g. 5 distilled units keep 25.8% of the
real teacher's above-chance training accuracy against 0.4% of the random one's.

Writes: config.json, metrics.jsonl (per epoch of every training), runs/*.json (one per unit;
teacher weights in runs/teacher_*.params.npy), summary.json (tables and the ``conclusion``),
summary.md, training_curves.png, compression.png, distillation_noise.png.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, distill, models, report, subspace, sweep, train, vectorize
from subspace_jax import plots  # noqa: F401  (selects the headless Agg backend first)
from subspace_jax.pruning import masks
from subspace_jax.pruning import procedures as P
from subspace_jax.workdir import Workdir, tick, ticking
from subspace_jax.errors import ConfigError

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402

# Purpose keys folded into each seed's root key (the teachers and the subspace
# arm use the root key itself, so the subspace runs start from the teachers' init).
KEY_DISTILL, KEY_PRUNE = 1, 2
CHANCE = 0.1


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.hidden = 512
    cfg.seeds = (0, 1, 2)
    cfg.label_fractions = (0.0, 0.1, 0.5, 1.0)  # replaces data.random_label_fraction
    cfg.fit_threshold = 0.98   # a teacher "fits" at this training accuracy
    cfg.data = C.data_config()
    cfg.data.train_size = 10_000
    # Constant Adam 1e-3 fits 10k random labels to ~99% in 80-100 epochs (cosine
    # decay stalled near 92% in a pilot); the post used 100 epochs, batch 128.
    cfg.train = C.train_config(epochs=100, batch_size=128, learning_rate=1e-3, keep_best=False)
    # Distillation rounds.
    cfg.shrink = 0.2
    cfg.min_hidden = 5
    cfg.max_rounds = 0         # 0: until min_hidden
    cfg.noise_kinds = ("gaussian", "pixel", "uniform")  # first: every fraction; rest: the ends
    cfg.distill = distill.distill_config(epochs=3, batch_size=128, learning_rate=1e-3,
                                         noise_size=60_000, loss="mse")
    del cfg.distill["noise"]  # each chain passes its kind from noise_kinds
    # Magnitude pruning.
    cfg.densities = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)
    cfg.prune_mode = "global"
    cfg.finetune = C.train_config(epochs=2, batch_size=128, learning_rate=1e-3, keep_best=False)
    # Subspace training (from the teachers' init), for subspace_fractions only.
    cfg.subspace_fractions = (0.0, 1.0)
    cfg.dims = (100, 300, 1_000, 3_000, 10_000)
    cfg.projection = "sparse"  # O(nnz * d) memory: a dense P of 407k x 10k would be 16 GB
    cfg.subspace_learning_rates = (0.03,)  # best of {0.003, 0.01, 0.03} in a 3-epoch pilot
    cfg.subspace_train = C.train_config(epochs=10, batch_size=128, keep_best=False)
    cfg.fit_fraction = 0.9     # d "fits" at this fraction of full-space training accuracy
    if quick:
        cfg.hidden = 64
        cfg.seeds = (0, 1)
        cfg.label_fractions = (0.0, 0.5, 1.0)
        cfg.noise_kinds = ("gaussian", "uniform")
        cfg.data.train_size = 1000
        cfg.data.val_size = 250
        cfg.data.synthetic_size = 1250  # so data.source=synthetic also works
        cfg.train.epochs = 12
        cfg.train.batch_size = 64
        cfg.train.learning_rate = 3e-3
        cfg.max_rounds = 3
        cfg.distill.epochs = 2
        cfg.distill.noise_size = 2048
        cfg.distill.probe_size = 256
        cfg.distill.eval_chunk = 250
        cfg.densities = (0.3, 0.1, 0.03)
        cfg.finetune.epochs = 1
        cfg.dims = (10, 100, 1000)
        cfg.subspace_learning_rates = (0.01,)
        cfg.subspace_train.epochs = 2
        for tc in (cfg.train, cfg.finetune, cfg.subspace_train):
            tc.eval_chunk = 250
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    checks.mnist_only(cfg, "memorization")
    if int(cfg.hidden) < 1:
        raise ConfigError(f"config.hidden={cfg.hidden} must be >= 1.")
    if not cfg.seeds:
        raise ConfigError("config.seeds must name at least one seed.")
    if not cfg.label_fractions or any(not 0.0 <= float(f) <= 1.0 for f in cfg.label_fractions):
        raise ConfigError(f"config.label_fractions={tuple(cfg.label_fractions)} must be in [0, 1].")
    if not cfg.noise_kinds or any(k not in distill.NOISE_KINDS for k in cfg.noise_kinds):
        raise ConfigError(f"config.noise_kinds={tuple(cfg.noise_kinds)}; valid: "
                          f"{', '.join(distill.NOISE_KINDS)}.")
    if cfg.distill.loss not in distill.LOSSES:
        raise ConfigError(f"config.distill.loss={cfg.distill.loss!r}; valid: "
                          f"{', '.join(distill.LOSSES)}.")
    if not cfg.densities or any(not 0.0 < float(d) <= 1.0 for d in cfg.densities):
        raise ConfigError(f"config.densities={tuple(cfg.densities)} must be fractions in (0, 1].")
    teacher = models.mlp(f"mlp_{cfg.hidden}", (int(cfg.hidden),))  # as Study builds it
    D = models.param_count(teacher)
    checks.subspace_dims(cfg.dims, "dims", teacher.name, D)  # d > D: an error, never clamped
    subspace.check_kind(cfg.projection, D)
    if not cfg.subspace_learning_rates or any(float(v) <= 0 for v in cfg.subspace_learning_rates):
        raise ConfigError("config.subspace_learning_rates must be positive.")
    extra = {float(f) for f in cfg.subspace_fractions} - {float(f) for f in cfg.label_fractions}
    if extra:
        raise ConfigError(f"config.subspace_fractions has {sorted(extra)}, not in label_fractions "
                          f"{tuple(cfg.label_fractions)}.")
    distill.student_sizes(cfg.hidden, cfg.shrink, cfg.min_hidden, cfg.max_rounds)


# ---------------------------------------------------------------- small helpers
def label_name(f: float) -> str:
    return "real" if f == 0.0 else "random" if f == 1.0 else f"{100 * f:g}% random"


def _tag(f: float) -> str:
    return f"f{float(f):g}"


def _fraction(cfg, name: str) -> float:
    return next(float(f) for f in cfg.label_fractions if label_name(float(f)) == name)


def _keys(seeds, purpose: int | None = None, index: int | None = None):
    """One key per seed: the root key, or ``fold_in(fold_in(root, purpose), index)``."""
    keys = []
    for s in seeds:
        k = jax.random.key(int(s))
        if purpose is not None:
            k = jax.random.fold_in(k, purpose)
        if index is not None:
            k = jax.random.fold_in(k, index)
        keys.append(k)
    return jnp.stack(keys)


def _chains(cfg) -> list[tuple[float, str]]:
    """(label fraction, noise kind) of every distillation chain."""
    fracs = [float(f) for f in cfg.label_fractions]
    chains = [(f, cfg.noise_kinds[0]) for f in fracs]
    ends = sorted({min(fracs), max(fracs)})
    chains += [(f, k) for k in cfg.noise_kinds[1:] for f in ends]
    return chains


# ---------------------------------------------------------------- pruning arm
def make_prune_run(model, ft_cfg, n_train: int, densities, mode: str):
    """``run(key, hp, data)``: magnitude-prune ``hp['teacher_D']`` to every density
    (global over the kernels), score as pruned, then fine-tune each mask."""
    pcfg = P.prune_config(mode=mode)
    lay = masks.model_layout(model, tuple(pcfg.prunable))
    apply_D = models.flat(model).apply_D
    prune = P.make_pruner(model, lay, "magnitude", pcfg, ())  # needs no data or input shape
    finetune = train.make_run(model, ft_cfg, C.subspace_config(0), n_train)
    dens_L = jnp.asarray(densities, jnp.float32)
    prunable_D = jnp.concatenate([jnp.full(s, p, jnp.float32)
                                  for s, p in zip(lay.sizes, lay.prunable)])
    chunk = int(ft_cfg.eval_chunk)
    ones_D = jnp.ones(lay.D, jnp.float32)

    def run(key, hp, data):
        theta_D = hp["teacher_D"]
        masks_LxD, res = P.one_shot(prune, finetune, key, key, train.default_hp(ft_cfg), data,
                                    theta_D, ones_D, dens_L)

        def pruned(mask_D):
            w_D = theta_D * mask_D
            return (train.evaluate(apply_D, w_D, data.train_x, data.train_y, chunk)[1],
                    train.evaluate(apply_D, w_D, data.test_x, data.test_y, chunk)[1])

        pruned_train_L, pruned_test_L = jax.vmap(pruned)(masks_LxD)
        return {"density": (masks_LxD * prunable_D).sum(-1) / lay.n_prunable,
                "nonzero": masks_LxD.sum(-1),
                "pruned_train_acc": pruned_train_L, "pruned_test_acc": pruned_test_L,
                "train_acc": res.final["train_acc"], "test_acc": res.final["test_acc"],
                "diverged": res.final["diverged"], "history": res.history}

    return run


# ---------------------------------------------------------------- units
class Study:
    """Builds the units of one invocation; holds the compiled-run caches so
    every label fraction reuses the same programs."""

    def __init__(self, cfg, wd: Workdir):
        self.cfg, self.wd = cfg, wd
        self.sizes = distill.student_sizes(cfg.hidden, cfg.shrink, cfg.min_hidden, cfg.max_rounds)
        self.model = models.mlp(f"mlp_{cfg.hidden}", (int(cfg.hidden),))
        self.datasets = {}
        for f in cfg.label_fractions:
            dcfg = ml_collections.ConfigDict(cfg.data.to_dict())
            dcfg.random_label_fraction = float(f)
            self.datasets[float(f)] = data.from_config(dcfg)
        self.n_train = len(next(iter(self.datasets.values())).train_y)
        self.dat = {f: train.Data.from_dataset(ds) for f, ds in self.datasets.items()}
        self._distill_runs = {}
        # Each run is built (and compiled) once for every label fraction; `ticking` labels it.
        self._teacher_run = self._prune_run = self._subspace_run = None

    # -- teachers
    def teacher_depends(self, f):
        cfg = self.cfg
        return {"data": cfg.data, "label_fraction": f, "hidden": cfg.hidden,
                "seeds": tuple(cfg.seeds), "train": cfg.train}

    def teacher_file(self, f):
        uid = sweep.unit_id(f"teacher_{_tag(f)}", self.teacher_depends(f))
        return f"runs/{uid}.params.npy"

    def teacher_params(self, f):
        return np.load(self.wd.file(self.teacher_file(f)))

    def teacher_unit(self, f):
        cfg = self.cfg
        if self._teacher_run is None:
            self._teacher_run = train.make_run(
                self.model, cfg.train, C.subspace_config(0), self.n_train, tick)
        hp = {k: np.asarray(v)[None] for k, v in train.default_hp(cfg.train).items()}
        with ticking(f"teacher, {label_name(f)} labels", cfg.train.epochs):
            out = jax.device_get(vectorize.vmapped(
                self._teacher_run, vectorize.run_keys(cfg.seeds), hp, self.dat[f]))
        self.wd.save_npy(self.teacher_file(f), out.params[:, 0])
        ds0 = self.datasets.get(0.0)
        noise = (float(np.mean(self.datasets[f].train_y != ds0.train_y)) if ds0 is not None
                 else None)
        records, rows = [], []
        for s, seed in enumerate(cfg.seeds):
            acc_E = np.asarray(out.history["train_acc"][s, 0])
            fit = np.nonzero(acc_E >= cfg.fit_threshold)[0]
            final = {k: np.asarray(v[s, 0]) for k, v in out.final.items()}
            diverged = bool(final.pop("diverged"))
            records.append({"label_fraction": f, "seed": int(seed), "labels_changed": noise,
                            "epochs_to_fit": int(fit[0]) + 1 if len(fit) else None, **final,
                            "history_train_acc": acc_E,
                            "status": "diverged" if diverged else "ok"})
            for e in range(len(acc_E)):
                rows.append({"arm": "teacher", "label_fraction": f, "seed": int(seed),
                             "epoch": e + 1,
                             **{k: v[s, 0, e] for k, v in out.history.items()}})
        return records, rows

    # -- distillation chain
    def distill_run(self, h_prev: int, h: int):
        """One program per shape: the noise kind is a traced ``hp`` entry."""
        key = (h_prev, h)
        if key not in self._distill_runs:
            self._distill_runs[key] = distill.make_distill_run(
                models.mlp(f"mlp_{h_prev}", (h_prev,)), models.mlp(f"mlp_{h}", (h,)),
                self.cfg.distill)
        return self._distill_runs[key]

    def distill_unit(self, f, kind):
        cfg = self.cfg
        prev_D = self.teacher_params(f)
        records, rows = [], []
        for r, (h_prev, h) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            hp = {"teacher_D": prev_D,
                  "noise": np.full(len(cfg.seeds), distill.noise_index(kind), np.int32)}
            out = jax.device_get(vectorize.vmapped(self.distill_run(h_prev, h),
                                                   _keys(cfg.seeds, KEY_DISTILL, r), hp,
                                                   self.dat[f], paired=True))
            prev_D = out.params
            base = {"label_fraction": f, "noise": kind, "round": r, "hidden": h,
                    "params": int(out.params.shape[1])}
            for s, seed in enumerate(cfg.seeds):
                final = {k: np.asarray(v[s]) for k, v in out.final.items()}
                diverged = bool(final.pop("diverged"))
                records.append({**base, "seed": int(seed), **final,
                                "status": "diverged" if diverged else "ok"})
                for e in range(len(out.history["distill_loss"][s])):
                    rows.append({"arm": "distill", **base, "seed": int(seed), "epoch": e + 1,
                                 **{k: v[s, e] for k, v in out.history.items()}})
            acc = np.asarray(out.final["train_acc"])
            print(f"  distill {label_name(f)} {kind}: round {r} ({h} units) train acc "
                  f"{100 * acc.mean():.1f}%", flush=True)
        return records, rows

    # -- pruning
    def prune_unit(self, f):
        cfg = self.cfg
        if self._prune_run is None:
            self._prune_run = make_prune_run(self.model, cfg.finetune, self.n_train,
                                             tuple(cfg.densities), cfg.prune_mode)
        out = jax.device_get(vectorize.vmapped(self._prune_run, _keys(cfg.seeds, KEY_PRUNE),
                                               {"teacher_D": self.teacher_params(f)},
                                               self.dat[f], paired=True))
        records, rows = [], []
        for s, seed in enumerate(cfg.seeds):
            for i, target in enumerate(cfg.densities):
                base = {"label_fraction": f, "seed": int(seed), "density_target": float(target)}
                records.append({**base, **{k: np.asarray(out[k][s, i]) for k in
                                           ("density", "nonzero", "pruned_train_acc",
                                            "pruned_test_acc", "train_acc", "test_acc")},
                                "status": "diverged" if out["diverged"][s, i] else "ok"})
                for e in range(len(out["history"]["train_loss"][s, i])):
                    rows.append({"arm": "prune_finetune", **base, "epoch": e + 1,
                                 **{k: v[s, i, e] for k, v in out["history"].items()}})
        return records, rows

    # -- subspace
    def subspace_unit(self, f):
        cfg = self.cfg
        D = models.param_count(self.model)
        dims = sorted({int(d) for d in cfg.dims})  # validate() refused d > D
        if self._subspace_run is None:
            self._subspace_run = train.make_run(
                self.model, cfg.subspace_train, C.subspace_config(max(dims), cfg.projection),
                self.n_train, tick)
        grid = vectorize.grid(d_active=dims, learning_rate=list(cfg.subspace_learning_rates))
        hp = {"d_active": grid["d_active"].astype(np.int32),
              "learning_rate": grid["learning_rate"].astype(np.float32)}
        hp["weight_decay"] = np.full(len(hp["d_active"]), cfg.subspace_train.weight_decay,
                                     np.float32)
        with ticking(f"subspace, {label_name(f)} labels", cfg.subspace_train.epochs):
            records, rows = sweep.run_unit(self._subspace_run, cfg.seeds, hp, self.dat[f],
                                           {"d": hp["d_active"]})
        for rec in (*records, *rows):
            rec["label_fraction"] = f
        for row in rows:
            row["arm"] = "subspace"
        return records, rows

    def units(self) -> list[sweep.Unit]:
        cfg = self.cfg
        fracs = [float(f) for f in cfg.label_fractions]
        # Units that read a teacher depend on the teacher's unit (its file's name carries its id).
        teacher = lambda f: {"teacher": self.teacher_file(f)}
        units = [sweep.Unit(f"teacher_{_tag(f)}", self.teacher_depends(f),
                            lambda _, f=f: self.teacher_unit(f)) for f in fracs]
        units += [sweep.Unit(f"distill_{kind}_{_tag(f)}",
                             {**teacher(f), "distill": cfg.distill, "sizes": self.sizes,
                              "noise": kind},
                             lambda _, f=f, k=kind: self.distill_unit(f, k))
                  for f, kind in _chains(cfg)]
        units += [sweep.Unit(f"prune_{_tag(f)}",
                             {**teacher(f), "densities": cfg.densities, "mode": cfg.prune_mode,
                              "finetune": cfg.finetune},
                             lambda _, f=f: self.prune_unit(f)) for f in fracs]
        units += [sweep.Unit(f"subspace_{cfg.projection}_{_tag(f)}",
                             {**self.teacher_depends(f), "train": cfg.subspace_train,
                              "dims": cfg.dims, "projection": cfg.projection,
                              "lrs": cfg.subspace_learning_rates},
                             lambda _, f=f: self.subspace_unit(f))
                  for f in fracs if f in {float(x) for x in cfg.subspace_fractions}]
        return units


# ---------------------------------------------------------------- summaries
def _summ(records, keys) -> dict:
    row = report.stats(records, keys)
    row["seeds"] = row.pop("ok")
    return row


def summarise(cfg, results: dict, sizes: list[int], D: int) -> dict:
    fracs = [float(f) for f in cfg.label_fractions]
    out = {"teachers": {}, "distillation": {}, "pruning": {}, "subspace": {},
           "sizes": sizes, "params": D}
    for f in fracs:
        recs = results.get(f"teacher_{_tag(f)}", [])
        if recs:
            row = _summ(recs, ("train_acc", "test_acc", "val_acc"))
            fits = [r["epochs_to_fit"] for r in recs]
            row["epochs_to_fit"] = fits
            row["labels_changed"] = recs[0]["labels_changed"]
            out["teachers"][label_name(f)] = {"label_fraction": f, **row}
    for f, kind in _chains(cfg):
        recs = results.get(f"distill_{kind}_{_tag(f)}", [])
        teacher = out["teachers"].get(label_name(f))
        rows = []
        if teacher:
            rows.append({"round": 0, "hidden": sizes[0], "params": D,
                         **{k: teacher[k] for k in ("train_acc_mean", "train_acc_sd",
                                                    "test_acc_mean", "test_acc_sd", "seeds")}})
        for r in sorted({x["round"] for x in recs}):
            group = [x for x in recs if x["round"] == r]
            rows.append({"round": r, "hidden": group[0]["hidden"], "params": group[0]["params"],
                         **_summ(group, ("train_acc", "test_acc", "agreement_train",
                                         "agreement_test", "probe_loss"))})
        if rows:
            out["distillation"].setdefault(kind, {})[label_name(f)] = rows
    for f in fracs:
        recs = results.get(f"prune_{_tag(f)}", [])
        rows = []
        for t in sorted({x["density_target"] for x in recs}, reverse=True):
            group = [x for x in recs if x["density_target"] == t]
            rows.append({"density_target": t, **_summ(group, (
                "density", "nonzero", "pruned_train_acc", "pruned_test_acc",
                "train_acc", "test_acc"))})
        if rows:
            out["pruning"][label_name(f)] = rows
    for f in fracs:
        recs = results.get(f"subspace_{cfg.projection}_{_tag(f)}", [])
        if not recs:
            continue
        # Per d, the learning rate with the best mean *training* accuracy (fit is the measure).
        table = sweep.select_and_summarise(recs, "d", "learning_rate", "train_acc")
        # The full-space reference with the same epoch budget: the teacher's (running)
        # training accuracy after subspace_train.epochs epochs. Random labels are fitted
        # slowly even in full space, so the final teacher would be an unfair bar.
        teacher_recs = results.get(f"teacher_{_tag(f)}", [])
        budget = int(cfg.subspace_train.epochs)
        full = report.mean_sd([r["history_train_acc"][min(budget, len(r["history_train_acc"])) - 1]
                         for r in teacher_recs if report.is_ok(r)])[0]  # None: no ok teacher
        final = out["teachers"].get(label_name(f), {}).get("train_acc_mean")
        entry = {"table": table, "full_space_same_epochs": full, "full_space_final": final}
        for name, ref in (("", full), ("_final", final)):
            # fit_fraction of the reference's accuracy above chance; none near chance.
            target = (None if ref is None or ref - CHANCE < 0.05
                      else CHANCE + cfg.fit_fraction * (ref - CHANCE))
            fitted = [r["d"] for r in table if target is not None
                      and r["train_acc_mean"] is not None and r["train_acc_mean"] >= target]
            entry["target_train_acc" + name] = target
            entry["d_fit" + name] = min(fitted) if fitted else None
        out["subspace"][label_name(f)] = entry
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _retention(rows, key="train_acc_mean", min_gain=0.05):
    """Each level's training accuracy above chance as a fraction of the first
    (uncompressed) level's: 1 = all that the teacher fitted is kept, 0 = chance.
    Above chance, so that a teacher which fitted little cannot look robust;
    None where the teacher is within ``min_gain`` of chance."""
    base = rows[0][key] if rows and rows[0][key] is not None else None
    if base is None or base - CHANCE < min_gain:
        return [None] * len(rows)
    return [None if r[key] is None else (r[key] - CHANCE) / (base - CHANCE) for r in rows]


def conclusion(cfg, summary: dict, margin: float = 0.05) -> str:
    """A short verdict generated from the numbers (no hard-coded outcome)."""
    fracs = [float(f) for f in cfg.label_fractions]
    lo, hi = label_name(min(fracs)), label_name(max(fracs))
    t = summary["teachers"]
    if lo not in t or hi not in t or lo == hi:
        return "Not enough teachers finished to compare label fractions."
    parts, verdicts = [], {}
    tl, th = t[lo], t[hi]
    fit_hi = th["train_acc_mean"] is not None and th["train_acc_mean"] >= cfg.fit_threshold
    parts.append(f"Teachers: {lo} labels fit to {_pct(tl['train_acc_mean'])} training accuracy "
                 f"(test {_pct(tl['test_acc_mean'])}), {hi} labels to "
                 f"{_pct(th['train_acc_mean'])} (test {_pct(th['test_acc_mean'])})"
                 + ("" if fit_hi else f"; the {hi}-label teacher did not reach the "
                    f"{_pct(cfg.fit_threshold)} fit threshold, so its compression "
                    "results are weaker evidence") + ".")

    def compare(name, rows_lo, rows_hi, level_name):
        n = min(len(rows_lo), len(rows_hi))
        if n < 2:
            return
        ret_lo, ret_hi = _retention(rows_lo[:n]), _retention(rows_hi[:n])
        levels = [i for i in range(1, n) if ret_lo[i] is not None and ret_hi[i] is not None]
        if not levels:
            parts.append(f"{name}: not compared (a teacher is within 5 points of chance).")
            return
        wins = sum(ret_lo[i] - ret_hi[i] > margin for i in levels)
        losses = sum(ret_hi[i] - ret_lo[i] > margin for i in levels)
        last = levels[-1]
        mid = levels[len(levels) // 2]
        verdicts[name] = wins > len(levels) / 2
        at = lambda i: f"{_pct(ret_lo[i])} vs {_pct(ret_hi[i])}"
        middle = "".join(f"at {level_name(rows_lo[i])} {at(i)}; "
                         for i in sorted({levels[0], mid} - {last}))
        parts.append(
            f"{name}: share of the teacher's above-chance training accuracy kept, {lo} vs "
            f"{hi}: {middle}at {level_name(rows_lo[last])} {at(last)} (absolute "
            f"{_pct(rows_lo[last]['train_acc_mean'])} vs {_pct(rows_hi[last]['train_acc_mean'])}; "
            f"chance {_pct(CHANCE)}); {lo} keeps more by over {100 * margin:g} points at {wins} "
            f"of {len(levels)} levels, {hi} at {losses}.")

    kind = cfg.noise_kinds[0]
    dist = summary["distillation"].get(kind, {})
    if lo in dist and hi in dist:
        compare(f"Distillation ({kind} noise)", dist[lo], dist[hi],
                lambda r: f"round {r['round']} ({r['hidden']} units)")
        others = []
        for k in cfg.noise_kinds[1:]:
            d = summary["distillation"].get(k, {})
            if lo in d and hi in d and len(d[lo]) > 1 and len(d[hi]) > 1:
                others.append(f"{k}: {_pct(d[lo][1]['train_acc_mean'])} vs "
                              f"{_pct(d[hi][1]['train_acc_mean'])}")
        if others:
            parts.append("After round 1 with other noise (" + lo + " vs " + hi + "): "
                         + "; ".join(others) + ".")
        if len(dist) > 2:  # partial random labels: the last common round, every fraction
            n = min(len(rows) for rows in dist.values())
            items = []
            for f in sorted(float(x) for x in cfg.label_fractions):
                name, rows = label_name(f), dist.get(label_name(f))
                if rows is None:
                    continue
                changed = t.get(name, {}).get("labels_changed")
                ref = "" if not changed else f" (a true-class predictor: {_pct(1 - changed)})"
                items.append(f"{name} {_pct(rows[n - 1]['train_acc_mean'])}{ref}")
            parts.append(f"Training accuracy after distillation round {n - 1} by label noise: "
                         + ", ".join(items) + ".")
    pr = summary["pruning"]
    if lo in pr and hi in pr:
        ref = {"train_acc_mean": tl["train_acc_mean"]}, {"train_acc_mean": th["train_acc_mean"]}
        compare("Magnitude pruning + fine-tuning", [ref[0], *pr[lo]], [ref[1], *pr[hi]],
                lambda r: f"{_pct(r.get('density_target'))} of weights kept")
    sub = summary["subspace"]
    if lo in sub and hi in sub:
        top = max(int(d) for d in cfg.dims)
        fmt = lambda d: f"d={d:,}" if d is not None else f"no d up to {top:,}"
        budget = int(cfg.subspace_train.epochs)
        if sub[lo]["target_train_acc"] is None or sub[hi]["target_train_acc"] is None:
            parts.append(f"Subspace training: not compared (full-space training after {budget} "
                         "epochs is within 5 points of chance for a label set).")
        else:
            dl, dh = sub[lo]["d_fit"], sub[hi]["d_fit"]
            verdicts["Subspace training"] = dl is not None and (dh is None or dh > dl)
            parts.append(
                f"Subspace training ({budget} epochs): smallest d keeping "
                f"{100 * cfg.fit_fraction:g}% of the above-chance training accuracy that full-"
                f"space training reached in as many epochs ({_pct(sub[lo]['full_space_same_epochs'])}"
                f" {lo}, {_pct(sub[hi]['full_space_same_epochs'])} {hi}): {lo} {fmt(dl)}, "
                f"{hi} {fmt(dh)}; against the final teachers: {lo} {fmt(sub[lo]['d_fit_final'])}, "
                f"{hi} {fmt(sub[hi]['d_fit_final'])}.")
    if verdicts:
        yes = [k for k, v in verdicts.items() if v]
        no = [k for k, v in verdicts.items() if not v]
        parts.append(f"Verdict: compression separates learning from memorisation here in "
                     f"{len(yes)} of {len(verdicts)} strategies"
                     + (f" ({', '.join(yes)})" if yes else "")
                     + (f"; not in: {', '.join(no)}" if no else "") + ".")
    return " ".join(parts)


def markdown(cfg, summary: dict) -> str:
    lines = ["## Teachers (784-%d-10)" % cfg.hidden, "",
             "| labels | labels changed | train acc % | test acc % | epochs to fit |",
             "|---|---:|---:|---:|---|"]
    for name, t in summary["teachers"].items():
        lines.append(f"| {name} | {_pct(t['labels_changed'])} | "
                     f"{sweep.fmt_pct(t['train_acc_mean'], t['train_acc_sd'])} | "
                     f"{sweep.fmt_pct(t['test_acc_mean'], t['test_acc_sd'])} | "
                     f"{', '.join('-' if e is None else str(e) for e in t['epochs_to_fit'])} |")
    for kind, by_label in summary["distillation"].items():
        lines += ["", f"## Distillation on {kind} noise (train acc on the teacher's labels; "
                  "test acc on real labels)", "",
                  "| labels | round | hidden | train acc % | test acc % | agrees with teacher % |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, rows in by_label.items():
            for r in rows:
                agree = _pct(r.get("agreement_train_mean")) if r["round"] else "-"
                lines.append(f"| {name} | {r['round']} | {r['hidden']} | "
                             f"{sweep.fmt_pct(r['train_acc_mean'], r['train_acc_sd'])} | "
                             f"{sweep.fmt_pct(r['test_acc_mean'], r['test_acc_sd'])} | {agree} |")
    if summary["pruning"]:
        lines += ["", "## Magnitude pruning (global, kernels)", "",
                  "| labels | kept % | train acc % pruned | train acc % fine-tuned | "
                  "test acc % fine-tuned |", "|---|---:|---:|---:|---:|"]
        for name, rows in summary["pruning"].items():
            for r in rows:
                lines.append(f"| {name} | {100 * r['density_target']:g} | "
                             f"{sweep.fmt_pct(r['pruned_train_acc_mean'], r['pruned_train_acc_sd'])}"
                             f" | {sweep.fmt_pct(r['train_acc_mean'], r['train_acc_sd'])} | "
                             f"{sweep.fmt_pct(r['test_acc_mean'], r['test_acc_sd'])} |")
    if summary["subspace"]:
        lines += ["", f"## Subspace training ({cfg.projection} P, from the teachers' init)", "",
                  "| labels | d | lr | train acc % | test acc % |", "|---|---:|---:|---:|---:|"]
        for name, s in summary["subspace"].items():
            for r in s["table"]:
                lines.append(f"| {name} | {r['d']:,} | {r['learning_rate']:g} | "
                             f"{sweep.fmt_pct(r['train_acc_mean'], r['train_acc_sd'])} | "
                             f"{sweep.fmt_pct(r['test_acc_mean'], r['test_acc_sd'])} |")
            fmt = lambda d: "-" if d is None else f"{d:,}"
            lines.append(f"| {name} | smallest d fitting: {fmt(s['d_fit'])} (same epochs), "
                         f"{fmt(s['d_fit_final'])} (final teacher) | | "
                         f"full space, same epochs: {_pct(s['full_space_same_epochs'])} | |")
    lines += ["", "**Conclusion (generated from the numbers):** " + summary["conclusion"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures
def _color(f: float):
    if f == 0.0:
        return "green"
    if f == 1.0:
        return "red"
    # Partial noise: darker in-between colours (the middle of RdYlGn is too pale to see).
    return "olivedrab" if f <= 0.25 else "darkorange" if f <= 0.75 else "orangered"


def _band(ax, x, mean, sd, color, label, style="o-", scale=100.0):
    mean, sd = np.asarray(mean, float), np.asarray(sd, float)
    ax.plot(x, scale * mean, style, color=color, label=label, ms=3)
    ax.fill_between(x, scale * (mean - sd), scale * (mean + sd), color=color, alpha=0.15)


def training_curves_figure(cfg, rows):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for f in cfg.label_fractions:
        f = float(f)
        sel = [r for r in rows if r.get("arm") == "teacher" and r["label_fraction"] == f]
        if not sel:
            continue
        epochs = sorted({r["epoch"] for r in sel})
        for ax, key in zip(axes, ("train_acc", "train_loss")):
            vals = [[r[key] for r in sel if r["epoch"] == e] for e in epochs]
            mean = [np.mean(v) for v in vals]
            sd = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
            _band(ax, epochs, mean, sd, _color(f), f"{label_name(f)} labels", "-",
                  100.0 if key == "train_acc" else 1.0)
    axes[0].set_ylabel("training accuracy during the epoch (%)")
    axes[1].set_ylabel("training loss")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"784-{cfg.hidden}-10, same init per seed, mean ± sd over {len(cfg.seeds)} seeds",
                 fontsize=9)
    fig.tight_layout()
    return fig


def compression_figure(cfg, summary):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    kind = cfg.noise_kinds[0]
    sizes = summary["sizes"]
    for name, rows in summary["distillation"].get(kind, {}).items():
        f = _fraction(cfg, name)
        x = [r["round"] for r in rows]
        _band(axes[0], x, [r["train_acc_mean"] for r in rows], [r["train_acc_sd"] for r in rows],
              _color(f), f"{name}: train (own labels)")
        _band(axes[0], x, [r["test_acc_mean"] for r in rows], [r["test_acc_sd"] for r in rows],
              _color(f), f"{name}: test (real)", "s--")
    axes[0].set_xticks(range(len(sizes)))
    axes[0].set_xticklabels([f"{r}\n{h}" for r, h in enumerate(sizes)], fontsize=7)
    axes[0].set_xlabel("distillation round (hidden units)")
    axes[0].set_title(f"distillation on {kind} noise")
    for name, rows in summary["pruning"].items():
        f = _fraction(cfg, name)
        x = [100 * r["density_target"] for r in rows]
        _band(axes[1], x, [r["train_acc_mean"] for r in rows], [r["train_acc_sd"] for r in rows],
              _color(f), f"{name}: train, fine-tuned")
        _band(axes[1], x, [r["pruned_train_acc_mean"] for r in rows],
              [r["pruned_train_acc_sd"] for r in rows], _color(f), f"{name}: train, pruned only",
              "^:")
        _band(axes[1], x, [r["test_acc_mean"] for r in rows], [r["test_acc_sd"] for r in rows],
              _color(f), f"{name}: test (real)", "s--")
    axes[1].set_xscale("log")
    ticks = sorted({100 * float(d) for d in cfg.densities})
    axes[1].xaxis.set_major_locator(FixedLocator(ticks))
    axes[1].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[1].xaxis.set_minor_formatter(NullFormatter())
    axes[1].invert_xaxis()
    axes[1].legend(fontsize=7, loc="best")
    axes[1].set_xlabel("kernel weights kept (%)")
    axes[1].set_title("magnitude pruning")
    for name, s in summary["subspace"].items():
        f = _fraction(cfg, name)
        rows = [r for r in s["table"] if r["train_acc_mean"] is not None]
        x = [r["d"] for r in rows]
        _band(axes[2], x, [r["train_acc_mean"] for r in rows], [r["train_acc_sd"] for r in rows],
              _color(f), f"{name}: train (own labels)")
        _band(axes[2], x, [r["test_acc_mean"] for r in rows], [r["test_acc_sd"] for r in rows],
              _color(f), f"{name}: test (real)", "s--")
        if s["full_space_same_epochs"] is not None:
            axes[2].axhline(100 * s["full_space_same_epochs"], color=_color(f), ls="-.", lw=1,
                            label=f"{name}: full space, same epochs (train)")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("subspace dimension d")
    axes[2].set_title(f"subspace training ({cfg.projection} P)")
    for ax in axes:
        ax.axhline(100 * CHANCE, color="k", ls=":", lw=1)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="best")
    fig.suptitle(f"784-{cfg.hidden}-10; mean ± sd over {len(cfg.seeds)} seeds; "
                 "dotted: chance", fontsize=9)
    fig.tight_layout()
    return fig


def noise_figure(cfg, summary):
    kinds = [k for k in cfg.noise_kinds if k in summary["distillation"]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, rows in summary["distillation"][kind].items():
            f = _fraction(cfg, name)
            x = [r["round"] for r in rows]
            _band(ax, x, [r["train_acc_mean"] for r in rows], [r["train_acc_sd"] for r in rows],
                  _color(f), f"{name}: train (own labels)")
        ax.axhline(100 * CHANCE, color="k", ls=":", lw=1)
        ax.set_title(f"{kind} noise")
        ax.set_xlabel("distillation round")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- entry point
def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd = Workdir(workdir)
    wd.write_json("config.json", cfg)
    study = Study(cfg, wd)
    print(f"data: {next(iter(study.datasets.values())).summary()}; students "
          f"{' -> '.join(map(str, study.sizes))} hidden units", flush=True)
    units = study.units()
    results = sweep.run_units(wd, units, "memorization")

    D = models.param_count(study.model)
    summary = summarise(cfg, results, study.sizes, D)
    summary["failed_units"] = [u.name for u in units if u.name not in results]
    summary["conclusion"] = conclusion(cfg, summary)
    wd.write_json("summary.json", summary)
    text = markdown(cfg, summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write(text)
    print(text)
    rows = []
    if os.path.exists(wd.file("metrics.jsonl")):
        with open(wd.file("metrics.jsonl")) as fh:
            rows = [r for r in map(json.loads, fh) if r.get("arm") == "teacher"]
    for name, fig in (("training_curves.png", training_curves_figure(cfg, rows)),
                      ("compression.png", compression_figure(cfg, summary)),
                      ("distillation_noise.png", noise_figure(cfg, summary))):
        print("figure:", wd.save_figure(fig, name))
        plt.close(fig)
    return summary
