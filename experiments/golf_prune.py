"""Neural golf by brute force: prune a model weight by weight, choosing and deciding on validation.

    python launch.py --experiment=zoo                       # or a golf model; gives WORKDIR/*.npz
    python launch.py --experiment=golf_prune --config.model_file=runs/zoo/zoo_cnn_small.npz
    python launch.py --experiment=golf_prune --config.golf_workdir=runs/golf_ref_space_16ep \
        --config.golf_seed=3 --workdir=runs/golf_prune_seed3   # seed 3 of a golf final
    python launch.py --experiment=golf_prune --config.model_file=runs/zoo/zoo_cnn_small.npz \
        --config.threshold=0.99 --workdir=runs/golf_prune_99
    python launch.py --experiment=golf_prune --quick        # no input needed: trains a tiny model

The start model is ``model_file`` (``export.export_model`` format) or seed ``golf_seed`` of a
golf workdir's final runs (``golf_workdir``), exported to WORKDIR/golf_seed{K}.npz, which
``tools/check_model.py`` can score. Brute force (``subspace_jax/pruning/brute_force.py``: the
rule that the validation half that chooses never decides, the schedule, the 0.5% margin, the
cost) repeatedly removes the parameters (weights, biases, PReLU slopes: the golf count) whose
zeroing costs least on the choosing half while the deciding half stays >= ``threshold +
margin``, with masked fine-tuning (``finetune``, ``finetune_every``) between passes. Magnitude
and OBD pruning (``compare``; OBD's Gauss-Newton Hessian diagonal on ``obd_examples`` training
images) follow the same schedule of kept counts, with and without the same fine-tuning. Only
the final networks (start, brute force, each comparison arm at the last count) are scored on
the test set, once, at the end.

Cost (this 2-core CPU, shared): on the previous protocol (all 10,000 validation images) one
brute-force pass over golf_prelu (820 params) took 12-15 s once compiled, a fine-tuning epoch
on 50,000 images about 20 s, a golf seed (966 params, ~50 passes) 25-30 min; scoring on the
5,000-image choosing half does about half the scoring work. The quick form (golf_relu trained
3 epochs on 1,000 images, then 2 passes and 2 comparison levels against 70% with no margin on
500 + 500 validation images) checks the plumbing only: ~35 s, mostly compiling.

Expected: brute force keeps fewer parameters than magnitude or OBD at the same deciding
accuracy, with test accuracy within ~0.4% of the deciding one (not measured). Measured
(docs/results/golf_prune.md): every seed of the current golf final (966 params) starts below
98.5% on a validation half, so it stops before the first pass (``start_below_threshold``); a
98% claim needs a start with more headroom.

Writes: config.json, metrics.jsonl (per pass and comparison level), state.npz + state.json
(after each pass; a re-run resumes), runs/compare.json + .npz (skipped on re-run unless the
path changed), pruned.npz (its description holds the non-zero count), summary.json,
summary.md, val_acc_vs_nonzero.png.
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
from subspace_jax import data as data_lib
from subspace_jax import export, models, plots, sweep, train
from subspace_jax.pruning import brute_force as bf
from subspace_jax.pruning import masks
from subspace_jax.pruning import procedures as P
from subspace_jax.pruning import scorers
from subspace_jax.errors import ConfigError

METHODS = ("magnitude", "obd")  # the default comparison
# Any registered scorer that selects once per level (prune_along) may be compared.
COMPARABLE = tuple(n for n, s in scorers.REGISTRY.items() if s.rounds is None)
# Part of every run key: a state written under another protocol is never resumed.
PROTOCOL = "choose on the first validation half, decide on the second"


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.model_file = ""            # an exported .npz, e.g. runs/zoo/zoo_cnn_small.npz
    # Or a golf workdir's final seed (runs/final.json; see experiments/golf.py), exported
    # to WORKDIR/golf_seed{K}.npz first.
    cfg.golf_workdir = ""
    cfg.golf_seed = 0
    # Used only when model_file is empty: train this registered model first (epochs=0:
    # export its random init), write it to WORKDIR/start.npz and prune that.
    cfg.bootstrap = ml_collections.ConfigDict(dict(model="", epochs=1, learning_rate=3e-3,
                                                   seed=0))
    cfg.threshold = 0.98           # accuracy kept on both validation halves: threshold + margin
    cfg.margin = bf.MARGIN
    cfg.prunable = ()              # leaf names (e.g. ('w',)); () = every parameter
    cfg.candidate_chunk = 64       # candidates per compiled call (memory ~ this x eval_chunk)
    cfg.eval_chunk = 100           # validation images per step (should divide val_size // 2)
    cfg.max_fraction = 0.1
    cfg.slack_use = 0.5
    cfg.max_remove = 64
    cfg.max_passes = 1000
    cfg.finetune_every = 1         # 0 = no fine-tuning (the comparison then has none either)
    cfg.finetune = C.train_config(epochs=1, learning_rate=3e-4)
    cfg.finetune_seed = 0
    cfg.compare = ml_collections.ConfigDict(dict(
        methods=METHODS, points=12,  # comparison at <= points counts of the brute-force path
        obd_hessian="gauss_newton", obd_examples=1000, obd_chunk=16))  # examples: every
    # data scorer's (OBD's, SNIP's, ...) first training images
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
    checks.mnist_only(cfg, "golf_prune")
    if not 0.0 < cfg.threshold < 1.0:
        raise ConfigError(f"config.threshold={cfg.threshold} must be in (0, 1).")
    if cfg.margin < 0 or cfg.threshold + cfg.margin > 1.0:
        raise ConfigError(f"config.margin={cfg.margin} must be >= 0 with threshold + margin <= 1.")
    unknown = set(cfg.compare.methods) - set(COMPARABLE)
    if unknown:
        raise ConfigError(f"config.compare.methods: unknown {sorted(unknown)}; valid: "
                         f"{', '.join(COMPARABLE)}")
    if cfg.model_file and cfg.golf_workdir:
        raise ConfigError(f"config.model_file={cfg.model_file!r} and config.golf_workdir="
                         f"{cfg.golf_workdir!r}: give one start model, not both.")
    if not cfg.model_file and not cfg.golf_workdir and not cfg.bootstrap.model:
        raise ConfigError("config.model_file is empty: give an exported model, e.g. "
                         "--config.model_file=runs/zoo/zoo_cnn_small.npz (from --experiment=zoo), "
                         "or a golf final seed (--config.golf_workdir=DIR --config.golf_seed=K), "
                         "or set config.bootstrap.model to train one first (as --quick does).")
    if cfg.model_file and not os.path.isfile(cfg.model_file):
        raise ConfigError(f"config.model_file={cfg.model_file!r}: no such file (an .npz written "
                         "by export.export_model, e.g. WORKDIR/zoo_cnn_small.npz of the zoo "
                         "experiment).")
    if cfg.golf_workdir:
        golf_seed_record(cfg)  # raises on a missing file or an unusable seed


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def golf_seed_record(cfg) -> tuple[dict, dict]:
    """(golf config.json, the ``golf_seed`` record of its runs/final.json)."""
    paths = [os.path.join(cfg.golf_workdir, n) for n in ("config.json", "runs/final.json")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"config.golf_workdir={cfg.golf_workdir!r}: no {missing[0]} (a workdir "
                         "of --experiment=golf whose final runs finished).")
    golf_cfg, final = (_read_json(p) for p in paths)
    seeds = {r["seed"]: r for r in final["records"]}
    rec = seeds.get(cfg.golf_seed)
    if rec is None or rec["status"] != "ok":
        ok = sorted(k for k, r in seeds.items() if r["status"] == "ok")
        raise ConfigError(f"config.golf_seed={cfg.golf_seed}: "
                         f"{'diverged' if rec else 'not a final seed'} in {paths[1]}; "
                         f"valid: {', '.join(map(str, ok))}.")
    return golf_cfg, {**rec, "model": final["model"], "params": final["params"],
                      "trial": final["trial"]}


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


def export_golf_seed(cfg, wd) -> str:
    """WORKDIR/golf_seed{K}.npz from the golf final's kept flat params of that seed."""
    from experiments import golf  # optuna is imported only when a golf seed is pruned
    golf_cfg, rec = golf_seed_record(cfg)
    model = golf.build_model(ml_collections.ConfigDict(golf_cfg), rec["params"])
    if model.name != rec["model"]:
        raise ValueError(f"config.golf_workdir={cfg.golf_workdir!r}: its config.json builds "
                         f"{model.name}, its runs/final.json trained {rec['model']}.")
    path = wd.file(f"golf_seed{int(cfg.golf_seed)}.npz")
    # Batch norm folds on the golf run's own training images (its data config).
    train_x = (data_lib.from_config(ml_collections.ConfigDict(golf_cfg["data"])).train_x
               if models.has_bn(model.arch) else None)
    model, params = golf.exported(model, rec["theta"], train_x)
    desc = export.export_model(path, model, params)
    print(f"golf seed {cfg.golf_seed} of trial {rec['trial']} ({model.name}, "
          f"{desc['nonzero_params']:,} non-zero, val acc {100 * rec['val_acc']:.2f}% as trained) "
          f"-> {path}", flush=True)
    return path


