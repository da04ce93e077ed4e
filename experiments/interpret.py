"""Look inside one exported MNIST model, as the 575-parameter neural-golf write-up did.

    python launch.py --experiment=interpret --config.model_file=runs/zoo/zoo_cnn_small.npz
    python launch.py --experiment=interpret     # default model_file: runs/zoo/zoo_cnn_small.npz
    python launch.py --experiment=interpret --quick   # no input: trains a tiny golf_prelu first

Timings, measured 2026-11-22 on this project's 2-core CPU machine shared with
other jobs (load average about 4, run under ``nice -n 19``): the default
config on ``zoo_cnn_small.npz`` from ``--experiment=zoo --quick`` (3,369
params, 2 conv layers) 16 s wall; ``--quick`` (trains golf_prelu, 820 params,
200 steps, to about 90% validation accuracy, then 3 conv layers) 25-40 s wall.
Almost all of it is XLA compilation: one program per visualised layer.

``model_file`` is any file written by ``subspace_jax/export.py`` (format
``subspace-jax-mnist/1``; e.g. ``WORKDIR/zoo_cnn_small.npz`` from
``--experiment=zoo``). With ``model_file=''`` (the quick form) the model
``build.model`` is trained in-process for ``build.steps`` Adam steps on
``data.train_size`` training images and exported to ``WORKDIR/model.npz``
first. Only the validation split (the last ``data.val_size`` training
images) is looked at; the test split is never used here.

Writes into the workdir:
  * ``first_layer.png``: one validation digit per class (rows) and the first
    layer's channel maps (columns; conv: after activation, before pooling;
    each column on one colour scale).
  * ``class_feature_means.png``: per-class means of the final feature vector
    (the input of the last linear layer), class x feature, over the
    validation split; ``last_layer_weights.png``: that layer's weights,
    class x feature.
  * ``ascent_<layer>.png`` for every conv layer (one image per channel) and
    ``ascent_logits.png`` (one per class): feature visualisation by gradient
    ascent on the input (``subspace_jax/inspection.py``): maximise a channel's
    pre-activation at the centre position (or its spatial mean with
    ``ascent_where=mean``), or a logit, divided by its standard deviation
    over validation images, with L2 decay towards grey, random 1-pixel
    jitter (not for the first layer: a few-pixel filter), a Gaussian blur
    every few steps and a clip to the pixel range. Grey is neutral, white
    excites, black inhibits. Each grid is cropped to where some image left
    grey (the receptive field) and shares one contrast stretch.
  * ``config.json``, ``summary.json`` (figures, validation accuracy,
    per-class feature means and counts, ascent objective before/after and
    its validation standard deviation), ``summary.md``; with
    ``model_file=''`` also ``model.npz``.
"""

from __future__ import annotations

import math
import os
import time

import jax
import ml_collections
import numpy as np
import optax

from subspace_jax import checks
from subspace_jax import config as C
from subspace_jax import data, export, inspection, models, plots, train
from subspace_jax.workdir import Workdir
from subspace_jax.errors import ConfigError

DEFAULT_MODEL_FILE = os.path.join("runs", "zoo", "zoo_cnn_small.npz")


def get_config(quick: bool = False) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.model_file = DEFAULT_MODEL_FILE  # an exported .npz; '' = build one (see `build`)
    cfg.seed = 0                  # the ascent's start image
    cfg.ascent_steps = 256
    cfg.ascent_lr = 0.05          # Adam, pixel units (image in [0, 1])
    cfg.ascent_l2 = 30.0          # weight of mean((p - 0.5)^2) (pulls unused pixels to grey)
                                  # against the target in validation standard deviations
    cfg.ascent_scale_images = 1000  # validation images for those standard deviations (0 = all;
                                    # one batch: memory grows with it)
    cfg.ascent_blur = 1.0         # Gaussian blur sigma (pixels); 0 = none
    cfg.ascent_blur_every = 8     # blur after every this many steps (not after the last)
    cfg.ascent_jitter = 1         # random shift (pixels) of the image inside each step; 0 = none
    cfg.ascent_where = "centre"   # centre | mean: a channel's value at the centre position or
                                  # its spatial mean (for the first conv layer, linear in the
                                  # input, the mean is maximised by a flat image: uninformative)
    cfg.sample_digits = 10        # rows of first_layer.png: the first validation digit of classes 0..n-1
    cfg.feature_images = 0        # validation images for the class means (0 = all)
    cfg.eval_chunk = 1000         # images per vmapped forward pass (memory, not numerics)
    # Used only when model_file is '': train build.model for build.steps steps (0: random init).
    cfg.build = ml_collections.ConfigDict(
        {"model": "golf_prelu", "steps": 200, "learning_rate": 1e-2, "batch_size": 64, "seed": 0})
    cfg.data = C.data_config()
    if quick:
        cfg.model_file = ""
        cfg.ascent_steps = 32
        cfg.data.train_size = 2000
        cfg.data.val_size = 1000
    return cfg


