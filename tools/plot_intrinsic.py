"""Accuracy vs d per projection kind, d_int90 and its interval marked, from several runs.

    python tools/plot_intrinsic.py runs/intrinsic_dimension runs/intrinsic_dimension_sparse \
        runs/intrinsic_dimension_fastfood --out docs/figures/intrinsic_dimension_by_projection.png

Each argument is a workdir of ``launch.py --experiment=intrinsic_dimension``
(its ``summary.json``). One panel per model; one line per workdir, labelled
with its projection kind; the measured accuracy (mean ± sd over seeds) at
every d searched; dashed lines at the global (90%) and individual
thresholds; a marker at each d_int90 with its bootstrap interval drawn as a
horizontal bar.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(workdir: str) -> dict:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: give workdirs of the intrinsic_dimension experiment")
    with open(path) as f:
        return json.load(f)


def plot(summaries: list[dict], labels: list[str]):
    names = list(dict.fromkeys(n for s in summaries for n in s["models"]))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        for s, label in zip(summaries, labels):
            m = s["models"].get(name)
            if m is None:
                continue
            metric = f"{m['measure_on']}_acc"
            curve = sorted(m["curve"], key=lambda r: r["d"])
            d = [r["d"] for r in curve]
            mean = [100 * r[f"{metric}_mean"] for r in curve]
            sd = [100 * (r[f"{metric}_sd"] or 0) for r in curve]
            line = ax.errorbar(d, mean, yerr=sd, fmt=".-", ms=4, capsize=2, lw=1, label=label)
            color = line[0].get_color()
            for base, marker in (("global", "o"), ("individual", "s")):
                est = m["d_int90"][base]
                if est.get("censored") or est["d"] is None:
                    continue
                y = 100 * est["threshold"]
                lo, hi = est["ci"]
                ax.errorbar([est["d"]], [y], xerr=[[est["d"] - lo], [max(hi - est["d"], 0)]],
                            fmt=marker, color=color, mfc="white", ms=7, capsize=4,
                            label=f"{label}: d_int90 ({base}) = {est['d']:,}")
        m0 = next(s["models"][name] for s in summaries if name in s["models"])
        for base, style in (("global", "--"), ("individual", ":")):
            ax.axhline(100 * m0["thresholds"][base], color="grey", ls=style, lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("subspace dimension d")
        ax.set_ylabel(f"{m0['measure_on']} accuracy (%)")
        ax.set_title(f"{name} (D={m0['params']:,}); dashed: 90%, dotted: 90% of full",
                     fontsize=9)
        ax.set_ylim(40, 100)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one per workdir (default: each run's projection kind)")
    parser.add_argument("--out", default="intrinsic_dimension_by_projection.png")
    args = parser.parse_args(argv)
    summaries = [load(w) for w in args.workdirs]
    labels = args.labels or [s["settings"]["projection"] for s in summaries]
    if len(labels) != len(summaries):
        raise SystemExit(f"--labels: {len(labels)} given for {len(summaries)} workdirs")
    fig = plot(summaries, labels)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
