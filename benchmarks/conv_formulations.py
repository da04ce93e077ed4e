"""Which convolution formulation trains fastest on XLA's CPU backend?

    python benchmarks/conv_formulations.py [--steps=100]

Times scanned SGD training of the 21,840-param conv net (batch 64) with:
  * lax:     ``lax.conv_general_dilated`` (NHWC/HWIO),
  * patches: ``lax.conv_general_dilated_patches`` then one matmul,
  * slice:   patches formed by k*k slices + concatenate, then one matmul
             (``subspace_jax.models.conv2d``, the NHWC form kept for export and
             inspection),
  * cnhw:    the same slices in the channel-major C x N x H x W layout, one
             O x KKC @ KKC x NHW matmul, max-pool before bias and relu (what the
             models train with: ``models.conv2d_cnhw``),
each with max-pool as reshape-and-max or as ``lax.reduce_window``. XLA's flags
are set as ``launch.py`` sets them (``cpu_devices.configure``: YNNPACK dots).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from subspace_jax import cpu_devices  # noqa: E402

if __name__ == "__main__":
    cpu_devices.configure()  # before JAX starts, as launch.py does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from subspace_jax import models  # noqa: E402
from throughput import cpu_model  # noqa: E402  (this script's own folder)


def conv_patches(x, w, b):
    k = w.shape[0]
    p = lax.conv_general_dilated_patches(x, (k, k), (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # patches come out channel-major: (c, i, j)
    w_mat = jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])
    return p @ w_mat + b


def pool_reduce_window(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def pool_reduce_window_cnhw(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


CONVS = {"lax": lambda x, w, b: models.conv2d(x, w, b, "lax"),
         "patches": conv_patches,
         "slice": lambda x, w, b: models.conv2d(x, w, b, "slice")}
POOLS = {"reshape": models.maxpool2, "reduce_window": pool_reduce_window}
POOLS_CNHW = {"reshape": models.maxpool2_cnhw, "reduce_window": pool_reduce_window_cnhw}


def _head(p, h_NHWC):
    h = jax.nn.relu(h_NHWC.reshape(h_NHWC.shape[0], -1) @ p["dense0"]["w"] + p["dense0"]["b"])
    return h @ p["dense1"]["w"] + p["dense1"]["b"]


def apply_nhwc(conv, pool, p, x):
    h = pool(jax.nn.relu(conv(x, p["conv0"]["w"], p["conv0"]["b"])))
    h = pool(jax.nn.relu(conv(h, p["conv1"]["w"], p["conv1"]["b"])))
    return _head(p, h)


def apply_cnhw(pool, p, x):
    # Pool before bias + relu: max commutes with both (relu is monotone).
    h = jnp.transpose(x, (3, 0, 1, 2))
    for name in ("conv0", "conv1"):
        h = pool(models.conv2d_cnhw(h, p[name]["w"]))
        h = jax.nn.relu(h + p[name]["b"][:, None, None, None])
    return _head(p, jnp.transpose(h, (1, 2, 3, 0)))


FORMS = {f"{c} + {q}": (lambda c, q: lambda p, x: apply_nhwc(CONVS[c], POOLS[q], p, x))(c, q)
         for c in CONVS for q in POOLS}
FORMS.update({f"cnhw + {q}": (lambda q: lambda p, x: apply_cnhw(POOLS_CNHW[q], p, x))(q)
              for q in POOLS_CNHW})


def images_per_s(apply, steps, batch=64):
    params = models.get("conv_subspace").init(jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (steps, batch, 28, 28, 1))
    y = jax.random.randint(ky, (steps, batch), 0, 10)

    def loss(p, xb, yb):
        logits = apply(p, xb)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1).mean()

    @jax.jit
    def train(p):
        def step(p, xy):
            g = jax.grad(loss)(p, *xy)
            return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), None
        return lax.scan(step, p, (x, y))[0]

    jax.block_until_ready(train(params))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(train(params))
        best = min(best, time.perf_counter() - t0)
    return steps * batch / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0]} ({cpu_model()}); "
          "conv_subspace, batch 64, SGD")
    for name, apply in FORMS.items():
        print(f"{name:24s} {images_per_s(apply, args.steps):8.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
