"""Training throughput (images/s), this project vs PyTorch on the same CPU, in one run.

    pip install -e ".[bench]"          # torch==2.13.0, the CPU wheel
    python benchmarks/throughput.py [--steps=400] [--out=benchmarks/results/throughput.json]
    python benchmarks/throughput.py --markdown benchmarks/results/throughput.json  # the table

Rows (batch 64, Adam lr 1e-3, real MNIST, through ``train.make_run`` and
``vectorize.vmapped``, the path every experiment takes):
  conv full        the 21,840-param conv net, full space, one run
  conv subspace    the same, dense d = 1,000 subspace (theta0 + P omega)
  conv 8 seeds     8 seeds of the full-space run in one program (aggregate images/s;
                   on a CPU mapped per device, ``vectorize.seed_form``)
  golf             the 820-param golf CNN (convs 4,5,4; kernels 4,3,3; PReLU), one trial
  golf 8 trials    8 trials of it (8 learning rates) vmapped, aggregate
  golf 5 seeds     5 seeds of one trial: padded to 6 and mapped over the cores
                   (``vectorize.seed_padding``, the default), and vmapped on one
                   device (``SUBSPACE_JAX_SEED_FORM=vmap``, what a seed count the
                   cores do not divide ran as before the padding)
  ..., XLA dots    the one-run rows again in a child process with XLA's own
                   matmuls (``SUBSPACE_JAX_CPU_DOTS=xla``), against the default
                   YNNPACK ones

Each row is reported as a ratio to the matching PyTorch run (one run; its
threads = the cores), as a ratio to one JAX run of the same model
(vmapped rows: >= 1 means batching runs never loses to running them one after
another) and as a fraction of the machine's measured float32 matmul peak
(a jitted 2048 x 2048 matmul), with FLOPs per image from XLA's cost analysis
of one training step. Like ``launch.py``, it presents each CPU core as an XLA
device first (``subspace_jax.cpu_devices``; ``SUBSPACE_JAX_CPU_DEVICES=1``
for one device), so vmapped runs are sharded over cores. JAX time per epoch
is the difference of a 3-epoch and a 1-epoch run, so compilation and the
end-of-run evaluations cancel (each epoch scores a 500-image validation
split, ~1% of its work); PyTorch is timed over the same steps after warm-up.
It is a benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from subspace_jax import cpu_devices  # the package is installed (README); no sys.path edit

if __name__ == "__main__":
    cpu_devices.configure()  # before JAX starts, as launch.py does

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from subspace_jax import config as C  # noqa: E402
from subspace_jax import data, models, train, vectorize  # noqa: E402

BATCH = 64
CONV, GOLF = "conv_subspace", "golf_prelu"
XLA_DOTS = ("conv full", "golf 820, one trial")  # re-run with XLA's own dots
ROWS = (  # name, model, d, seeds, rows of hp, torch reference, seed form
    ("conv full", CONV, 0, 1, 1, "conv full", "auto"),
    ("conv subspace d=1000", CONV, 1000, 1, 1, "conv subspace d=1000", "auto"),
    ("conv 8 seeds, one program", CONV, 0, 8, 1, "conv full", "auto"),
    ("golf 820, one trial", GOLF, 0, 1, 1, "golf 820", "auto"),
    ("golf 820, 8 trials vmapped", GOLF, 0, 1, 8, "golf 820", "auto"),
    ("golf 820, 5 seeds, padded to 6", GOLF, 0, 5, 1, "golf 820", "auto"),
    ("golf 820, 5 seeds, vmapped on one device", GOLF, 0, 5, 1, "golf 820", "vmap"),
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of a jitted n x n matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    best = min(_timed(lambda: jax.block_until_ready(f(a, a))) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def flops_per_image(model_name: str, d: int) -> float:
    """XLA's FLOP count of one training step (forward + backward) / batch."""
    model = models.get(model_name)
    theta_D, unravel = ravel_pytree(model.init(jax.random.key(0)))
    x = jnp.zeros((BATCH, 28, 28, 1), jnp.float32)
    y = jnp.zeros((BATCH,), jnp.int32)
    if d:
        P_Dxd = jax.random.normal(jax.random.key(1), (theta_D.size, d), jnp.float32)
        to_params = lambda w: unravel(theta_D + P_Dxd @ w)
        w0 = jnp.zeros(d, jnp.float32)
    else:
        to_params, w0 = unravel, theta_D
    loss = lambda w: train.cross_entropy(model.apply(to_params(w), x), y)
    cost = jax.jit(jax.grad(loss)).lower(w0).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / BATCH


