"""Pruning procedures as pure functions of one run: ``run(key, hp, data)``.

A builder returns a single-seed ``run`` that ``vectorize.vmapped`` turns
into one compiled program over seeds (keys) and hp rows (rows share a key).
``hp`` holds the training scalars (``learning_rate``, ``weight_decay``,
``d_active``) and ``densities``: the fraction of prunable weights kept at each
level, shape ``[L]`` per row. Every training goes through ``train.make_run``
with ``hp['mask']`` (pruned weights start and stay exactly zero, updates are
masked) and ``hp['theta_init']``.

Procedures, each for one network it is handed (``theta_D``, surviving
``alive_D``) and returning ``(mask_LxD, train.Result)`` with a leading ``[L]``
axis over the densities:

* ``one_shot``: score once, prune to each density, fine-tune each mask (at
  init: the init's weights and the full training run);
* ``iterative``: per level score the previous level's fine-tuned weights,
  prune the survivors further, fine-tune (OBD's train-score-prune-retrain);
* ``imp`` (lottery tickets): per level prune the smallest-magnitude
  survivors, rewind them to given weights and retrain the full schedule; with
  a reinit key the same masks also train from a fresh random init (the
  random-reinitialisation control).

``make_pruning_run`` composes them into one run: the dense run, the
procedures at init, after training (from the dense run's kept weights) and
IMP (rewound to init, ``rewind_epoch=0``, or to the dense run after
``rewind_epoch`` epochs). It trains the at-init masks beside the dense run and
fine-tunes every after-training arm in one scan, which keeps the number of
compiled trainings at three (dense + at init, fine-tune, IMP): that dominates
the cost of a quick run.

Scorers come from ``scorers.REGISTRY`` (IMP is magnitude pruning by definition).

Outputs are dicts ``{"<procedure>/<scorer>": Levels, "dense": train.Result}``
whose leaves gain ``[S, R]`` axes under ``vmapped``; ``unit_records`` turns
them into one JSON record per (seed, row, level).

Keys: one root key per run; ``init``, ``train`` (data order), ``score``,
``reinit`` and ``batch`` keys are derived from it with ``fold_in``. All arms of
a run share the ``train`` key (same data order) and one scoring batch of
training examples (SNIP, GraSP and OBD see the same examples).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from subspace_jax import config as C
from subspace_jax import models, report, train
from subspace_jax.pruning import masks, scorers

SCORERS = tuple(scorers.REGISTRY)
AT_INIT = tuple(n for n, s in scorers.REGISTRY.items() if s.at_init)
AFTER_TRAINING = tuple(n for n, s in scorers.REGISTRY.items() if s.after_training)
TRAIN_HP = ("learning_rate", "weight_decay", "d_active")


def prune_config(**overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(dict(
        mode="global",             # global (raw scores, no per-layer normalisation) | layerwise
        prunable=("w",),           # leaf names that may be pruned (kernels); biases/slopes stay
        min_one_per_layer=True,    # layer-collapse guard
        layer_exponents=(),        # layerwise only: ((leaf name, e), ...): density_l = density ** e
        score_batch=256,           # training examples scored by SNIP, GraSP and OBD
        obd_hessian="auto",        # auto | exact | gauss_newton | hutchinson
        obd_exact_max_params=2000,  # auto: exact Hessian diagonal up to this many params
        hutchinson_samples=64,
        hessian_chunk=16,          # vectors (or examples) per vmapped block
        grasp_temperature=200.0,
        synflow_rounds=100,
        finetune_epochs=1,         # after-training procedures (not IMP, which retrains fully)
    ))
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------- helpers
class Keys(NamedTuple):
    init: jax.Array
    train: jax.Array
    score: jax.Array
    reinit: jax.Array
    batch: jax.Array


def run_keys(key) -> Keys:
    return Keys(*(jax.random.fold_in(key, i) for i in range(5)))


def layer_exponents(lay: masks.Layout, pairs) -> tuple[float, ...]:
    table = {str(n): float(e) for n, e in pairs}
    prunable = [lay.names[i] for i in lay.prunable_leaves]
    unknown = set(table) - set(prunable)
    if unknown:
        raise ValueError(f"layer_exponents name {sorted(unknown)}; prunable tensors: {prunable}")
    return tuple(table.get(n, 1.0) for n in prunable)


def score_batch(key, data: train.Data, size: int):
    """``size`` training examples without replacement (never validation or test)."""
    n = data.train_x.shape[0]
    idx = jax.random.choice(key, n, (min(size, n),), replace=False)
    return data.train_x[idx], data.train_y[idx]


def make_pruner(model, lay: masks.Layout, name: str, pcfg, input_shape: Sequence[int]):
    """``prune(key, theta_D, density, alive_D, batch, min_one) -> mask_D`` for scorer ``name``
    (``scorers.REGISTRY``).

    ``batch``: ``(x, y)`` training examples for the data-dependent scorers
    (``score_batch``); ``key`` feeds the random scorer and Hutchinson.

    ``min_one`` (the layer-collapse guard) may be traced, so guarded and
    unguarded masks can share one vmapped call; ``None`` uses
    ``pcfg.min_one_per_layer``.
    """
    scorers.get(name)  # an unknown name fails here, not when traced
    ctx = scorers.Context(models.flat(model).apply_D, tuple(input_shape), pcfg)
    exps = layer_exponents(lay, pcfg.layer_exponents)

    def prune(key, theta_D, density, alive_D, batch, min_one=None):
        guard = pcfg.min_one_per_layer if min_one is None else min_one
        return scorers.mask(name, ctx, key, theta_D, density, lay, alive_D, batch, guard, exps)

    return prune


def needs_batch(names: Sequence[str]) -> bool:
    """Whether any of the scorers ``names`` scores training examples (``score_batch``)."""
    return any(scorers.get(n).needs_batch for n in names)


class Levels(NamedTuple):
    """Results of one arm at each pruning level (leading axis L)."""
    history: dict[str, jax.Array]   # per-epoch metrics [L, E]
    final: dict[str, jax.Array]     # train.Result.final entries [L]
    leaf_kept: jax.Array            # kept weights per leaf [L, n_leaves]
    mask: Any                       # bool [L, D], or None where another arm holds it
    theta: Any = None               # kept (best-validation) params [L, D]; IMP tickets only


def _leaf_counts(mask_LxD, lay) -> jax.Array:
    return jax.vmap(lambda m: masks.leaf_counts(m, lay))(mask_LxD)


def _levels(res: train.Result, mask_LxD, lay, keep_mask: bool = True,
            keep_theta: bool = False) -> Levels:
    return Levels(res.history, res.final, _leaf_counts(mask_LxD, lay),
                  mask_LxD > 0 if keep_mask else None, res.params if keep_theta else None)


def _train_hp(hp):
    return {k: hp[k] for k in TRAIN_HP if k in hp}


def _train_from(run_train, key, thp, data, start_D, mask_D) -> train.Result:
    return run_train(key, {**thp, "theta_init": start_D * mask_D, "mask": mask_D}, data)


def _with(tcfg, **fields):
    cfg = ml_collections.ConfigDict(tcfg.to_dict())
    cfg.update(fields)
    return cfg


# ---------------------------------------------------------------- procedures
def prune_levels(prune, key, theta_D, alive_D, densities_L, batch=None, guard_L=None):
    """``theta_D`` scored once and cut to each density: ``mask_LxD`` (survivors of ``alive_D``).

    ``guard_L``: the layer-collapse guard per level (``None``: the config's).
    """
    return jax.vmap(lambda d, g: prune(key, theta_D, d, alive_D, batch, g))(densities_L, guard_L)


def train_masks(run, key, thp, data, theta_D, mask_NxD) -> train.Result:
    """``run`` from ``theta_D`` under each mask (pruned weights zero), as one vmapped call."""
    return jax.vmap(lambda m: _train_from(run, key, thp, data, theta_D, m))(mask_NxD)


def one_shot(prune, run_ft, score_key, train_key, thp, data, theta_D, alive_D, densities_L,
             batch=None):
    """One network pruned once to each density, each mask fine-tuned: ``(mask_LxD, Result)``.

    ``prune`` from ``make_pruner``; ``run_ft`` a ``train.make_run`` (the masked
    fine-tuning, from the pruned ``theta_D``); ``thp`` its training hp. The
    result's leaves gain a leading ``[L]`` axis. Pruning at init is this with
    the init and the full training run.
    """
    mask_LxD = prune_levels(prune, score_key, theta_D, alive_D, densities_L, batch)
    return mask_LxD, train_masks(run_ft, train_key, thp, data, theta_D, mask_LxD)


def iterative(prune, run_ft, score_key, train_key, thp, data, theta_D, alive_D, densities_L,
              batch=None):
    """Per level: score the previous level's fine-tuned weights (``theta_D`` first), prune its
    survivors (``alive_D`` first) to the density, fine-tune: ``(mask_LxD, Result [L])``.

    Level ``l`` scores with ``fold_in(score_key, l)``.
    """
    mask_AxLxD, res = _levels_of_arms((prune,), (True,), (score_key,), run_ft, train_key, thp,
                                      data, theta_D, alive_D, densities_L, batch)
    return mask_AxLxD[0], jax.tree.map(lambda a: a[0], res)


def _levels_of_arms(prunes, chained, score_keys, run_ft, train_key, thp, data, theta_D, alive_D,
                    densities_L, batch):
    """Arms pruned and fine-tuned level by level, one vmapped fine-tune per level:
    ``(mask_AxLxD, Result [A, L])``. A chained arm is ``iterative``; an unchained one
    prunes ``(theta_D, alive_D)`` afresh at every level (one-shot)."""
    n_a = len(prunes)
    chained_Ax1 = jnp.asarray(chained)[:, None]

    def level(carry, xs):
        mask_AxD, theta_AxD = carry
        d, l = xs
        new_AxD = jnp.stack([prune(jax.random.fold_in(key, l), theta_AxD[i], d, mask_AxD[i], batch)
                             for i, (prune, key) in enumerate(zip(prunes, score_keys))])
        res = jax.vmap(lambda m, th: _train_from(run_ft, train_key, thp, data, th, m))(
            new_AxD, theta_AxD)
        carry = (jnp.where(chained_Ax1, new_AxD, mask_AxD),
                 jnp.where(chained_Ax1, res.params, theta_AxD))
        return carry, (new_AxD, res)

    init = (jnp.tile(alive_D, (n_a, 1)), jnp.tile(theta_D, (n_a, 1)))
    _, out = lax.scan(level, init, (densities_L, jnp.arange(densities_L.shape[0])))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)  # [L, A, ...] -> [A, L, ...]


def imp(prune, run_train, score_key, train_key, thp, data, theta_D, alive_D, rewind_D,
        densities_L, reinit_key=None, init_D=None):
    """Iterative magnitude pruning (lottery tickets): per level prune the survivors (``alive_D``
    first) by the previous level's retrained weights (``theta_D`` first), rewind them to
    ``rewind_D``, retrain.

    Returns ``(mask_LxD, ticket, control)``, Results ``[L]``. With ``reinit_key``, level
    ``l``'s mask also trains from the fresh init ``init_D(fold_in(reinit_key, l))`` (the
    control); else ``control`` is ``None``. ``prune`` is the magnitude pruner, by definition.
    """
    def level(carry, xs):
        kept_D, trained_D = carry
        d, l = xs
        new_D = prune(jax.random.fold_in(score_key, l), trained_D, d, kept_D, None)
        starts = [rewind_D] + ([init_D(jax.random.fold_in(reinit_key, l))]
                               if reinit_key is not None else [])
        res = jax.vmap(lambda th: _train_from(run_train, train_key, thp, data, th, new_D))(
            jnp.stack(starts))
        arm = lambda i: jax.tree.map(lambda a: a[i], res)
        return (new_D, arm(0).params), (new_D, arm(0), arm(1) if len(starts) > 1 else None)

    return lax.scan(level, (alive_D, theta_D), (densities_L, jnp.arange(densities_L.shape[0])))[1]


_imp = imp  # make_pruning_run's ``imp`` flag shadows the procedure


def make_pruning_run(model, tcfg, pcfg, n_train: int, *, at_init: Sequence[str] = (),
                     one_shot: Sequence[str] = (), iterative: Sequence[str] = (),
                     imp: bool = False, control: bool = False, rewind_epoch: int = 0,
                     collapse: bool = False, input_shape: Sequence[int] = models.MNIST_SHAPE):
    """``run(key, hp, data)`` for one seed: the dense run plus the procedures asked for.

    Returns a dict of arms (those asked for):
      ``dense``: ``train.Result`` of the unpruned network;
      ``at_init/<s>``: ``Levels``, the init scored by ``s``, pruned one-shot to
        each density, trained ``tcfg.epochs`` epochs; trained in the same
        vmapped call as the dense run (the all-ones mask), so one compiled
        training serves both;
      ``one_shot/<s>``, ``iterative/<s>``: ``Levels``, pruned from the dense
        run's kept weights (one-shot) or from the previous level's fine-tuned
        weights (``iterative``), then fine-tuned ``pcfg.finetune_epochs`` epochs;
        both kinds share one scan over levels and one vmapped fine-tune (so
        one-shot here re-scores at every level, unlike ``one_shot``);
      ``imp/rewind<k>`` (and ``imp_control/rewind<k>`` with ``control``):
        ``Levels`` of ``imp`` from the dense run's kept weights, rewound to
        init (k = 0) or to the weights after k epochs, retrained ``tcfg.epochs``
        epochs; the control trains the same mask from a fresh random init;
      ``collapse/<s>``: kept weights per leaf ``[Lc, n_leaves]`` of the at-init
        masks *without* the collapse guard at ``hp['collapse_densities']``
        (no training), for the layer-collapse measure.

    Rewinding to ``rewind_epoch`` > 0 takes the weights after that many epochs
    of a run with the dense run's key, init and data order; that equals the
    dense trajectory only for ``train.schedule='constant'``, so other
    schedules are refused. Every retraining restarts the optimizer state and
    the data order at epoch 0.
    """
    if rewind_epoch and tcfg.schedule != "constant":
        raise ValueError("rewinding to an epoch needs train.schedule='constant' (the snapshot "
                         f"comes from a {rewind_epoch}-epoch run), got {tcfg.schedule!r}")
    if not 0 <= rewind_epoch < int(tcfg.epochs):
        raise ValueError(f"rewind_epoch={rewind_epoch} must be in [0, train.epochs)")
    if collapse and not at_init:
        raise ValueError("collapse measures the at-init scorers: give at_init")
    lay = masks.model_layout(model, tuple(pcfg.prunable))
    init_D = models.flat(model).init_D
    no_sub = C.subspace_config(0)
    run_train = train.make_run(model, tcfg, no_sub, n_train)
    run_ft = train.make_run(model, _with(tcfg, epochs=int(pcfg.finetune_epochs)), no_sub, n_train)
    run_snap = (train.make_run(model, _with(tcfg, epochs=rewind_epoch, keep_best=False), no_sub,
                               n_train) if rewind_epoch else None)
    arms = [("one_shot", s) for s in one_shot] + [("iterative", s) for s in iterative]
    pruners = {s: make_pruner(model, lay, s, pcfg, input_shape)
               for s in (*at_init, *one_shot, *iterative, "magnitude")}
    ones = jnp.ones(lay.D, jnp.float32)
    batched = needs_batch((*at_init, *one_shot, *iterative))

    def dense_and_at_init(k, thp, data, batch, theta0_D, hp):
        dens = hp["densities"]
        L = dens.shape[0]
        guard = jnp.full(L, bool(pcfg.min_one_per_layer))
        if collapse:  # unguarded masks ride along in the same vmap (scores computed once)
            dens = jnp.concatenate([dens, hp["collapse_densities"]])
            guard = jnp.concatenate([guard, jnp.zeros(hp["collapse_densities"].shape[0], bool)])
        per_scorer = [prune_levels(pruners[s], jax.random.fold_in(k.score, i), theta0_D, ones,
                                   dens, batch, guard) for i, s in enumerate(at_init)]
        n_s = len(at_init)
        m_SxLxD = jnp.stack(per_scorer) if n_s else jnp.zeros((0, dens.shape[0], lay.D))
        res = train_masks(run_train, k.train, thp, data, theta0_D,
                          jnp.concatenate([ones[None], m_SxLxD[:, :L].reshape(n_s * L, lay.D)]))
        out = {"dense": jax.tree.map(lambda a: a[0], res)}
        res_SxL = jax.tree.map(lambda a: a[1:].reshape(n_s, L, *a.shape[1:]), res)
        out.update({f"at_init/{s}": _levels(jax.tree.map(lambda a: a[i], res_SxL),
                                            m_SxLxD[i, :L], lay)
                    for i, s in enumerate(at_init)})
        if collapse:
            out.update({f"collapse/{s}": _leaf_counts(m_SxLxD[i, L:], lay)
                        for i, s in enumerate(at_init)})
        return out

    def after_training(k, thp, data, batch, theta_T, densities_L):
        mask_AxLxD, res = _levels_of_arms(
            [pruners[s] for _, s in arms], [p == "iterative" for p, _ in arms],
            [jax.random.fold_in(k.score, 100 + i) for i in range(len(arms))],
            run_ft, k.train, thp, data, theta_T, ones, densities_L, batch)
        return {f"{p}/{s}": _levels(jax.tree.map(lambda a: a[i], res), mask_AxLxD[i], lay)
                for i, (p, s) in enumerate(arms)}

    def lottery(k, thp, data, theta0_D, theta_T, densities_L):
        rewind_D = (run_snap(k.train, {**thp, "theta_init": theta0_D}, data).params
                    if rewind_epoch else theta0_D)
        mask_LxD, ticket, ctrl = _imp(pruners["magnitude"], run_train, k.score, k.train, thp,
                                      data, theta_T, ones, rewind_D, densities_L,
                                      k.reinit if control else None, init_D)
        out = {f"imp/rewind{rewind_epoch}": _levels(ticket, mask_LxD, lay, keep_theta=True)}
        if control:
            out[f"imp_control/rewind{rewind_epoch}"] = _levels(ctrl, mask_LxD, lay,
                                                               keep_mask=False)
        return out

    def run(key, hp, data):
        k = run_keys(key)
        thp = _train_hp(hp)
        theta0_D = init_D(k.init)
        batch = score_batch(k.batch, data, int(pcfg.score_batch)) if batched else None
        out = dense_and_at_init(k, thp, data, batch, theta0_D, hp)
        theta_T = out["dense"].params  # best-validation weights of the dense run
        if arms:
            out.update(after_training(k, thp, data, batch, theta_T, hp["densities"]))
        if imp:
            out.update(lottery(k, thp, data, theta0_D, theta_T, hp["densities"]))
        return out

    return run


# ---------------------------------------------------------------- records
def _f32(x) -> float:
    """The shortest decimal that is the same float32 (0.3, not 0.30000001192092896)."""
    return float(str(np.float32(x)))


def _record_levels(arm, s, r):
    """(final, history, leaf_kept) per level of one (seed, row) of an arm."""
    if isinstance(arm, train.Result):  # the dense run: one level, everything kept
        return [(0, {k: v[s, r] for k, v in arm.final.items()},
                 {k: v[s, r] for k, v in arm.history.items()}, None)]
    L = arm.leaf_kept.shape[2]
    return [(l + 1, {k: v[s, r, l] for k, v in arm.final.items()},
             {k: v[s, r, l] for k, v in arm.history.items()}, arm.leaf_kept[s, r, l])
            for l in range(L)]


def unit_records(out: dict, seeds: Sequence[int], hp: dict, lay: masks.Layout,
                 flops_per_w: np.ndarray, labels: dict | None = None):
    """(records, history rows) of a vmapped procedure output on the host."""
    labels = labels or {}
    records, rows = [], []
    n_rows = len(next(iter(hp.values())))
    full = np.asarray(lay.sizes)
    for method, arm in out.items():
        procedure, _, scorer = method.partition("/")
        if procedure == "collapse":  # see collapse_records
            continue
        for s, seed in enumerate(seeds):
            for r in range(n_rows):
                base = {"seed": int(seed), "method": method, "procedure": procedure,
                        "scorer": scorer or None, **labels,
                        **{k: v[r] for k, v in hp.items()
                           if k not in ("densities", "collapse_densities")}}
                for level, final, history, kept in _record_levels(arm, s, r):
                    target = 1.0 if level == 0 else _f32(hp["densities"][r][level - 1])
                    rep = masks.report(full if kept is None else kept, lay, flops_per_w)
                    final = {k: np.asarray(v) for k, v in final.items()}
                    diverged = bool(final.pop("diverged"))
                    at = {**base, "level": level, "density_target": target}
                    records.append({
                        **at, **final, "status": "diverged" if diverged else "ok",
                        "density": rep["density"], "nonzero": rep["nonzero"], "flops": rep["flops"],
                        "layer_density": {x["name"]: x["density"] for x in rep["layers"]
                                          if x["prunable"]}})
                    for e in range(len(history["val_acc"])):
                        rows.append({**at, "epoch": e + 1, **{k: v[e] for k, v in history.items()}})
    return records, rows


def collapse_records(out: dict, seeds: Sequence[int], densities: np.ndarray, lay: masks.Layout,
                     labels: dict | None = None) -> list[dict]:
    """One record per (scorer, seed): the largest compression with every layer alive.

    Compression = 1 / density; "max_compression" is the largest grid value
    such that every prunable tensor keeps a weight at it and at every larger
    density of the grid (``None`` when even the densest point collapses).
    """
    records = []
    order = np.argsort(-np.asarray(densities))
    for method, kept in out.items():
        if not method.startswith("collapse/"):
            continue
        for s, seed in enumerate(seeds):
            k = np.asarray(kept[s, 0])[:, list(lay.prunable_leaves)]
            alive = (k > 0).all(1)
            best = None
            for j in order:
                if not alive[j]:
                    break
                best = _f32(densities[j])
            records.append({"seed": int(seed), "method": method, "scorer": method.split("/")[1],
                            **(labels or {}), "min_density": best,
                            "max_compression": None if best is None else 1.0 / best,
                            "densities": [_f32(d) for d in densities],
                            "layers_alive": [int(a) for a in (k > 0).sum(1)]})
    return records


def summarise(records: Sequence[dict], select_by: str = "learning_rate") -> list[dict]:
    """Per (method, density_target): the ``select_by`` value chosen on validation
    (``report.choose``), then mean and sd over its ok seeds of validation,
    decision-half, test and train accuracy, kept density, non-zero params,
    flops and best epoch; diverged seeds are counted beside. Test accuracy is
    never used to choose.
    """
    table = []
    for method in sorted({r["method"] for r in records}):
        group = [r for r in records if r["method"] == method]
        for target in sorted({r["density_target"] for r in group}, reverse=True):
            at = [r for r in group if r["density_target"] == target]
            options = {o: [r for r in at if r[select_by] == o] for o in {r[select_by] for r in at}}
            best = report.choose(options, "val_acc")
            row = {"method": method, "density_target": target, select_by: best,
                   **report.stats(options.get(best, []),
                                  ("val_acc", "decide_acc", "test_acc", "train_acc", "density",
                                   "nonzero", "flops", "best_epoch"))}
            row["seeds"] = row.pop("ok")
            table.append(row)
    return table
