"""Training throughput (images/s) of the 21,840-param conv net: JAX vs PyTorch CPU.

    pip install -e ".[bench]"          # torch==2.13.0, the CPU wheel
    python benchmarks/throughput.py [--steps=400] [--out=benchmarks/results/throughput.json]

Measures, in one process on one machine, batch 64, Adam lr 1e-3, real MNIST:
  1. full-space training,
  2. subspace training with a dense d=1000 projection (theta0 + P omega),
  3. 8 seeds of (1) vmapped into one program (aggregate images/s),
through ``subspace_jax.train.make_run`` (the path experiments use), and the
same trainings written plainly in PyTorch. JAX time per epoch is taken as the
difference between a 3-epoch and a 1-epoch run, so compile time and the
end-of-run evaluations cancel; each epoch includes scoring a 500-image
validation split (about 1% of the epoch's work). PyTorch is timed over the
same number of steps after warm-up steps.

Targets (issue 2): full >= 1.5x PyTorch, subspace d=1000 >= 2x PyTorch,
8 vmapped seeds >= 4x one PyTorch run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from subspace_jax import config as C  # noqa: E402
from subspace_jax import data, models, train, vectorize  # noqa: E402

MODEL = "conv_subspace"
BATCH = 64


def jax_images_per_s(steps: int, d: int = 0, seeds: int = 1, repeats: int = 2) -> float:
    n_train = steps * BATCH
    ds = data.load(train_size=n_train, val_size=500)
    dat = train.Data.from_dataset(ds)
    model = models.get(MODEL)
    times = {}
    for epochs in (1, 3):
        tcfg = C.train_config(batch_size=BATCH, epochs=epochs, learning_rate=1e-3, eval_chunk=500)
        run = train.make_run(model, tcfg, C.subspace_config(d), n_train)
        hp = {k: np.asarray(v)[None] for k, v in train.default_hp(tcfg, d).items()}
        keys = vectorize.run_keys(range(seeds))
        jax.block_until_ready(vectorize.vmapped(run, keys, hp, dat))  # compile
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(vectorize.vmapped(run, keys, hp, dat))
            t.append(time.perf_counter() - t0)
        times[epochs] = min(t)
    per_epoch = (times[3] - times[1]) / 2
    return seeds * n_train / per_epoch


def torch_images_per_s(steps: int, d: int = 0, warmup: int = 20) -> float:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    ds = data.load(train_size=(steps + warmup) * BATCH, val_size=500)
    x = torch.from_numpy(np.ascontiguousarray(ds.train_x.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(ds.train_y.astype(np.int64))
    shapes = [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320), (50,), (10, 50), (10,)]
    theta = [torch.empty(s).uniform_(-0.1, 0.1) for s in shapes]  # values don't affect speed
    sizes = [t.numel() for t in theta]

    def forward(ws, xb):
        h = F.max_pool2d(F.relu(F.conv2d(xb, ws[0], ws[1])), 2)
        h = F.max_pool2d(F.relu(F.conv2d(h, ws[2], ws[3])), 2)
        h = F.relu(F.linear(h.flatten(1), ws[4], ws[5]))
        return F.linear(h, ws[6], ws[7])

    if d == 0:
        trainable = [t.requires_grad_() for t in theta]
        weights = lambda: trainable
    else:
        theta0 = torch.cat([t.flatten() for t in theta])
        P = torch.randn(theta0.numel(), d)
        P /= P.norm(dim=0, keepdim=True)
        omega = torch.zeros(d, requires_grad=True)
        trainable = [omega]

        def weights():
            flat = theta0 + P @ omega
            return [c.view(s) for c, s in zip(torch.split(flat, sizes), shapes)]

    opt = torch.optim.Adam(trainable, lr=1e-3)

    def step(i):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(weights(), xb), yb)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return steps * BATCH / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per timed epoch")
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    args = parser.parse_args()
    if args.steps < 10:
        parser.error(f"--steps={args.steps}: use at least 10 steps")

    rows = {}
    cases = [("full", 0, 1), ("subspace_d1000", 1000, 1), ("full_8_seeds_vmapped", 0, 8)]
    for name, d, seeds in cases:
        rows[name] = {"jax": jax_images_per_s(args.steps, d, seeds)}
        print(f"jax   {name:22s} {rows[name]['jax']:9.0f} images/s", flush=True)
    if not args.no_torch:
        torch_full = torch_images_per_s(args.steps, 0)
        torch_sub = torch_images_per_s(args.steps, 1000)
        for name, ref in (("full", torch_full), ("subspace_d1000", torch_sub),
                          ("full_8_seeds_vmapped", torch_full)):
            rows[name]["torch"] = ref
            rows[name]["ratio"] = rows[name]["jax"] / ref
            print(f"torch {name:22s} {ref:9.0f} images/s   jax/torch = {rows[name]['ratio']:.2f}x",
                  flush=True)
    result = {
        "model": MODEL, "batch": BATCH, "optimizer": "adam", "steps": args.steps,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "jax": jax.__version__,
        "backend": jax.default_backend(), "device": str(jax.devices()[0]),
        "results": rows,
    }
    if not args.no_torch:
        import torch
        result["torch"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