def jax_images_per_s(model_name: str, steps: int, d: int, seeds: int, rows: int,
                     form: str = "auto", repeats: int = 2) -> float:
    n_train = steps * BATCH
    ds = data.load(train_size=n_train, val_size=500)
    dat = train.Data.from_dataset(ds)
    model = models.get(model_name)
    times = {}
    for epochs in (1, 3):
        tcfg = C.train_config(batch_size=BATCH, epochs=epochs, learning_rate=1e-3, eval_chunk=500)
        run = train.make_run(model, tcfg, C.subspace_config(d), n_train)
        hp = {k: np.repeat(np.asarray(v)[None], rows, 0)
              for k, v in train.default_hp(tcfg, d).items()}
        hp["learning_rate"] = np.float32(1e-3 * (1 + 0.1 * np.arange(rows)))  # distinct trials
        keys = vectorize.run_keys(range(seeds))
        saved = os.environ.get(vectorize.SEED_FORM_ENV)
        os.environ[vectorize.SEED_FORM_ENV] = form  # read per call; part of the compile cache key
        try:
            jax.block_until_ready(vectorize.vmapped(run, keys, hp, dat))  # compile
            times[epochs] = min(_timed(lambda: jax.block_until_ready(
                vectorize.vmapped(run, keys, hp, dat))) for _ in range(repeats))
        finally:
            if saved is None:
                os.environ.pop(vectorize.SEED_FORM_ENV)
            else:
                os.environ[vectorize.SEED_FORM_ENV] = saved
    per_epoch = (times[3] - times[1]) / 2
    return seeds * rows * n_train / per_epoch


def torch_images_per_s(kind: str, steps: int, warmup: int = 20) -> float:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    ds = data.load(train_size=(steps + warmup) * BATCH, val_size=500)
    x = torch.from_numpy(np.ascontiguousarray(ds.train_x.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(ds.train_y.astype(np.int64))
    if kind.startswith("conv"):
        shapes = [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320), (50,), (10, 50), (10,)]

        def forward(ws, xb):
            h = F.max_pool2d(F.relu(F.conv2d(xb, ws[0], ws[1])), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, ws[2], ws[3])), 2)
            h = F.relu(F.linear(h.flatten(1), ws[4], ws[5]))
            return F.linear(h, ws[6], ws[7])
    else:  # the golf CNN: 28 -> 25 -> 12 -> 10 -> 5 -> 3; 820 params with PReLU slopes
        shapes = [(4, 1, 4, 4), (4,), (4,), (5, 4, 3, 3), (5,), (5,), (4, 5, 3, 3), (4,), (4,),
                  (10, 36), (10,)]

        def forward(ws, xb):
            h = F.max_pool2d(F.prelu(F.conv2d(xb, ws[0], ws[1]), ws[2]), 2)
            h = F.max_pool2d(F.prelu(F.conv2d(h, ws[3], ws[4]), ws[5]), 2)
            h = F.prelu(F.conv2d(h, ws[6], ws[7]), ws[8])
            return F.linear(h.permute(0, 2, 3, 1).flatten(1), ws[9], ws[10])
    theta = [torch.empty(s).uniform_(-0.1, 0.1) for s in shapes]  # values don't affect speed
    sizes = [t.numel() for t in theta]
    if "subspace" not in kind:
        trainable = [t.requires_grad_() for t in theta]
        weights = lambda: trainable
    else:
        theta0 = torch.cat([t.flatten() for t in theta])
        P = torch.randn(theta0.numel(), 1000)
        P /= P.norm(dim=0, keepdim=True)
        omega = torch.zeros(1000, requires_grad=True)
        trainable = [omega]

        def weights():
            flat = theta0 + P @ omega
            return [c.view(s) for c, s in zip(torch.split(flat, sizes), shapes)]

    opt = torch.optim.Adam(trainable, lr=1e-3)

    def step(i):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(weights(), xb), yb).backward()
        opt.step()

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return steps * BATCH / (time.perf_counter() - t0)


