"""Figures of the weight-agnostic network experiment (matplotlib only, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from subspace_jax import wann_search  # noqa: E402


def node_depths(genome) -> tuple[np.ndarray, np.ndarray]:
    """Depth of every hidden node (1 + deepest source; inputs are depth 0) and
    the boolean mask of inputs with an ON outgoing connection."""
    n_in, n_hidden, _ = wann_search.sizes(genome)
    in_on = genome["in_conn"] == wann_search.ON
    hid_on = genome["hid_conn"] == wann_search.ON
    depth = np.zeros(n_hidden, int)
    for k in range(n_hidden):  # index order is topological
        if genome["node_on"][k]:
            srcs = np.flatnonzero(hid_on[:k, k])
            depth[k] = 1 + (depth[srcs].max() if len(srcs) else 0)
    return depth, in_on.any(1)


def topology(genome, image_side: int | None = None, title: str = ""):
    """The network as a layered graph (used inputs left, outputs right, node
    colour = activation), plus how often each pixel is used when the inputs
    form a square image."""
    n_in, n_hidden, n_out = wann_search.sizes(genome)
    depth, used_in = node_depths(genome)
    hidden = np.flatnonzero(genome["node_on"])
    last = (depth[hidden].max() if len(hidden) else 0) + 1
    pos = {}
    ins = np.flatnonzero(used_in)
    for i, src in enumerate(ins):
        pos[("i", src)] = (0.0, (i + 0.5) / max(len(ins), 1))
    for d in range(1, last):
        layer = [k for k in hidden if depth[k] == d]
        for i, k in enumerate(layer):
            pos[("h", k)] = (float(d), (i + 0.5) / len(layer))
    for o in range(n_out):
        pos[("o", o)] = (float(last), (o + 0.5) / n_out)

    def key(col):
        return ("h", col) if col < n_hidden else ("o", col - n_hidden)

    segs, colors = [], []
    for src, col in zip(*np.nonzero(genome["in_conn"] == wann_search.ON)):
        segs.append([pos[("i", src)], pos[key(col)]])
        colors.append((0.3, 0.3, 0.3, 0.15))
    for src, col in zip(*np.nonzero(genome["hid_conn"] == wann_search.ON)):
        segs.append([pos[("h", src)], pos[key(col)]])
        colors.append((0.1, 0.3, 0.8, 0.5))

    square = image_side is not None and image_side ** 2 <= n_in
    fig, axes = plt.subplots(1, 2 if square else 1, figsize=(13 if square else 9, 6),
                             gridspec_kw={"width_ratios": [3, 1]} if square else None,
                             squeeze=False)
    ax = axes[0, 0]
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=0.6))
    cmap = plt.get_cmap("tab10")
    if len(ins):
        xy = np.asarray([pos[("i", s)] for s in ins])
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c="k", zorder=3)
    for a, name in enumerate(wann_search.ACTIVATIONS):
        ks = [k for k in hidden if genome["act"][k] == a]
        if ks:
            xy = np.asarray([pos[("h", k)] for k in ks])
            ax.scatter(xy[:, 0], xy[:, 1], s=40, color=cmap(a), edgecolor="k", zorder=3,
                       label=f"{name} ({len(ks)})")
    xy = np.asarray([pos[("o", o)] for o in range(n_out)])
    ax.scatter(xy[:, 0], xy[:, 1], s=80, c="w", edgecolor="k", zorder=3)
    for o in range(n_out):
        ax.annotate(str(o), pos[("o", o)], xytext=(8, -3), textcoords="offset points", fontsize=8)
    ax.set_xlim(-0.3, last + 0.5)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xticks(range(last + 1))
    ax.set_xlabel("layer (0 = inputs used, last = outputs)")
    ax.set_yticks([])
    ax.set_title(title or f"{wann_search.n_connections(genome)} connections, "
                 f"{len(hidden)} hidden nodes, {len(ins)} inputs used", fontsize=9)
    if len(hidden):
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.04), ncol=5,
                  frameon=False)
    if square:
        out_degree = (genome["in_conn"][:image_side ** 2] == wann_search.ON).sum(1)
        im = axes[0, 1].imshow(out_degree.reshape(image_side, image_side), cmap="viridis")
        axes[0, 1].set_title("connections per input pixel", fontsize=9)
        axes[0, 1].set_xticks([])
        axes[0, 1].set_yticks([])
        fig.colorbar(im, ax=axes[0, 1], fraction=0.046)
    fig.tight_layout()
    return fig


def accuracy_vs_weight(grid_W, val_acc_W, test_acc_W, shared_weights, chosen_w,
                       ensemble_test: float, random_mean: float):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(grid_W, 100 * np.asarray(val_acc_W), "o-", ms=3, label="validation")
    ax.plot(grid_W, 100 * np.asarray(test_acc_W), "s--", ms=3, label="test")
    for w in shared_weights:
        ax.axvline(w, color="0.85", lw=0.8, zorder=0)
    ax.axvline(chosen_w, color="C3", ls=":", label=f"chosen on validation: w={chosen_w:g}")
    ax.axhline(100 * ensemble_test, color="k", ls="-.", lw=1,
               label=f"ensemble of the {len(shared_weights)} weights, test")
    ax.axhline(100 * random_mean, color="0.5", ls=":", lw=1, label="random w ~ U[-2, 2], test mean")
    ax.set_xlabel("shared weight value (grey: values used during evolution)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def over_generations(rows):
    g = np.asarray([r["generation"] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(g, [100 * r["best_mean_acc"] for r in rows], label="best individual, mean over weights")
    a.plot(g, [100 * r["best_max_acc"] for r in rows], label="best individual, best weight")
    a.plot(g, [100 * r["median_mean_acc"] for r in rows], label="population median, mean")
    a.set_xlabel("generation")
    a.set_ylabel("training-batch accuracy (%)")
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    b.plot(g, [r["best_connections"] for r in rows], label="best individual")
    b.plot(g, [r["median_connections"] for r in rows], label="population median")
    b.plot(g, [r["best_hidden"] for r in rows], ls="--", label="best individual: hidden nodes")
    b.set_xlabel("generation")
    b.set_ylabel("count")
    b.grid(alpha=0.3)
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig
