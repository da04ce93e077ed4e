"""Neural golf by brute force: prune an exported model weight by weight on validation.

    python launch.py --experiment=zoo                       # or a golf model; gives WORKDIR/*.npz
    python launch.py --experiment=golf_prune --config.model_file=runs/zoo/zoo_cnn_small.npz
    python launch.py --experiment=golf_prune --config.model_file=runs/zoo/zoo_cnn_small.npz \\
        --config.threshold=0.99 --workdir=runs/golf_prune_99
    python launch.py --experiment=golf_prune --quick        # no input needed: trains a tiny model

Loads ``model_file`` (``export.export_model`` format), then repeatedly scores
zeroing every remaining parameter (weights, biases, PReLU slopes: the golf
count) on the 10,000 validation images and removes the cheapest ones while
validation accuracy stays >= ``threshold + margin``, with masked fine-tuning
(``finetune``, ``finetune_every``) between passes; see
``subspace_jax/pruning/brute_force.py`` for the schedule, the margin (0.4%,
about 3 binomial standard errors at 98%) and the cost. For comparison,
magnitude and OBD pruning (Gauss-Newton Hessian diagonal on ``obd_examples``
training images) follow the same schedule of kept counts, with and without
the same fine-tuning. Only the final networks (start, brute force, each
comparison arm at the last count) are scored on the test set, once, at the
end; every choice before that uses validation.

Cost (this project's 2-core CPU, shared with other jobs, load average ~5,
2026-11-22): one brute-force pass over golf_prelu (820 params, all 10,000
validation images) takes 12-15 s once compiled (19 s for the first); a
fine-tuning epoch of such a model on 50,000 images about 20 s. A default run
therefore costs roughly (passes) x 35 s; with a few removals per pass near
the threshold, a guess is 1-2 hours for a golf model, more for the 3,369-param
zoo_cnn_small. Nothing here has been run to the end yet: there are no
measured results. Expected, not measured: brute force keeps fewer parameters
than magnitude or OBD at the same validation accuracy (it optimises that
accuracy directly), and its test accuracy is below its validation accuracy
by some tenths of a percent (selection on validation), which the margin is
meant to absorb.

The quick form (``model_file`` empty, ``bootstrap.model`` set) first trains
golf_relu for 3 epochs on 1,000 training images, exports it to
WORKDIR/start.npz and prunes it against a low threshold (70%, no margin) on
1,000 validation images for 2 passes, with 2 comparison levels: it checks
the plumbing only (33 s wall on the loaded 2-core machine, mostly compiling).

Writes: config.json, metrics.jsonl (one line per brute-force pass and per
comparison level), state.npz + state.json (the brute-force state after each
pass; a re-run resumes from it), runs/compare.json + runs/compare.npz (the
comparison, skipped on re-run unless the path changed), pruned.npz (the pruned network; its
description holds the non-zero count), summary.json, summary.md and
val_acc_vs_nonzero.png.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import export, models, plots, sweep, train
from subspace_jax.pruning import brute_force as bf
from subspace_jax.pruning import masks
from subspace_jax.pruning import procedures as P
from subspace_jax.errors import ConfigError

METHODS = ("magnitude", "obd")


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.model_file = ""            # an exported .npz, e.g. runs/zoo/zoo_cnn_small.npz
    # Used only when model_file is empty: train this registered model first (epochs=0:
    # export its random init), write it to WORKDIR/start.npz and prune that.
    cfg.bootstrap = ml_collections.ConfigDict(dict(model="", epochs=1, learning_rate=3e-3,
                                                   seed=0))
    cfg.threshold = 0.98           # validation accuracy kept is threshold + margin
    cfg.margin = bf.MARGIN
    cfg.prunable = ()              # leaf names (e.g. ('w',)); () = every parameter
    cfg.candidate_chunk = 64       # candidates per compiled call (memory ~ this x eval_chunk)
    cfg.eval_chunk = 100           # validation images per step
    cfg.max_fraction = 0.1
    cfg.slack_use = 0.5
    cfg.max_remove = 64
    cfg.max_passes = 1000
    cfg.finetune_every = 1         # 0 = no fine-tuning (the comparison then has none either)
    cfg.finetune = C.train_config(epochs=1, learning_rate=3e-4)
    cfg.finetune_seed = 0
    cfg.compare = ml_collections.ConfigDict(dict(
        methods=METHODS, points=12,  # comparison at <= points counts of the brute-force path
        obd_hessian="gauss_newton", obd_examples=1000, obd_chunk=16))
    cfg.data = C.data_config()
    if quick:
        cfg.bootstrap.model = "golf_relu"
        cfg.bootstrap.epochs = 3      # ~84% validation accuracy on 1,000 MNIST images
        cfg.bootstrap.learning_rate = 1e-2
        cfg.threshold = 0.7
        cfg.margin = 0.0
        cfg.max_passes = 2
        cfg.compare.points = 2
        cfg.compare.obd_examples = 128
        cfg.data.train_size = 1000
        cfg.data.val_size = 1000
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    if not 0.0 < cfg.threshold < 1.0:
        raise ConfigError(f"config.threshold={cfg.threshold} must be in (0, 1).")
    if cfg.margin < 0 or cfg.threshold + cfg.margin > 1.0:
        raise ConfigError(f"config.margin={cfg.margin} must be >= 0 with threshold + margin <= 1.")
    unknown = set(cfg.compare.methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"config.compare.methods: unknown {sorted(unknown)}; valid: "
                          f"{', '.join(METHODS)}")
    if not cfg.model_file and not cfg.bootstrap.model:
        raise ConfigError("config.model_file is empty: give an exported model, e.g. "
                          "--config.model_file=runs/zoo/zoo_cnn_small.npz (from --experiment=zoo), "
                          "or set config.bootstrap.model to train one first (as --quick does).")
    if cfg.model_file and not os.path.isfile(cfg.model_file):
        raise ConfigError(f"config.model_file={cfg.model_file!r}: no such file (an .npz written "
                          "by export.export_model, e.g. WORKDIR/zoo_cnn_small.npz of the zoo "
                          "experiment).")


def settings(cfg) -> bf.Settings:
    return bf.Settings(threshold=float(cfg.threshold), margin=float(cfg.margin),
                       candidate_chunk=int(cfg.candidate_chunk), eval_chunk=int(cfg.eval_chunk),
                       max_fraction=float(cfg.max_fraction), slack_use=float(cfg.slack_use),
                       max_remove=int(cfg.max_remove), max_passes=int(cfg.max_passes),
                       finetune_every=int(cfg.finetune_every))


# ---------------------------------------------------------------- the start model
def _load(path: str):
    try:
        return export.load_model(path)
    except Exception as e:  # any unreadable file gets the same clear message
        raise ValueError(f"config.model_file={path!r} is not a model exported by "
                         f"export.export_model: {e!r}") from e


def start_model(cfg, wd, dat: train.Data):
    """(path, Model, params): ``model_file``, or the bootstrap model trained and exported."""
    if cfg.model_file:
        return (cfg.model_file, *_load(cfg.model_file))
    path = wd.file("start.npz")
    if not os.path.exists(path):
        model = models.get(cfg.bootstrap.model)
        key = jax.random.key(int(cfg.bootstrap.seed))
        if int(cfg.bootstrap.epochs) > 0:
            tcfg = C.train_config(epochs=int(cfg.bootstrap.epochs),
                                  learning_rate=float(cfg.bootstrap.learning_rate))
            run = train.make_run(model, tcfg, C.subspace_config(0), int(dat.train_x.shape[0]))
            res = jax.jit(run)(key, train.default_hp(tcfg), dat)
            params = P.flat_model(model)[0](res.params)
            how = (f"trained {model.name} for {tcfg.epochs} epoch(s), val acc "
                   f"{100 * float(res.final['val_acc']):.2f}%")
        else:  # random init, e.g. for a test that must not pay for compiling a training
            params, how = jax.jit(model.init)(key), f"{model.name} at its random init"
        export.export_model(path, model, params)
        print(f"bootstrap: {how} -> {path}", flush=True)
    return (path, *_load(path))


# ---------------------------------------------------------------- resumable state
def _run_key(cfg, model_path: str) -> str:
    """Everything that changes the brute-force path (not chunk sizes or max_passes)."""
    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    fields = {k: cfg[k] for k in ("threshold", "margin", "prunable", "max_fraction", "slack_use",
                                  "max_remove", "finetune_every", "finetune_seed")}
    fields.update(model=digest, finetune=cfg.finetune.to_dict(), data=cfg.data.to_dict())
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _save_state(wd, key: str, p: bf.Pruned) -> None:
    tmp = wd.file("state.tmp.npz")
    np.savez(tmp, theta_D=p.theta_D, mask_D=p.mask_D)
    os.replace(tmp, wd.file("state.npz"))
    wd.write_json("state.json", {"key": key, "stop": p.stop, "history": p.history})


def _load_state(wd, key: str) -> bf.Pruned | None:
    if not os.path.exists(wd.file("state.json")):
        return None
    meta = wd.read_json("state.json")
    if meta["key"] != key:
        raise ValueError(f"{wd.path} holds a brute-force run of another model or config; "
                         "use a fresh --workdir (or delete state.json and state.npz).")
    with np.load(wd.file("state.npz")) as f:
        theta_D, mask_D = f["theta_D"], f["mask_D"]
    return bf.Pruned(None, None, theta_D, mask_D, meta["history"], meta["stop"])


# ---------------------------------------------------------------- comparison
def compare_counts(history: list, points: int) -> list[int]:
    """At most ``points`` kept counts of the path (evenly spaced passes, the last always in)."""
    path = history[1:]
    if not path or points < 1:
        return []
    picks = np.unique(np.round(np.linspace(len(path) - 1, 0, min(points, len(path)))).astype(int))
    return sorted({path[i]["prunable_kept"] for i in picks}, reverse=True)


def run_compare(cfg, wd, model, params, ev, history, finetune, dat):
    """``{arm: rows}`` and ``{arm: (theta_D, mask_D)}`` at the path's counts (resumable)."""
    counts = compare_counts(history, int(cfg.compare.points))
    if os.path.exists(wd.file("runs/compare.json")):
        done = wd.read_json("runs/compare.json")
        if done["counts"] == counts:  # else the path grew (a larger max_passes): redo
            with np.load(wd.file("runs/compare.npz")) as f:
                finals = {a: (f[a + ".theta"], f[a + ".mask"]) for a in done["arms"]}
            return done["arms"], finals
    theta0 = np.asarray(ravel_pytree(params)[0], np.float32)
    mask0 = bf.start_mask(theta0, ev.lay)  # the brute-force path's start
    scores = {"magnitude": bf.magnitude_score}
    if "obd" in cfg.compare.methods:
        n = min(int(cfg.compare.obd_examples), int(dat.train_x.shape[0]))
        scores["obd"] = bf.make_obd_score(model.apply, params, dat.train_x[:n], dat.train_y[:n],
                                          cfg.compare.obd_hessian, int(cfg.compare.obd_chunk))
    rows, finals, seconds = {}, {}, {}
    for method in cfg.compare.methods:
        for tuned in ((False, True) if finetune is not None else (False,)):
            arm = method + ("+finetune" if tuned else "")
            print(f"compare {arm}: {len(counts)} levels", flush=True)
            t0 = time.time()
            rows[arm], theta, mask = bf.prune_along(scores[method], ev, theta0, mask0, counts,
                                                    finetune if tuned else None, log=bf.print_line)
            seconds[arm] = time.time() - t0
            finals[arm] = (theta, mask)
            wd.append_metrics({"method": arm, **r} for r in rows[arm])
    arrays = {f"{a}.{k}": v for a, (th, m) in finals.items() for k, v in (("theta", th), ("mask", m))}
    tmp = wd.file("runs/compare.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, wd.file("runs/compare.npz"))
    wd.write_json("runs/compare.json", {"counts": counts, "arms": rows, "seconds": seconds})
    return rows, finals


# ---------------------------------------------------------------- outputs
def figure(path_rows, arms: dict, cfg, title: str):
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = [r["nonzero"] for r in path_rows]
    ax.plot(x, [100 * r["val_acc"] for r in path_rows], "o-", ms=3, label="brute force", color="k")
    for i, (arm, rows) in enumerate(arms.items()):
        pts = [path_rows[0]] + rows
        ax.plot([r["nonzero"] for r in pts], [100 * r["val_acc"] for r in pts],
                "s--" if "+finetune" in arm else "^:", ms=4, color=plots.plt.cm.tab10(i),
                label=arm)
    ax.axhline(100 * cfg.threshold, color="r", lw=1, label=f"threshold {100 * cfg.threshold:g}%")
    if cfg.margin:
        ax.axhline(100 * (cfg.threshold + cfg.margin), color="r", ls=":", lw=1,
                   label="threshold + margin")
    ax.invert_xaxis()  # pruning goes to the right
    ax.set_xlabel("non-zero parameters")
    ax.set_ylabel("validation accuracy (%)")
    every = path_rows + [r for rows in arms.values() for r in rows]
    ax.set_ylim(max(min([100 * cfg.threshold - 2] + [100 * r["val_acc"] for r in every]) - 1, 0),
                100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def write_summary(cfg, wd, model_path, model, params, pruned, arms, finals, dat, seconds):
    """Scores the final networks once on the test split; writes the tables and the figure."""
    theta0 = np.asarray(ravel_pytree(params)[0], np.float32)
    test = bf.make_evaluator(model.apply, params, dat.test_x, dat.test_y, int(cfg.eval_chunk))
    nets = {"start": (theta0, pruned.history[0]),
            "brute_force": (pruned.theta_D, pruned.history[-1])}
    nets.update({arm: (finals[arm][0], rows[-1]) for arm, rows in arms.items() if rows})
    final = {}
    for name, (theta_D, row) in nets.items():
        correct, test_loss = test.one(theta_D, np.ones_like(theta0))  # zeros are in theta_D
        final[name] = {"nonzero": int(np.count_nonzero(theta_D)), "val_acc": row["val_acc"],
                       "val_loss": row["val_loss"], "test_acc": correct / test.n,
                       "test_loss": test_loss}
    desc = export.export_model(wd.file("pruned.npz"), model, pruned.params)
    assert desc["nonzero_params"] == pruned.history[-1]["nonzero"]
    flops = masks.flops_per_weight(model, tuple(dat.val_x.shape[1:]))
    layers = masks.report(jnp.asarray(pruned.theta_D != 0), test.lay, flops)  # non-zero per leaf
    path_rows = [{k: h[k] for k in ("pass", "nonzero", "prunable_kept", "val_acc", "val_loss")}
                 for h in pruned.history]
    summary = {"model_file": model_path, "model": model.name,
               "dense_params": int(theta0.size), "threshold": cfg.threshold,
               "margin": cfg.margin, "required_val_correct": bf.required_correct(
                   cfg.threshold + cfg.margin, int(dat.val_y.shape[0])),
               "val_size": int(dat.val_y.shape[0]), "stop": pruned.stop,
               "passes": len(pruned.history) - 1, "brute_force": path_rows,
               "compare": arms, "final": final, "exported": {"file": "pruned.npz",
                                                             "nonzero_params": desc["nonzero_params"]},
               "layers": layers["layers"],
               "brute_force_seconds": sum(h.get("seconds", 0.0) for h in pruned.history),
               "seconds_this_invocation": seconds}
    wd.write_json("summary.json", summary)

    kept_line = (f"Kept validation accuracy >= {100 * (cfg.threshold + cfg.margin):.2f}% "
                 f"(threshold {100 * cfg.threshold:g}% + margin {100 * cfg.margin:g}%) on "
                 f"{summary['val_size']:,} images; brute force stopped after "
                 f"{summary['passes']} passes ({pruned.stop}). Test scored once, on these "
                 "final networks:")
    lines = [f"# golf_prune: {model.name} ({theta0.size:,} params) from `{model_path}`", "",
             kept_line, "",
             "| network | non-zero params | val acc % | test acc % | test >= threshold |",
             "|---|---:|---:|---:|---|"]
    for name, r in final.items():
        ok = "yes" if r["test_acc"] >= cfg.threshold else "no"
        lines.append(f"| {name} | {r['nonzero']:,} | {100 * r['val_acc']:.2f} | "
                     f"{100 * r['test_acc']:.2f} | {ok} |")
    lines += ["", "Non-zero parameters per tensor of the brute-force network:", "", "```",
              masks.format_report(layers), "```"]
    if arms:
        names = list(arms)
        by_count = {h["prunable_kept"]: h for h in pruned.history}
        lines += ["", ("Validation accuracy % at the same number of kept prunable parameters "
                       "(non-zero params in brackets where they differ):"), "",
                  "| kept | brute force | " + " | ".join(names) + " |",
                  "|---:|---:|" + "---:|" * len(names)]
        for i, row in enumerate(arms[names[0]]):
            kept = row["prunable_kept"]
            cells = [f"{100 * by_count[kept]['val_acc']:.2f}" if kept in by_count else "-"]
            for arm in names:
                r = arms[arm][i]
                extra = f" [{r['nonzero']:,}]" if r["nonzero"] != kept else ""
                cells.append(f"{100 * r['val_acc']:.2f}{extra}")
            lines.append(f"| {kept:,} | " + " | ".join(cells) + " |")
    with open(wd.file("summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    fig = figure(path_rows, arms, cfg, f"{model.name}: validation accuracy while pruning")
    print("figure:", wd.save_figure(fig, "val_acc_vs_nonzero.png"), flush=True)
    return summary


# ---------------------------------------------------------------- run
def run(cfg, workdir: str) -> dict:
    validate(cfg)
    t0 = time.time()
    wd, _, dat = sweep.prepare(cfg, workdir)
    model_path, model, params = start_model(cfg, wd, dat)
    prunable = tuple(cfg.prunable) or None
    s = settings(cfg)
    finetune = (bf.make_finetune(model, cfg.finetune, dat, int(cfg.finetune_seed))
                if cfg.finetune_every else None)

    key = _run_key(cfg, model_path)
    resume = _load_state(wd, key)
    if resume is not None:
        print(f"resuming after pass {len(resume.history) - 1} "
              f"({'finished' if resume.stop else 'unfinished'})", flush=True)

    def on_pass(p: bf.Pruned) -> None:
        _save_state(wd, key, p)
        if p.stop is None:  # the final call repeats the last pass
            h = p.history[-1]
            wd.append_metrics([{"method": "brute_force", **h}])

    pruned = bf.prune(model.apply, params, dat.val_x, dat.val_y, settings=s, prunable=prunable,
                      finetune=finetune, resume=resume, on_pass=on_pass,
                      log=bf.print_line)
    ev = bf.make_evaluator(model.apply, params, dat.val_x, dat.val_y, s.eval_chunk,
                           s.candidate_chunk, prunable)
    arms, finals = run_compare(cfg, wd, model, params, ev, pruned.history, finetune, dat)
    return write_summary(cfg, wd, model_path, model, params, pruned, arms, finals, dat,
                         time.time() - t0)