def xla_dots_rows(steps: int) -> dict:
    """The ``XLA_DOTS`` rows measured in a child process with XLA's own matmuls."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "xla.json")
        env = {**os.environ, cpu_devices.DOTS_ENV: "xla"}
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if not f.startswith(cpu_devices.YNN_FLAG))
        subprocess.run([sys.executable, os.path.abspath(__file__), f"--steps={steps}",
                        "--no-torch", f"--out={out}", "--only=" + ";".join(XLA_DOTS)],
                       env=env, check=True)
        with open(out) as f:
            child = json.load(f)
    return {f"{name}, XLA dots": r for name, r in child["results"].items()}


def markdown(result: dict) -> str:
    lines = [f"CPU: {result['cpu']} ({result['cores']} cores), {result['xla_devices']} XLA CPU "
             f"devices, jax {result['jax']}, torch {result.get('torch', '-')} "
             f"({result.get('torch_threads', '-')} threads); matmul peak "
             f"{result['matmul_peak_gflops']:.0f} GFLOP/s; matmuls: "
             f"{'YNNPACK' if result.get('dots') == 'ynn' else 'XLA'}; {result['date']}.", "",
             "| work (batch 64, Adam) | project img/s | PyTorch img/s | ratio to PyTorch "
             "| ratio to one project run | % of matmul peak |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["results"].items():
        torch_txt = f"{r['torch']:,.0f}" if "torch" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"| {name} | {r['jax']:,.0f} | {torch_txt} | {ratio} | "
                     f"{r['vs_one_run']:.2f}x | {100 * r['peak_fraction']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps per timed epoch")
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--markdown", metavar="JSON", help="print the table of a result file")
    parser.add_argument("--only", default="", help="rows to run, names joined by ';' "
                        "(default: all, plus the XLA-dots rows)")
    args = parser.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)), end="")
        return
    if args.steps < 10:
        parser.error(f"--steps={args.steps}: use at least 10 steps")
    only = [n for n in args.only.split(";") if n]
    unknown = sorted(set(only) - {r[0] for r in ROWS})
    if unknown:
        parser.error(f"--only: unknown rows {unknown}; rows are {[r[0] for r in ROWS]}")

    peak = matmul_peak_gflops()
    print(f"{cpu_model()}: {jax.device_count()} XLA devices, matmul peak {peak:.0f} GFLOP/s",
          flush=True)
    rows, one_run = {}, {}
    for name, model, d, seeds, n_rows, _, form in ROWS:
        if only and name not in only:
            continue
        ips = jax_images_per_s(model, args.steps, d, seeds, n_rows, form)
        flops = flops_per_image(model, d)
        if seeds * n_rows == 1:
            one_run[(model, d)] = ips
        rows[name] = {"jax": ips, "flops_per_image": flops,
                      "vs_one_run": ips / one_run[(model, d)],
                      "peak_fraction": ips * flops / (peak * 1e9)}
        print(f"jax   {name:28s} {ips:9.0f} images/s  ({rows[name]['vs_one_run']:.2f}x one run, "
              f"{100 * rows[name]['peak_fraction']:.1f}% of peak)", flush=True)
    if not only:
        for name, r in xla_dots_rows(args.steps).items():  # as fractions of this peak
            rows[name] = {**r, "peak_fraction": r["jax"] * r["flops_per_image"] / (peak * 1e9)}
    result = {"batch": BATCH, "optimizer": "adam", "steps": args.steps, "cpu": cpu_model(),
              "cores": cpu_devices.cores(), "xla_devices": jax.device_count(),
              "dots": "ynn" if cpu_devices.YNN_FLAG in os.environ.get("XLA_FLAGS", "") else "xla",
              "matmul_peak_gflops": peak, "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d"), "results": rows}
    if not args.no_torch:
        import torch
        ref_of = {r[0]: r[5] for r in ROWS}
        ref_of.update({f"{n}, XLA dots": ref_of[n] for n in XLA_DOTS})
        refs = {ref: torch_images_per_s(ref, args.steps) for ref in {ref_of[n] for n in rows}}
        for name in rows:
            ref = ref_of[name]
            rows[name]["torch"] = refs[ref]
            rows[name]["ratio"] = rows[name]["jax"] / refs[ref]
            print(f"torch {ref:28s} {refs[ref]:9.0f} images/s   {name}: "
                  f"{rows[name]['ratio']:.2f}x", flush=True)
        result["torch"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(markdown(result), end="")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
