"""Weight-agnostic networks (Gaier & Ha 2019) on MNIST 16x16: topology search, one shared weight.

    python launch.py --experiment=wann          # default; est. ~45-60 min, see below
    python launch.py --experiment=wann --quick  # smoke run, ~15 s on 2 CPU cores

Genomes are fixed-size masks (``subspace_jax.wann_search``): up to ``max_hidden``
hidden nodes between the 256 (+1 bias) inputs and 10 linear outputs, every
connection carrying the same weight. Each generation the whole population is
evaluated in one vmapped program at the shared weights {-2, -1, -0.5, 0.5, 1,
2} on a fresh random batch of ``fitness_batch`` training images (fitness: mean
log-likelihood of the softmax outputs, as in the paper's code; set
``evolution.fitness=accuracy`` for accuracy). Ranking: Pareto fronts (then
crowding distance) on (mean fitness, fewer connections) with probability
``p_connection_objective`` = 0.8, else on (mean fitness, best-weight fitness),
the paper's alternation. The top ``elite_ratio`` survive unchanged, the worst
``cull_ratio`` cannot be parents, the rest are tournament winners with one
mutation each (activation 0.5, insert node 0.25, add connection 0.2,
re-enable 0.05; the paper's defaults). No crossover, no speciation.

After the last generation the ``val_candidates`` individuals with the best
mean training fitness are scored on the validation split; the one with the
best mean validation accuracy is the champion. Reported on the test split:
a random shared weight w ~ U[-2, 2] (mean +- sd over draws), the single best
weight on a grid (chosen on validation), the majority vote of the 6 shared
weights, and the individual weights trained with Adam starting from the
chosen shared weight. Test accuracy never decides anything.

Default (population 256, 1024 generations, <= 64 hidden nodes): on a lent
NVIDIA H100 (16 host cores), 4 min 55 s: ensemble 87.0%, 443 connections;
resumed to 2,048 generations, 88.6% with 577 connections (README). Measured
pilot on 2 CPU cores: the first 176 generations took
5.1 min (1-3 s per generation, growing with the networks' size); scored at
generation 176 (``--config.evolution.generations=176`` on that checkpoint):
random shared weight 39.2% +- 12.5%, best shared weight (w=-2) 49.5%,
ensemble 50.6%, tuned weights 66% (lr 0.01), 178 connections, 41 hidden
nodes. ESTIMATE for the full default, extrapolated from that pilot: ~45-60 min
in total, ensemble accuracy perhaps 65-80%: well below the paper, which
evaluated 960 x 4096 networks (15x more) and kept ~10x more connections.
Published WANN numbers (MNIST, 16x16, Gaier & Ha 2019): random shared weight
82.0% +- 18.7%, ensemble 91.6%, best shared weight 91.9%, individually tuned
weights 94.2%, about 1,849 connections.

Resumable: the evaluated population is checkpointed to ``population.npz``
every ``checkpoint_every`` generations; a re-run (also with more
``generations``) continues from it, and the per-generation RNGs are derived
from (seed, generation) so a resumed run equals an uninterrupted one.

Writes: config.json, metrics.jsonl (one row per generation), population.npz,
champion.npz, summary.json, summary.md, topology.png, accuracy_vs_weight.png,
generations.png.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, wann_search
from subspace_jax import wann_plots as plots
from subspace_jax.workdir import Workdir, to_jsonable
from subspace_jax.errors import ConfigError

PUBLISHED = {"random_weight_acc_mean": 0.820, "random_weight_acc_sd": 0.187,
             "ensemble_acc": 0.916, "best_weight_acc": 0.919, "tuned_acc": 0.942,
             "connections": 1849, "population": 960, "generations": 4096,
             "source": "Gaier & Ha 2019, Table (MNIST, 16x16 deskewed inputs)"}
CHECKPOINT = "population.npz"
_PURPOSE = {"init": 0, "batch": 1, "evolve": 2, "report": 3}
# Fields that may change between a run and its resumption.
_RESUMABLE = {"evolution": ("generations", "checkpoint_every", "log_every", "val_candidates",
                            "eval_chunk"), "report": None, "tune": None}


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.data = C.data_config()
    cfg.input = ml_collections.ConfigDict(dict(
        resolution=16,           # 16 (area average, as the paper) or 28 (full)
        deskew=True,             # moment-based shear removal before resizing
        bias=True,               # a constant-1 input
    ))
    cfg.evolution = ml_collections.ConfigDict(dict(
        population=256,
        generations=1024,
        max_hidden=64,
        p_init_enable=0.05,      # input->output connections on at generation 1
        shared_weights=wann_search.SHARED_WEIGHTS,
        fitness="loglik",        # loglik | accuracy (on the training batch)
        fitness_batch=1000,      # fresh random training images every generation
        p_connection_objective=0.8,
        elite_ratio=0.2,
        cull_ratio=0.2,
        tournament=16,
        p_activation=0.5,
        p_insert_node=0.25,
        p_add_connection=0.2,
        p_reenable=0.05,
        eval_chunk=64,           # genomes per compiled call (memory, not numerics)
        checkpoint_every=16,
        log_every=16,
        val_candidates=16,       # best-by-training individuals scored on validation
    ))
    cfg.report = ml_collections.ConfigDict(dict(
        random_draws=100,        # shared weights drawn from U[-random_range, random_range]
        random_range=2.0,
        grid_points=41,          # weight grid on [-2, 2] for the best single weight
    ))
    cfg.tune = ml_collections.ConfigDict(dict(steps=3000, batch_size=128, learning_rate=1e-2))
    if quick:
        cfg.data.train_size = 1000
        cfg.data.val_size = 500
        cfg.data.synthetic_size = 1000   # so data.source=synthetic also works
        e = cfg.evolution
        e.population, e.generations, e.max_hidden = 16, 6, 8
        e.fitness_batch, e.tournament, e.eval_chunk = 256, 4, 16
        e.checkpoint_every, e.log_every, e.val_candidates = 2, 1, 4
        cfg.report.random_draws = 20
        cfg.report.grid_points = 21
        cfg.tune.steps = 50
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    checks.mnist_only(cfg, "wann")
    e = cfg.evolution
    if int(cfg.input.resolution) not in range(1, 29):
        raise ConfigError(f"config.input.resolution={cfg.input.resolution} must be in 1..28.")
    if e.fitness not in ("loglik", "accuracy"):
        raise ConfigError(f"config.evolution.fitness={e.fitness!r}; valid: loglik, accuracy.")
    if int(e.population) < 2 or int(e.generations) < 1 or int(e.max_hidden) < 0:
        raise ConfigError("config.evolution needs population >= 2, generations >= 1, "
                          "max_hidden >= 0.")
    if not 0 <= float(e.elite_ratio) < 1 or not 0 <= float(e.cull_ratio) < 1:
        raise ConfigError("config.evolution.elite_ratio and cull_ratio must be in [0, 1).")
    if min(e.p_activation, e.p_insert_node, e.p_add_connection, e.p_reenable) < 0 or \
            e.p_activation + e.p_insert_node + e.p_add_connection + e.p_reenable <= 0:
        raise ConfigError("config.evolution mutation probabilities must be >= 0, not all 0.")
    if not e.shared_weights:
        raise ConfigError("config.evolution.shared_weights must not be empty.")
    if int(cfg.data.val_size) < 1:
        raise ConfigError("config.data.val_size must be >= 1: the champion and the best "
                          "shared weight are chosen on validation.")


def _rng(seed: int, generation: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(generation), _PURPOSE[purpose]])


def fingerprint(cfg) -> str:
    """The config minus the fields a resumed run may change."""
    d = cfg.to_dict()
    for section, fields in _RESUMABLE.items():
        if fields is None:
            d.pop(section, None)
        else:
            for f in fields:
                d[section].pop(f, None)
    return json.dumps(to_jsonable(d), sort_keys=True)


def save_checkpoint(wd: Workdir, pop, loglik, acc, generation: int, seconds: float, fp: str):
    wd.save_npz(CHECKPOINT, dict(**pop, loglik=loglik, acc=acc, generation=generation,
                                 seconds=seconds, fingerprint=np.asarray(fp)))


def load_checkpoint(wd: Workdir, fp: str):
    """(pop, loglik, acc, generation, seconds) or None when there is no checkpoint."""
    if not os.path.exists(wd.file(CHECKPOINT)):
        return None
    with np.load(wd.file(CHECKPOINT)) as z:
        if str(z["fingerprint"]) != fp:
            raise ValueError(f"{wd.file(CHECKPOINT)} comes from a different config (only "
                             "generations, checkpointing, logging, report and tune fields may "
                             "change on resume); use a fresh --workdir.")
        pop = {k: z[k] for k in wann_search.KEYS}
        return pop, z["loglik"], z["acc"], int(z["generation"]), float(z["seconds"])


def _keep_metrics_up_to(wd: Workdir, generation: int) -> None:
    """Drops rows logged after the checkpoint: they will be recomputed identically."""
    path = wd.file("metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["generation"] <= generation]
    wd.write_text("metrics.jsonl", "".join(rows))


def generation_row(g, pop, loglik, acc, fit, info, seconds) -> dict:
    genomes = wann_search.unstack(pop)
    conns = np.asarray([wann_search.n_connections(x) for x in genomes])
    hidden = pop["node_on"].sum(1)
    best = int(np.argmax(fit.mean(1)))
    return {"generation": g, "objective": info["objective"], "mutations": info["mutations"],
            "best_mean_acc": acc[best].mean(), "best_max_acc": acc[best].max(),
            "best_mean_loglik": loglik[best].mean(), "median_mean_acc": np.median(acc.mean(1)),
            "best_connections": conns[best], "median_connections": np.median(conns),
            "min_connections": conns.min(), "best_hidden": hidden[best],
            "max_hidden": hidden.max(), "seconds": seconds}


def evolve(cfg, wd: Workdir, x_NxI: np.ndarray, y_N: np.ndarray):
    """Runs (or resumes) the search; returns (pop, loglik, acc, seconds) of the
    last generation, each P x W."""
    e = cfg.evolution
    fp = fingerprint(cfg)
    weights = np.asarray(e.shared_weights, np.float32)
    probs = {"activation": e.p_activation, "insert_node": e.p_insert_node,
             "add_connection": e.p_add_connection, "reenable": e.p_reenable}
    ckpt = load_checkpoint(wd, fp)
    if ckpt is None:
        pop = wann_search.init_population(_rng(cfg.seed, 0, "init"), int(e.population),
                                          x_NxI.shape[1], int(e.max_hidden), 10,
                                          float(e.p_init_enable))
        loglik = acc = None
        done, seconds = 0, 0.0
        _keep_metrics_up_to(wd, 0)
    else:
        pop, loglik, acc, done, seconds = ckpt
        if done > int(e.generations):
            raise ValueError(f"{wd.file(CHECKPOINT)} is at generation {done}, beyond "
                             f"config.evolution.generations={e.generations}.")
        _keep_metrics_up_to(wd, done)
        print(f"resumed after generation {done} ({seconds:.0f}s of evolution so far)", flush=True)
    start = time.time()
    for g in range(done + 1, int(e.generations) + 1):
        t0 = time.time()
        if g == 1:
            info = {"objective": "init", "mutations": {}}
        else:
            fit = loglik if e.fitness == "loglik" else acc
            pop, info = wann_search.next_generation(
                pop, fit, _rng(cfg.seed, g, "evolve"),
                p_connection_objective=float(e.p_connection_objective),
                elite_ratio=float(e.elite_ratio), cull_ratio=float(e.cull_ratio),
                tournament=int(e.tournament), mutation_probs=probs)
        n = len(y_N)
        idx = (np.sort(_rng(cfg.seed, g, "batch").choice(n, int(e.fitness_batch), replace=False))
               if int(e.fitness_batch) < n else np.arange(n))
        loglik, acc = wann_search.evaluate_population(pop, weights, x_NxI[idx], y_N[idx],
                                                      int(e.eval_chunk))
        fit = loglik if e.fitness == "loglik" else acc
        row = generation_row(g, pop, loglik, acc, fit, info, time.time() - t0)
        wd.append_metrics([row])
        if g % int(e.checkpoint_every) == 0 or g == int(e.generations):
            save_checkpoint(wd, pop, loglik, acc, g, seconds + time.time() - start, fp)
        if g % int(e.log_every) == 0 or g == int(e.generations):
            elapsed = time.time() - start
            eta = elapsed / (g - done) * (int(e.generations) - g)
            print(f"[wann {g}/{e.generations}] best mean acc {100 * row['best_mean_acc']:.1f}% "
                  f"(best weight {100 * row['best_max_acc']:.1f}%), "
                  f"{row['best_connections']} connections, {row['best_hidden']} hidden  "
                  f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s", flush=True)
    return pop, loglik, acc, seconds + time.time() - start


def choose_champion(cfg, pop, fit_PxW, x_val, y_val):
    """Best mean validation accuracy over the shared weights among the
    ``val_candidates`` best by mean training fitness."""
    e = cfg.evolution
    cand = np.argsort(-fit_PxW.mean(1), kind="stable")[:int(e.val_candidates)]
    sub = {k: v[cand] for k, v in pop.items()}
    _, val_acc = wann_search.evaluate_population(sub, np.asarray(e.shared_weights, np.float32),
                                                 x_val, y_val, int(e.eval_chunk))
    best = int(np.argmax(val_acc.mean(1)))
    return {k: v[cand[best]] for k, v in pop.items()}, int(cand[best])


def report(cfg, champion, x_tr, y_tr, x_val, y_val, x_te, y_te) -> dict:
    r = cfg.report
    shared = np.asarray(cfg.evolution.shared_weights, np.float32)
    grid = np.unique(np.concatenate([np.linspace(-2.0, 2.0, int(r.grid_points)), shared])
                     .astype(np.float32))
    draws = _rng(cfg.seed, 0, "report").uniform(-r.random_range, r.random_range,
                                                int(r.random_draws)).astype(np.float32)
    val_logits = wann_search.genome_logits(champion, np.concatenate([grid, shared]), x_val)
    test_logits = wann_search.genome_logits(champion, np.concatenate([grid, shared, draws]), x_te)
    ng, ns = len(grid), len(shared)
    val_grid = wann_search.accuracy_per_weight(val_logits[:ng], y_val)
    test_all = wann_search.accuracy_per_weight(test_logits, y_te)
    test_grid, test_shared, test_draws = test_all[:ng], test_all[ng:ng + ns], test_all[ng + ns:]
    chosen = int(np.argmax(val_grid))
    out = {
        "weight_grid": grid, "val_acc_grid": val_grid, "test_acc_grid": test_grid,
        "shared_weight_test_acc": dict(zip([float(w) for w in shared], test_shared)),
        "random_weight_test_acc_mean": test_draws.mean(),
        "random_weight_test_acc_sd": test_draws.std(ddof=1) if len(draws) > 1 else 0.0,
        "random_weight_draws": len(draws),
        "best_weight": grid[chosen], "best_weight_val_acc": val_grid[chosen],
        "best_weight_test_acc": test_grid[chosen],
        "ensemble_val_acc": (wann_search.ensemble_vote(val_logits[ng:]) == y_val).mean(),
        "ensemble_test_acc": (wann_search.ensemble_vote(test_logits[ng:ng + ns]) == y_te).mean(),
    }
    t0 = time.time()
    small = wann_search.truncate_hidden(champion, wann_search.n_hidden_used(champion))
    t = cfg.tune
    params, losses = wann_search.tune_weights(
        small, jnp.float32(grid[chosen]), jnp.asarray(x_tr), jnp.asarray(y_tr),
        jax.random.fold_in(jax.random.key(int(cfg.seed)), 1), jnp.float32(t.learning_rate),
        steps=int(t.steps), batch_size=int(t.batch_size))
    out["tuned_val_acc"] = wann_search.weighted_accuracy(small, params, x_val, y_val)
    out["tuned_test_acc"] = wann_search.weighted_accuracy(small, params, x_te, y_te)
    out["tune_first_last_loss"] = [float(losses[0]), float(losses[-1])]
    out["tune_seconds"] = time.time() - t0
    out["_tuned_params"] = jax.device_get(params)
    return out


def _markdown(s) -> str:
    p = PUBLISHED
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        f"WANN on MNIST {s['resolution']}x{s['resolution']}"
        f"{' deskewed' if s['deskew'] else ''}: population {s['population']}, "
        f"{s['generations']} generations, {s['evolution_seconds'] / 60:.1f} min of evolution.",
        "",
        "| test accuracy | this run | Gaier & Ha 2019 |", "|---|---:|---:|",
        f"| random shared weight U[-2, 2] (mean ± sd, {s['random_weight_draws']} draws) | "
        f"{pct(s['random_weight_test_acc_mean'])} ± {pct(s['random_weight_test_acc_sd'])} | "
        f"{pct(p['random_weight_acc_mean'])} ± {pct(p['random_weight_acc_sd'])} |",
        f"| best single shared weight (w={s['best_weight']:g}, chosen on validation) | "
        f"{pct(s['best_weight_test_acc'])} | {pct(p['best_weight_acc'])} |",
        f"| ensemble (vote over {len(s['shared_weight_test_acc'])} weights) | "
        f"{pct(s['ensemble_test_acc'])} | {pct(p['ensemble_acc'])} |",
        f"| individually tuned weights (Adam, {s['tune_steps']} steps) | "
        f"{pct(s['tuned_test_acc'])} | {pct(p['tuned_acc'])} |",
        f"| connections | {s['connections']:,} | ~{p['connections']:,} |",
        f"| hidden nodes / inputs used | {s['hidden_nodes']} / {s['inputs_used']} | |",
    ]
    return "\n".join(lines) + "\n"


def run(cfg, workdir: str) -> dict:
    validate(cfg)
    wd = Workdir(workdir)
    load_checkpoint(wd, fingerprint(cfg))  # refuses a foreign checkpoint before touching files
    wd.write_json("config.json", cfg)
    t_start = time.time()
    ds = data.from_config(cfg.data)
    inp = cfg.input
    prep = lambda x: wann_search.prepare_inputs(  # noqa: E731
        x, int(inp.resolution), bool(inp.deskew), bool(inp.bias), data.MEAN, data.STD)
    x_tr, x_val, x_te = prep(ds.train_x), prep(ds.val_x), prep(ds.test_x)
    print(f"data: {ds.summary()}; inputs {x_tr.shape[1]} "
          f"({inp.resolution}x{inp.resolution}{', deskewed' if inp.deskew else ''}"
          f"{', +bias' if inp.bias else ''}); prepared in {time.time() - t_start:.1f}s", flush=True)

    pop, loglik, acc, evo_seconds = evolve(cfg, wd, x_tr, ds.train_y)
    fit = loglik if cfg.evolution.fitness == "loglik" else acc
    champion, index = choose_champion(cfg, pop, fit, x_val, ds.val_y)
    res = report(cfg, champion, x_tr, ds.train_y, x_val, ds.val_y, x_te, ds.test_y)
    tuned = res.pop("_tuned_params")
    wd.save_npz("champion.npz", dict(**champion, tuned_in=tuned["in"], tuned_hid=tuned["hid"]))

    summary = {
        "resolution": int(inp.resolution), "deskew": bool(inp.deskew),
        "population": int(cfg.evolution.population), "generations": int(cfg.evolution.generations),
        "fitness": cfg.evolution.fitness, "evolution_seconds": evo_seconds,
        "champion_index": index, "connections": wann_search.n_connections(champion),
        "hidden_nodes": wann_search.n_hidden_used(champion),
        "inputs_used": int((champion["in_conn"] == wann_search.ON).any(1).sum()),
        "activations": {
            name: int((champion["act"][:wann_search.n_hidden_used(champion)] == a).sum())
            for a, name in enumerate(wann_search.ACTIVATIONS)},
        "tune_steps": int(cfg.tune.steps), **res, "published": PUBLISHED,
        "invocation_seconds": time.time() - t_start,  # this call only, not resumed ones
    }
    wd.write_json("summary.json", summary)
    md = _markdown(summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write(md)
    print(md)

    with open(wd.file("metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    side = int(inp.resolution)
    for name, fig in (
            ("topology.png", plots.topology(champion, side)),
            ("accuracy_vs_weight.png", plots.accuracy_vs_weight(
                res["weight_grid"], res["val_acc_grid"], res["test_acc_grid"],
                cfg.evolution.shared_weights, float(res["best_weight"]),
                res["ensemble_test_acc"], res["random_weight_test_acc_mean"])),
            ("generations.png", plots.over_generations(rows))):
        print("figure:", wd.save_figure(fig, name))
        plots.plt.close(fig)
    return summary