def validate(cfg) -> None:
    checks.common(cfg)
    checks.mnist_only(cfg, "interpret")
    if cfg.ascent_where not in inspection.WHERES:
        raise ConfigError(f"config.ascent_where={cfg.ascent_where!r}; valid: "
                          f"{', '.join(inspection.WHERES)}.")
    if (cfg.ascent_steps < 1 or cfg.ascent_lr <= 0 or cfg.ascent_l2 < 0 or cfg.ascent_blur < 0
            or cfg.ascent_blur_every < 1 or cfg.ascent_jitter < 0):
        raise ConfigError("config.ascent_steps >= 1, ascent_lr > 0, ascent_l2 >= 0, "
                          "ascent_blur >= 0, ascent_blur_every >= 1 and ascent_jitter >= 0 "
                          f"are required; got {cfg.ascent_steps}, {cfg.ascent_lr}, "
                          f"{cfg.ascent_l2}, {cfg.ascent_blur}, {cfg.ascent_blur_every}, "
                          f"{cfg.ascent_jitter}.")
    if cfg.build.steps < 0 or cfg.build.batch_size < 1:
        raise ConfigError(f"config.build.steps={cfg.build.steps} must be >= 0 (0 = random init) "
                          f"and build.batch_size={cfg.build.batch_size} >= 1.")
    if (not 1 <= cfg.sample_digits <= 10 or cfg.feature_images < 0 or cfg.eval_chunk < 1
            or cfg.ascent_scale_images < 0):
        raise ConfigError(f"config.sample_digits={cfg.sample_digits} must be in [1, 10], "
                          f"feature_images={cfg.feature_images} >= 0, ascent_scale_images="
                          f"{cfg.ascent_scale_images} >= 0, eval_chunk={cfg.eval_chunk} >= 1.")


def ascent_settings(cfg) -> inspection.Ascent:
    return inspection.Ascent(steps=cfg.ascent_steps, lr=cfg.ascent_lr, l2=cfg.ascent_l2,
                             blur=cfg.ascent_blur, blur_every=cfg.ascent_blur_every,
                             jitter=cfg.ascent_jitter, where=cfg.ascent_where)


def load(model_file: str) -> tuple[models.Model, dict, dict]:
    """(model, params, description) of ``model_file``, or a ConfigError saying what is valid."""
    valid = ("valid: an .npz written by subspace_jax.export.export_model (format "
             f"{export.FORMAT}), e.g. WORKDIR/zoo_cnn_small.npz from "
             "`python launch.py --experiment=zoo`, or '' to train a tiny model first")
    if not os.path.isfile(model_file):
        raise ConfigError(f"config.model_file={model_file!r}: no such file; {valid}.")
    try:
        desc, _ = export.load(model_file)
        model, params = export.load_model(model_file)
        inspection.check_classifier(model.arch)
    except Exception as e:  # not an npz, no arch entry, unknown layer kind, ...
        raise ConfigError(f"config.model_file={model_file!r} is not a usable exported model "
                          f"({type(e).__name__}: {e}); {valid}.") from e
    return model, params, desc


def train_briefly(model: models.Model, key: jax.Array, x_NHWC, y_N, steps: int,
                  batch_size: int, learning_rate: float):
    """Params after ``steps`` Adam steps on random minibatches (one run, one scan)."""
    k_init, k_data = jax.random.split(key)
    opt = optax.adam(learning_rate)

    def step(carry, k):
        params, state = carry
        idx = jax.random.randint(k, (batch_size,), 0, y_N.shape[0])
        loss, g = jax.value_and_grad(
            lambda p: train.cross_entropy(model.apply(p, x_NHWC[idx]), y_N[idx]))(params)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), loss

    params = model.init(k_init)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(k_data, steps))
    return params, losses


