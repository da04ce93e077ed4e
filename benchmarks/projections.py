"""Step time and memory vs subspace size d for every projection kind.

    python benchmarks/projections.py            # FC 784-5x400-10 (959,610 params), d = 10 .. 100,000
    python benchmarks/projections.py --quick    # zoo_fc16 (12,730 params), d = 10, 300; ~1 min

One run = one jitted program: build theta0 and P from a key, then ``n`` Adam
steps on a fixed batch in a ``fori_loop`` whose trip count is an argument, so
one compile serves every ``n``. Step time is (t(1 + K) - t(1)) / K (best of 2
each, K grown until the K steps take longer than the setup), so the one-off P
construction (``setup``) is excluded from it and reported apart.
Memory is XLA's figure for the compiled program (arguments + outputs +
temporaries): the peak a run needs, P included, on any backend.
"direct" is full-space training of the same model (the 1x line).

Writes ``OUT.json`` and ``OUT.png`` (default ``runs/benchmarks/projections``,
``_quick`` appended with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from subspace_jax import models, subspace  # noqa: E402

KINDS = ("dense", "orthonormal", "sparse", "sparse:nnz=3", "fastfood", "regenerated",
         "subspace_nn")
DIMS = (10, 100, 1_000, 3_000, 10_000, 30_000, 100_000)


def register_models() -> None:
    """FC 784-5x400-10 (959,610 params), the issue's ~1M-parameter model."""
    if "fc_5x400" not in models.names():
        models.register("fc_5x400", lambda: models.mlp("fc_5x400", (400,) * 5))


def projection_bytes(kind: str, D: int, d: int) -> int:
    """Rough peak bytes of building and holding the projection (XLA's figure
    for this model, measured on CPU), to skip runs that cannot fit."""
    name, options = subspace.parse_kind(kind)
    if name in ("dense", "subspace_nn"):
        return 16 * D * d  # Gaussian bits, floats and the normalised copy
    if name == "orthonormal":
        return 20 * D * d
    if name == "sparse":
        return 28 * d * int(options.get("nnz") or subspace.default_nnz(D))
    if name == "fastfood":
        return 40 * (1 << (D - 1).bit_length()) * max(1, math.ceil(d / D))
    if name == "regenerated":
        return 16 * D * int(options.get("block") or subspace.default_block(D, d))
    return 0


def make_steps(model, kind: str, d: int, x, y, learning_rate: float = 1e-3):
    """``steps(key, n) -> sum(w)`` after n Adam steps (kind 'direct': full space)."""
    opt = optax.adam(learning_rate)

    def steps(key, n):
        k_init, k_proj = jax.random.split(key)
        theta0_D, unravel = ravel_pytree(model.init(k_init))
        if kind == "direct":
            to_params, w = unravel, theta0_D
        else:
            project = subspace.make_projection(kind, k_proj, theta0_D.size, d, theta0_D=theta0_D)
            to_params, w = (lambda w: unravel(theta0_D + project(w))), jnp.zeros(d)
        loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(to_params(w), x), y).mean()

        def body(_, state):
            w, opt_state = state
            g = jax.grad(loss)(w)
            updates, opt_state = opt.update(g, opt_state, w)
            return optax.apply_updates(w, updates), opt_state

        w, _ = lax.fori_loop(0, n, body, (w, opt.init(w)))
        return w.sum()  # cheap (a final loss would add a forward pass to setup)

    return jax.jit(steps)


def _seconds(compiled, key, n: int, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(key, jnp.int32(n)))
        best = min(best, time.perf_counter() - t0)
    return best


def measure(model, kind: str, d: int, x, y, target_s: float) -> dict:
    """Compile once; step and setup seconds; XLA's memory figure."""
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = make_steps(model, kind, d, x, y).lower(key, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    memory = None if mem is None else int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                          + mem.temp_size_in_bytes)
    jax.block_until_ready(compiled(key, jnp.int32(1)))  # warm-up
    t1 = _seconds(compiled, key, 1)
    # Grow K until the timed steps outlast both target_s and the setup, so the
    # setup's run-to-run noise (it is in t(1) and t(1 + K)) stays small.
    k = 2
    while True:
        dt = _seconds(compiled, key, 1 + k) - t1
        if dt >= max(target_s, t1) or k >= 100_000:
            break
        k *= 4
    step = max(dt / k, 0.0)
    return {"step_ms": 1e3 * step, "setup_ms": 1e3 * max(t1 - step, 0.0), "steps_timed": k,
            "compile_s": compile_s, "memory_bytes": memory}


def plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    direct = report["direct"]
    for kind in report["kinds"]:
        rows = [r for r in report["results"] if r["kind"] == kind and r["status"] == "ok"]
        if not rows:
            continue
        d = [r["d"] for r in rows]
        line, = ax_t.plot(d, [r["step_ms"] for r in rows], "o-", label=kind)
        if all(r["memory_bytes"] for r in rows):
            ax_m.plot(d, [r["memory_bytes"] / 2**20 for r in rows], "o-", color=line.get_color(),
                      label=kind)
    if direct.get("status") == "ok":
        ax_t.axhline(direct["step_ms"], color="k", ls="--", label="direct (full space)")
        ax_t.axhline(3 * direct["step_ms"], color="k", ls=":", label="3x direct")
        if direct["memory_bytes"]:
            ax_m.axhline(direct["memory_bytes"] / 2**20, color="k", ls="--", label="direct")
    for ax, label in ((ax_t, "step time (ms)"), (ax_m, "XLA memory of a run (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subspace dimension d")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']} (D={report['D']:,}), batch {report['batch']}, "
                 f"{report['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and d, seconds")
    parser.add_argument("--model", default=None, help="registered model (default fc_5x400)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS),
                        help="projection kinds, options allowed (e.g. sparse:nnz=3)")
    parser.add_argument("--dims", nargs="+", type=int, default=None, help="d values")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--target_s", type=float, default=None,
                        help="seconds of timed steps per measurement")
    parser.add_argument("--max_gb", type=float, default=16.0,
                        help="skip runs whose projection alone would exceed this")
    parser.add_argument("--out", default=None, help="output path without extension")
    parser.add_argument("--resume", action="store_true",
                        help="keep the measured rows of an existing OUT.json (same model, batch, "
                             "device) and measure only the missing ones")
    args = parser.parse_args(argv)

    register_models()
    model_name = args.model or ("zoo_fc16" if args.quick else "fc_5x400")
    dims = args.dims or ([10, 300] if args.quick else list(DIMS))
    kinds = args.kinds
    target_s = args.target_s or (0.05 if args.quick else 1.0)
    out = args.out or os.path.join("runs", "benchmarks", "projections" + ("_quick" if args.quick else ""))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

    model = models.get(model_name)
    D = models.param_count(model)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    report = {"model": model_name, "D": D, "batch": args.batch, "device": device,
              "jax": jax.__version__, "kinds": kinds, "dims": dims,
              "memory": "XLA compiled-program argument + output + temp bytes",
              "results": []}
    print(f"{model_name}: D={D:,}, batch {args.batch}, {device}", flush=True)
    done = {}
    if args.resume and os.path.exists(out + ".json"):
        with open(out + ".json") as f:
            old = json.load(f)
        same = {k: old.get(k) for k in ("model", "batch", "device")}
        if same != {"model": model_name, "batch": args.batch, "device": device}:
            raise SystemExit(f"--resume: {out}.json was measured for {same}, not this run; "
                             "give another --out or drop --resume")
        done = {(r["kind"], r["d"]): r for r in old["results"] if r["status"] == "ok"}
        if old.get("direct", {}).get("status") == "ok":
            done[("direct", D)] = old["direct"]
        print(f"--resume: {len(done)} measured rows kept from {out}.json", flush=True)

    def save():  # after every row, so a run stopped early keeps what it measured
        with open(out + ".json.tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(out + ".json.tmp", out + ".json")

    report["direct"] = done.get(("direct", D)) or {
        "kind": "direct", "d": D, "status": "ok", **measure(model, "direct", D, x, y, target_s)}
    print(f"{'direct':14s} d={D:>9,}  step {report['direct']['step_ms']:9.3f} ms", flush=True)
    for kind in kinds:
        for d in dims:
            row = {"kind": kind, "d": d}
            need = projection_bytes(kind, D, d)
            if subspace.parse_kind(kind)[0] == "orthonormal" and d > D:
                row["status"] = "skipped: orthonormal needs d <= D"
            elif (kind, d) in done:
                row = done[(kind, d)]
            elif need > args.max_gb * 2**30:
                row["status"] = f"skipped: projection needs ~{need / 2**30:.0f} GiB > --max_gb"
            else:
                try:
                    row.update(measure(model, kind, d, x, y, target_s), status="ok")
                    row["vs_direct"] = row["step_ms"] / report["direct"]["step_ms"]
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: record, go on
                    row["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
            report["results"].append(row)
            save()
            if row["status"] == "ok":
                mem = row["memory_bytes"] and f"{row['memory_bytes'] / 2**20:9.1f} MiB"
                print(f"{kind:14s} d={d:>9,}  step {row['step_ms']:9.3f} ms "
                      f"({row['vs_direct']:5.2f}x direct)  setup {row['setup_ms']:9.1f} ms  "
                      f"memory {mem}", flush=True)
            else:
                print(f"{kind:14s} d={d:>9,}  {row['status']}", flush=True)
    save()
    plot(report, out + ".png")
    print(f"wrote {out}.json, {out}.png")
    return report


if __name__ == "__main__":
    main()