def start_model(cfg, wd, dat: train.Data):
    """(path, Model, params): ``model_file``, a golf seed, or the bootstrap model trained
    and exported."""
    if cfg.model_file:
        return (cfg.model_file, *_load(cfg.model_file))
    if cfg.golf_workdir:
        path = export_golf_seed(cfg, wd)
        return (path, *_load(path))
    path = wd.file("start.npz")
    if not os.path.exists(path):
        model = models.get(cfg.bootstrap.model)
        key = jax.random.key(int(cfg.bootstrap.seed))
        if int(cfg.bootstrap.epochs) > 0:
            tcfg = C.train_config(epochs=int(cfg.bootstrap.epochs),
                                  learning_rate=float(cfg.bootstrap.learning_rate))
            run = train.make_run(model, tcfg, C.subspace_config(0), int(dat.train_x.shape[0]))
            res = jax.jit(run)(key, train.default_hp(tcfg), dat)
            params = models.flat(model).unravel(res.params)
            how = (f"trained {model.name} for {tcfg.epochs} epoch(s), val acc "
                   f"{100 * float(res.final['val_acc']):.2f}%")
        else:  # random init, e.g. for a test that must not pay for compiling a training
            params, how = jax.jit(model.init)(key), f"{model.name} at its random init"
        export.export_model(path, model, params)
        print(f"bootstrap: {how} -> {path}", flush=True)
    return (path, *_load(path))