def build_model(cfg, ds: data.Dataset, path: str) -> None:
    """Trains ``cfg.build.model`` briefly on the training split (``build.steps=0``:
    random init) and exports it to ``path``: the quick form's stand-in for a real
    exported model; nothing is selected."""
    b = cfg.build
    model = models.get(b.model)
    if b.steps:
        params, losses = jax.jit(train_briefly, static_argnums=(0, 4, 5))(
            model, jax.random.key(b.seed), ds.train_x, ds.train_y, b.steps, b.batch_size,
            b.learning_rate)
        how = f"{b.steps} Adam steps, last train loss {float(losses[-1]):.3f}"
    else:
        params, how = jax.jit(model.init)(jax.random.key(b.seed)), "random init"
    export.export_model(path, model, params)
    print(f"built {model.name}: {how} -> {path}", flush=True)


# ---------------------------------------------------------------- figures
def _off(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def first_layer_figure(x_RxHxWx1, y_R, maps_RxHxWxC, mean, std):
    plt = plots.plt
    rows, channels = len(y_R), maps_RxHxWxC.shape[-1]
    fig, axes = plt.subplots(rows, channels + 1, figsize=(1.1 * (channels + 1), 1.1 * rows + 0.4),
                             squeeze=False)
    # One scale per channel, robust to a few extreme pixels.
    lo, hi = (np.percentile(maps_RxHxWxC, q, axis=(0, 1, 2)) for q in (0.5, 99.5))
    for r in range(rows):
        axes[r, 0].imshow(np.clip(x_RxHxWx1[r, ..., 0] * std + mean, 0, 1), cmap="gray",
                          vmin=0, vmax=1)
        axes[r, 0].set_ylabel(f"class {y_R[r]}", fontsize=8)
        for c in range(channels):
            axes[r, c + 1].imshow(maps_RxHxWxC[r, ..., c], cmap="magma", vmin=lo[c], vmax=hi[c])
        for ax in axes[r]:
            _off(ax)
    axes[0, 0].set_title("input", fontsize=8)
    for c in range(channels):
        axes[0, c + 1].set_title(f"ch {c}", fontsize=8)
    fig.suptitle("first layer: channel outputs on validation digits (one colour scale per channel)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def heatmap_figure(m_KxF, title: str, label: str, diverging: bool, hwc=None):
    """Class x feature heatmap. With ``hwc`` (the features are a flattened
    H x W x C map, channel fastest) columns are regrouped channel by channel,
    each channel's positions in row-major order."""
    plt = plots.plt
    k, f = m_KxF.shape
    if hwc is not None:
        order = np.argsort(np.arange(f) % hwc[2], kind="stable")
        m_KxF = m_KxF[:, order]
    fig, ax = plt.subplots(figsize=(min(16, 1.5 + 0.28 * f), 0.9 + 0.3 * k))
    if diverging:
        v = float(np.nanmax(np.abs(m_KxF))) or 1.0
        im = ax.imshow(m_KxF, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto")
    else:
        im = ax.imshow(m_KxF, cmap="viridis", aspect="auto")
    ax.set_yticks(range(k))
    ax.set_ylabel("class")
    if hwc is not None:
        h, w, c = hwc
        ax.set_xticks([(i + 0.5) * h * w - 0.5 for i in range(c)], [f"ch {i}" for i in range(c)])
        for i in range(1, c):
            ax.axvline(i * h * w - 0.5, color="k", lw=1)
        ax.set_xlabel(f"feature (input of the last layer): {h}x{w} positions (row-major) "
                      "of each channel of the flattened map")
    else:
        ax.set_xlabel("feature (input of the last layer)")
        if f <= 40:
            ax.set_xticks(range(f))
            ax.tick_params(axis="x", labelsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label, fraction=0.03, pad=0.01)
    fig.tight_layout()
    return fig


def changed_box(p_UxHxWx1, tol: float = 0.02, pad: int = 1) -> tuple[slice, slice]:
    """Rows and columns (one box for all units) where some image is not grey:
    the part of the input the targets depend on (their receptive field)."""
    changed_HxW = (np.abs(p_UxHxWx1[..., 0] - 0.5) > tol).any(0)
    if not changed_HxW.any():
        return slice(None), slice(None)
    (r0, r1), (c0, c1) = [(int(i.min()), int(i.max())) for i in np.nonzero(changed_HxW)]
    h, w = changed_HxW.shape
    return (slice(max(r0 - pad, 0), min(r1 + pad + 1, h)),
            slice(max(c0 - pad, 0), min(c1 + pad + 1, w)))


def ascent_figure(p_UxHxWx1, start_U, end_U, scale_U, title: str, unit_name: str):
    plt = plots.plt
    units = len(p_UxHxWx1)
    rows_, cols_ = changed_box(p_UxHxWx1)
    h, w = p_UxHxWx1.shape[1:3]
    if (rows_.indices(h)[1] - rows_.indices(h)[0], cols_.indices(w)[1] - cols_.indices(w)[0]) \
            != (h, w):
        title += (f"\ncropped to rows {rows_.start}:{rows_.stop}, columns {cols_.start}:"
                  f"{cols_.stop} of {h}x{w} (elsewhere grey: outside the receptive field)")
    p_UxHxWx1 = p_UxHxWx1[:, rows_, cols_]
    # Grey stays grey; the contrast is stretched by one factor for the whole layer.
    half = max(float(np.abs(p_UxHxWx1 - 0.5).max()), 1e-3)
    title += f"\ndisplay: grey 0.5, black/white = 0.5 -/+ {half:.2f} (pixel range [0, 1])"
    cols = min(units, 10 if units == 10 else 8)
    rows = math.ceil(units / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.75 * rows + 0.8), squeeze=False)
    for u, ax in enumerate(axes.flat):
        _off(ax)
        if u >= units:
            ax.axis("off")
            continue
        ax.imshow(p_UxHxWx1[u, ..., 0], cmap="gray", vmin=0.5 - half, vmax=0.5 + half)
        gain = (end_U[u] - start_U[u]) / scale_U[u]
        ax.set_title(f"{unit_name} {u}\n{start_U[u]:.2f}→{end_U[u]:.2f} ({gain:+.1f}σ)",
                     fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- run
def run(cfg, workdir: str) -> dict:
    validate(cfg)
    if cfg.model_file:
        load(cfg.model_file)  # a bad file fails here, before any work
    t0 = time.time()
    wd = Workdir(workdir)
    wd.write_json("config.json", cfg)
    ds = data.from_config(cfg.data)
    print(f"data: {ds.summary()}  ({time.time() - t0:.1f}s)", flush=True)
    model_file = cfg.model_file
    if not model_file:
        model_file = wd.file("model.npz")
        build_model(cfg, ds, model_file)
        print(f"  ({time.time() - t0:.1f}s)", flush=True)
    model, params, desc = load(model_file)
    arch = model.arch
    mean, std = desc["input"]["mean"], desc["input"]["std"]
    figures: list[str] = []
    summary = {"model_file": os.path.abspath(model_file), "model": desc.get("name", ""),
               "dense_params": desc.get("dense_params"),
               "nonzero_params": desc.get("nonzero_params"), "figures": figures}

    # 1. First layer's channel maps on one validation digit per class.
    rows = [int(np.flatnonzero(ds.val_y == k)[0]) for k in range(cfg.sample_digits)
            if np.any(ds.val_y == k)]
    shapes = inspection.output_shapes(arch, params)
    if len(shapes[0]) == 3 and rows:
        x_R = ds.val_x[rows]
        maps = inspection.per_image(inspection.first_layer_maps, arch, params, x_R, cfg.eval_chunk)
        wd.save_figure(first_layer_figure(x_R, ds.val_y[rows], maps, mean, std), "first_layer.png")
        figures.append("first_layer.png")
        summary["first_layer_digits"] = {"val_index": rows, "label": ds.val_y[rows]}
    else:
        summary["first_layer_digits"] = "skipped: the first layer has no H x W x C output"

    # 2. Per-class means of the final features (validation split), last layer's weights.
    n_feat = cfg.feature_images or len(ds.val_y)
    cm = inspection.class_feature_means(arch, params, ds.val_x[:n_feat], ds.val_y[:n_feat],
                                        ds.num_classes, cfg.eval_chunk)
    means_KxF = cm["means_KxF"]
    last = inspection.check_classifier(arch)
    w_KxF = np.asarray(params[last["name"]]["w"]).T
    hwc = inspection.feature_map_shape(arch, params)
    wd.save_figure(heatmap_figure(
        means_KxF, f"mean final feature per class ({n_feat} validation images)", "mean activation",
        diverging=bool(np.nanmin(means_KxF) < 0), hwc=hwc), "class_feature_means.png")
    wd.save_figure(heatmap_figure(w_KxF, f"last layer ({last['name']}) weights", "weight",
                                  diverging=True, hwc=hwc), "last_layer_weights.png")
    figures += ["class_feature_means.png", "last_layer_weights.png"]
    print(f"first layer, class means: val acc {100 * cm['acc']:.2f}% "
          f"({time.time() - t0:.1f}s)", flush=True)
    summary.update(val_images=n_feat, val_acc=cm["acc"], feature_dim=int(means_KxF.shape[1]),
                   feature_map_hwc=hwc, class_counts=cm["counts_K"],
                   class_feature_means=means_KxF,
                   top_feature_per_class=[int(np.argmax(m)) if n else None
                                          for m, n in zip(means_KxF, cm["counts_K"])])

    # 3. Feature visualisation: every conv(-like) layer's channels, then the logits.
    targets = [(n, arch["layers"][n]["name"], "ch")
               for n in inspection.visualisable_layers(arch, params)]
    targets.append((len(arch["layers"]) - 1, "logits", "class"))
    asc = ascent_settings(cfg)
    key = jax.random.key(cfg.seed)
    x_scale = ds.val_x[:cfg.ascent_scale_images or len(ds.val_y)]
    summary["ascent"] = {}
    for n, name, unit_name in targets:
        t = time.time()
        # Targets in units of their spread on validation images (x_scale): ascent_l2 means
        # the same for a weak and a strong model, a small and a large activation. The
        # first layer is one linear filter: its optimum is the sign pattern of its
        # weights, which a shift of even one pixel would blur (its field is a few pixels).
        out = inspection.visualise_layer(arch, params, jax.random.fold_in(key, n), n,
                                         shapes[n][-1], asc._replace(jitter=0) if n == 0 else asc,
                                         mean, std, x_scale)
        scale_U = out["scale"]
        what = ("logit" if name == "logits" else f"{cfg.ascent_where} " + (
            "pre-activation" if arch["layers"][n]["kind"] == "conv" else "output"))
        fig = ascent_figure(out["image"], out["start"], out["end"], scale_U,
                            f"{name}: input maximising each {unit_name}'s {what} "
                            f"({cfg.ascent_steps} Adam steps)\nvalue at start→end (gain in "
                            f"standard deviations over {len(x_scale)} validation images)",
                            unit_name)
        wd.save_figure(fig, f"ascent_{name}.png")
        plots.plt.close("all")
        figures.append(f"ascent_{name}.png")
        summary["ascent"][name] = {"layer_index": n, "objective": what,
                                   "objective_start": out["start"], "objective_end": out["end"],
                                   "validation_sd": scale_U}
        print(f"ascent {name}: {len(out['image'])} units, {time.time() - t:.1f}s", flush=True)

    summary["seconds"] = round(time.time() - t0, 1)
    wd.write_json("summary.json", summary)
    with open(wd.file("summary.md"), "w") as f:
        f.write(summary_md(summary, cfg))
    print(f"interpret: {len(figures)} figures in {wd.path} ({summary['seconds']}s)", flush=True)
    return summary


def summary_md(s: dict, cfg) -> str:
    lines = [f"# interpret: {s['model'] or os.path.basename(s['model_file'])}", "",
             f"Model file `{s['model_file']}`: {s['dense_params']:,} parameters "
             f"({s['nonzero_params']:,} non-zero); validation accuracy "
             f"{100 * s['val_acc']:.2f}% on the {s['val_images']:,} validation images used for "
             f"the class means (final feature dimension {s['feature_dim']}). Feature with the "
             "largest class mean, per class: " + ", ".join(
                 f"{k}: {f}" for k, f in enumerate(s["top_feature_per_class"]) if f is not None)
             + " (feature indices in the flattened order).", "",
             (f"Feature visualisation: {cfg.ascent_steps} Adam steps (lr {cfg.ascent_lr}, "
              f"L2 {cfg.ascent_l2}, blur sigma {cfg.ascent_blur} every {cfg.ascent_blur_every} "
              f"steps, jitter {cfg.ascent_jitter} px except on the first layer, conv objective: "
              f"{cfg.ascent_where} pre-activation; the target is divided by its standard "
              "deviation over validation images)."), "",
             "| layer | units | objective | mean start | mean end | mean gain (validation sd) |",
             "|---|---:|---|---:|---:|---:|"]
    for name, a in s["ascent"].items():
        start, end, sd = (np.asarray(a[k], float) for k in
                          ("objective_start", "objective_end", "validation_sd"))
        lines.append(f"| {name} | {len(start)} | {a['objective']} | {start.mean():.3f} | "
                     f"{end.mean():.3f} | {np.mean((end - start) / np.maximum(sd, 1e-6)):+.1f} |")
    lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in s["figures"])]
    if isinstance(s["first_layer_digits"], str):
        lines.append(f"(first_layer.png {s['first_layer_digits']}.)")
    lines.append("")
    return "\n".join(lines)
