"""Sparsity-accuracy figures (matplotlib, headless Agg backend).

Rows are ``procedures.summarise`` rows: one per (method, density target) with
``<metric>_mean`` / ``<metric>_sd`` over seeds.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402


def _series(rows, key, x="density"):
    rows = [r for r in rows if r[key + "_mean"] is not None]
    rows = sorted(rows, key=lambda r: -r[x + "_mean"])
    return (100 * np.asarray([r[x + "_mean"] for r in rows]),
            np.asarray([r[key + "_mean"] for r in rows]),
            np.asarray([r[key + "_sd"] for r in rows]))


_TICKS = (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)


def _percent_axis(ax):
    ax.set_xscale("log")
    lo, hi = sorted(ax.get_xlim())
    ax.xaxis.set_major_locator(FixedLocator([t for t in _TICKS if lo <= t <= hi]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()  # sparser to the right, as in the lottery-ticket plots
    ax.set_xlabel("prunable weights kept (%)")
    ax.grid(alpha=0.3, which="both")


def _dense_line(ax, rows, key, scale=100):
    for r in rows:
        if r["method"] == "dense" and r[key + "_mean"] is not None:
            ax.axhline(scale * r[key + "_mean"], color="k", ls=":", lw=1, label="dense")


def accuracy_vs_density(by_model: dict, metric: str = "test_acc", subtitle: str = ""):
    """One panel per model: ``metric`` vs fraction kept, one line per method (mean ± sd)."""
    fig, axes = plt.subplots(1, len(by_model), figsize=(6.5 * len(by_model), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], by_model.items()):
        methods = sorted({r["method"] for r in rows} - {"dense"})
        for i, method in enumerate(methods):
            x, mean, sd = _series([r for r in rows if r["method"] == method], metric)
            style = "-" if method.startswith("at_init") else "--"
            ax.errorbar(x, 100 * mean, yerr=100 * sd, fmt="o" + style, ms=3, capsize=2,
                        color=plt.cm.tab10(i % 10), label=method)
        _dense_line(ax, rows, metric)
        _percent_axis(ax)
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="lower left")
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    return fig


def lottery(rows, subtitle: str = ""):
    """Winning tickets vs random reinitialisation: accuracy and early-stop epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = sorted({r["method"] for r in rows} - {"dense"})
    for i, method in enumerate(methods):
        sub = [r for r in rows if r["method"] == method]
        color = plt.cm.tab10(i % 10)
        for ax, key, scale in ((axes[0], "test_acc", 100), (axes[1], "best_epoch", 1)):
            x, mean, sd = _series(sub, key)
            ax.errorbar(x, scale * mean, yerr=scale * sd, fmt="o-", ms=3, capsize=2,
                        color=color, label=method)
    _dense_line(axes[0], rows, "test_acc")
    _dense_line(axes[1], rows, "best_epoch", scale=1)
    axes[0].set_ylabel("test accuracy (%) at the best validation epoch")
    axes[1].set_ylabel("early-stop epoch (best validation)")
    for ax in axes:
        _percent_axis(ax)
        ax.legend(fontsize=8, loc="lower left")
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    return fig