# ---------------------------------------------------------------- resumable state
def _model_digest(path: str) -> str:
    """sha256 of an exported model's description and arrays (not of the file's bytes,
    which hold zip timestamps: a re-exported golf seed must resume)."""
    desc, arrays = export.load(path)
    h = hashlib.sha256(json.dumps(desc, sort_keys=True).encode())
    for name in sorted(arrays):
        h.update(name.encode() + np.ascontiguousarray(arrays[name], np.float32).tobytes())
    return h.hexdigest()


def _run_key(cfg, model_path: str) -> str:
    """Everything that changes the brute-force path (not chunk sizes or max_passes)."""
    fields = {k: cfg[k] for k in ("threshold", "margin", "prunable", "max_fraction", "slack_use",
                                  "max_remove", "finetune_every", "finetune_seed")}
    fields.update(model=_model_digest(model_path), finetune=cfg.finetune.to_dict(),
                  data=cfg.data.to_dict(), protocol=PROTOCOL)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _save_state(wd, key: str, p: bf.Pruned) -> None:
    wd.save_npz("state.npz", {"theta_D": p.theta_D, "mask_D": p.mask_D})
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


def run_compare(cfg, wd, model, params, hv, history, finetune, dat):
    """``{arm: rows}`` and ``{arm: (theta_D, mask_D)}`` at the path's counts (resumable)."""
    counts = compare_counts(history, int(cfg.compare.points))
    if os.path.exists(wd.file("runs/compare.json")):
        done = wd.read_json("runs/compare.json")
        if done["counts"] == counts:  # else the path grew (a larger max_passes): redo
            with np.load(wd.file("runs/compare.npz")) as f:
                finals = {a: (f[a + ".theta"], f[a + ".mask"]) for a in done["arms"]}
            return done["arms"], finals
    theta0 = np.asarray(ravel_pytree(params)[0], np.float32)
    mask0 = bf.start_mask(theta0, hv.lay)  # the brute-force path's start
    n = min(int(cfg.compare.obd_examples), int(dat.train_x.shape[0]))
    pcfg = P.prune_config(obd_hessian=cfg.compare.obd_hessian,
                          hessian_chunk=int(cfg.compare.obd_chunk))
    scores = {m: bf.make_score(m, model.apply, params, dat.train_x[:n], dat.train_y[:n], pcfg)
              for m in cfg.compare.methods}
    rows, finals, seconds = {}, {}, {}
    for method in cfg.compare.methods:
        for tuned in ((False, True) if finetune is not None else (False,)):
            arm = method + ("+finetune" if tuned else "")
            print(f"compare {arm}: {len(counts)} levels", flush=True)
            t0 = time.time()
            rows[arm], theta, mask = bf.prune_along(scores[method], hv, theta0, mask0, counts,
                                                    finetune if tuned else None, log=bf.print_line)
            seconds[arm] = time.time() - t0
            finals[arm] = (theta, mask)
            wd.append_metrics({"method": arm, **r} for r in rows[arm])
    arrays = {f"{a}.{k}": v for a, (th, m) in finals.items() for k, v in (("theta", th), ("mask", m))}
    wd.save_npz("runs/compare.npz", arrays)
    wd.write_json("runs/compare.json", {"counts": counts, "arms": rows, "seconds": seconds})
    return rows, finals


