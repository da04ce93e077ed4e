"""Figures (matplotlib, headless Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _series(rows, key):
    rows = [r for r in rows if r[key + "_mean"] is not None]
    return (np.asarray([r["d"] for r in rows]), np.asarray([r[key + "_mean"] for r in rows]),
            np.asarray([r[key + "_sd"] for r in rows]))


def _model_panels(models: dict, draw, xlabel: str, ylabel: str, subtitle: str):
    """One panel per model of ``models``; ``draw(ax, m)`` fills one."""
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        draw(ax, m)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name} (D={m['params']:,})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_vs_d(models: dict, subtitle: str = ""):
    """One panel per model: validation and test accuracy vs d, full space dashed."""
    def draw(ax, m):
        for key, style in (("val_acc", "o-"), ("test_acc", "s--")):
            d, mean, sd = _series(m["subspace"], key)
            ax.errorbar(d, 100 * mean, yerr=100 * sd, fmt=style, capsize=3,
                        label=f"subspace, {key.split('_')[0]}")
        for row in m["full"]:
            if row["test_acc_mean"] is not None:
                ax.axhline(100 * row["test_acc_mean"], color="k", ls=":",
                           label=f"full space ({m['params']:,}), test")
        ax.set_xscale("log")
    return _model_panels(models, draw, "subspace dimension d", "accuracy (%)", subtitle)


def val_curves(models: dict, subtitle: str = ""):
    """One panel per model: mean validation accuracy per epoch, one line per d."""
    def draw(ax, m):
        for label, row in ([(f"d={r['d']:,}", r) for r in m["subspace"]]
                           + [(f"full ({m['params']:,})", r) for r in m["full"]]):
            curve = row.get("val_acc_curve") or []
            if curve:
                ax.plot(range(1, len(curve) + 1), 100 * np.asarray(curve), marker=".", label=label,
                        ls=":" if label.startswith("full") else "-")
    return _model_panels(models, draw, "epoch", "validation accuracy (%)", subtitle)


PUBLISHED_MARKERS = {"tiny-MNIST": "x", "Li": "+", "subspace-nn": "1"}  # by source prefix


def frontier(points: list[dict], published: list[dict], zoom: tuple = (88, 100)):
    """Test accuracy vs free parameters (log x), all of it and the top ``zoom``
    range: one colour per method, one marker per budget; hollow markers chose
    under the previous protocol; black marks are published, test-selected; the
    step line joins our frontier points."""
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax in axes:
        _frontier_panel(ax, points, published)
    axes[1].set_ylim(*zoom)
    axes[0].set_title("all points", fontsize=9)
    axes[1].set_title(f"{zoom[0]}-{zoom[1]}%", fontsize=9)
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def _frontier_panel(ax, points: list[dict], published: list[dict]) -> None:
    methods = sorted({p["method"] for p in points})
    markers = "osD^v<>p*h"
    for i, method in enumerate(methods):
        mine = [p for p in points if p["method"] == method]
        for j, budget in enumerate(sorted({p["budget"] for p in mine})):
            for hollow in (False, True):
                sel = [p for p in mine if p["budget"] == budget
                       and (p["protocol"] == "previous") == hollow]
                if sel:
                    ax.plot([p["free_params"] for p in sel],
                            [100 * p["test_acc_mean"] for p in sel], markers[j % len(markers)],
                            color=f"C{i}", ms=5, alpha=0.8, mfc="none" if hollow else f"C{i}",
                            ls="none", label=f"{method}, {budget}"
                            + (", previous protocol" if hollow else ""))
    best = sorted((p for p in points if p["on_frontier"]), key=lambda p: p["free_params"])
    if best:
        ax.step([p["free_params"] for p in best], [100 * p["test_acc_mean"] for p in best],
                where="post", color="k", lw=1, alpha=0.6,
                label="frontier of our points (test-scored)")
    for prefix, marker in PUBLISHED_MARKERS.items():
        sel = [p for p in published if p["source"].startswith(prefix)]
        if sel:
            ax.plot([p["free_params"] for p in sel], [100 * p["test_acc_mean"] for p in sel],
                    "k" + marker, ms=9, mew=1.5, ls="none",
                    label=f"published, test-selected: {sel[0]['source']}")
    ax.set_xscale("log")
    ax.set_xlabel("free parameters (as each method counts them)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
