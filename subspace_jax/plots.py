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


def accuracy_vs_d(models: dict, subtitle: str = ""):
    """One panel per model: validation and test accuracy vs d, full space dashed."""
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        for key, style in (("val_acc", "o-"), ("test_acc", "s--")):
            d, mean, sd = _series(m["subspace"], key)
            ax.errorbar(d, 100 * mean, yerr=100 * sd, fmt=style, capsize=3,
                        label=f"subspace, {key.split('_')[0]}")
        for row in m["full"]:
            if row["test_acc_mean"] is not None:
                ax.axhline(100 * row["test_acc_mean"], color="k", ls=":",
                           label=f"full space ({m['params']:,}), test")
        ax.set_xscale("log")
        ax.set_xlabel("subspace dimension d")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{name} (D={m['params']:,})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    return fig