# ---------------------------------------------------------------- outputs
def figure(path_rows, arms: dict, cfg, title: str):
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = [r["nonzero"] for r in path_rows]
    ax.plot(x, [100 * r["decide_acc"] for r in path_rows], "o-", ms=3, color="k",
            label="brute force (deciding half)")
    ax.plot(x, [100 * r["val_acc"] for r in path_rows], "-", lw=1, color="0.6",
            label="brute force (choosing half)")
    for i, (arm, rows) in enumerate(arms.items()):
        pts = [path_rows[0]] + rows
        ax.plot([r["nonzero"] for r in pts], [100 * r["decide_acc"] for r in pts],
                "s--" if "+finetune" in arm else "^:", ms=4, color=plots.plt.cm.tab10(i),
                label=arm)
    ax.axhline(100 * cfg.threshold, color="r", lw=1, label=f"threshold {100 * cfg.threshold:g}%")
    if cfg.margin:
        ax.axhline(100 * (cfg.threshold + cfg.margin), color="r", ls=":", lw=1,
                   label="threshold + margin")
    ax.invert_xaxis()  # pruning goes to the right
    ax.set_xlabel("non-zero parameters")
    ax.set_ylabel("validation accuracy (%), deciding half")
    every = [100 * r[k] for r in path_rows + [r for rows in arms.values() for r in rows]
             for k in ("val_acc", "decide_acc")]
    ax.set_ylim(max(min([100 * cfg.threshold - 2] + every) - 1, 0), 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


ACC = ("val_acc", "val_loss", "decide_acc", "decide_loss")  # per network: choosing, deciding


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
        final[name] = {"nonzero": int(np.count_nonzero(theta_D)), **{k: row[k] for k in ACC},
                       "test_acc": correct / test.n, "test_loss": test_loss}
    desc = export.export_model(wd.file("pruned.npz"), model, pruned.params)
    assert desc["nonzero_params"] == pruned.history[-1]["nonzero"]
    flops = masks.flops_per_weight(model, tuple(dat.val_x.shape[1:]))
    layers = masks.report(jnp.asarray(pruned.theta_D != 0), test.lay, flops)  # non-zero per leaf
    path_rows = [{k: h[k] for k in ("pass", "nonzero", "prunable_kept") + ACC}
                 for h in pruned.history]
    n_val = int(dat.val_y.shape[0])
    n_sel = train.split_validation(n_val)
    bar = cfg.threshold + cfg.margin
    summary = {"model_file": model_path, "model": model.name,
               "golf_source": ({"workdir": cfg.golf_workdir, "seed": int(cfg.golf_seed)}
                               if cfg.golf_workdir else None),
               "protocol": PROTOCOL, "dense_params": int(theta0.size),
               "threshold": cfg.threshold, "margin": cfg.margin,
               "val_size": n_val, "choose_size": n_sel, "decide_size": n_val - n_sel,
               "required_val_correct": bf.required_correct(bar, n_sel),
               "required_decide_correct": bf.required_correct(bar, n_val - n_sel),
               "stop": pruned.stop, "passes": len(pruned.history) - 1,
               "brute_force": path_rows, "compare": arms, "final": final,
               "exported": {"file": "pruned.npz", "nonzero_params": desc["nonzero_params"]},
               "layers": layers["layers"],
               "brute_force_seconds": sum(h.get("seconds", 0.0) for h in pruned.history),
               "seconds_this_invocation": seconds}
    wd.write_json("summary.json", summary)

    kept_line = (f"Kept accuracy >= {100 * bar:.2f}% (threshold {100 * cfg.threshold:g}% + "
                 f"margin {100 * cfg.margin:g}%) on both validation halves: the first "
                 f"{n_sel:,} images chose every removal, the other {n_val - n_sel:,} decided "
                 f"it. Brute force stopped after {summary['passes']} passes ({pruned.stop}). "
                 "Test scored once, on these final networks:")
    lines = [f"# golf_prune: {model.name} ({theta0.size:,} params) from `{model_path}`", "",
             kept_line, "",
             "| network | non-zero params | val acc % (chooses) | val acc % (decides) | "
             "test acc % | test >= threshold |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in final.items():
        ok = "yes" if r["test_acc"] >= cfg.threshold else "no"
        lines.append(f"| {name} | {r['nonzero']:,} | {100 * r['val_acc']:.2f} | "
                     f"{100 * r['decide_acc']:.2f} | {100 * r['test_acc']:.2f} | {ok} |")
    lines += ["", "Non-zero parameters per tensor of the brute-force network:", "", "```",
              masks.format_report(layers), "```"]
    if arms:
        names = list(arms)
        both = lambda r: f"{100 * r['val_acc']:.2f} / {100 * r['decide_acc']:.2f}"
        by_count = {h["prunable_kept"]: h for h in pruned.history}
        lines += ["", ("Validation accuracy % (choosing half / deciding half) at the same "
                       "number of kept prunable parameters (non-zero params in brackets where "
                       "they differ):"), "",
                  "| kept | brute force | " + " | ".join(names) + " |",
                  "|---:|---:|" + "---:|" * len(names)]
        for i, row in enumerate(arms[names[0]]):
            kept = row["prunable_kept"]
            cells = [both(by_count[kept]) if kept in by_count else "-"]
            for arm in names:
                r = arms[arm][i]
                extra = f" [{r['nonzero']:,}]" if r["nonzero"] != kept else ""
                cells.append(both(r) + extra)
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
    hv = bf.make_halves(model.apply, params, dat.val_x, dat.val_y, s.eval_chunk,
                        s.candidate_chunk, prunable)
    arms, finals = run_compare(cfg, wd, model, params, hv, pruned.history, finetune, dat)
    return write_summary(cfg, wd, model_path, model, params, pruned, arms, finals, dat,
                         time.time() - t0)
