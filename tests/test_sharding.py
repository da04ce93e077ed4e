"""Sharding the run axis: 4 forced CPU devices in one process, and 2 processes
of 2 devices each, must give the single-device numbers.

The device count is fixed when JAX starts, so every configuration runs in its
own subprocess: this file, run as a script, is the worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
TWO_DEVICES = "--xla_force_host_platform_device_count=2"
# Sweeps: 4 seeds (the seed axis is sharded); 3 seeds x 4 subspace sizes
# vmapped (3 does not divide 4, so the hyperparameter axis is sharded); and
# 3 seeds in the CPU default (mapped: padded to 4, whole and in chunks).
CASES = {"seeds": ((0, 1, 2, 3), (5, 20)), "hp": ((0, 1, 2), (2, 5, 10, 20)),
         "padded": ((0, 1, 2), (5, 20)), "padded_chunks": ((0, 1, 2), (5, 20))}
SEED_FORMS = {"hp": "vmap"}  # the others: auto


# ---------------------------------------------------------------- worker
def worker(out_dir: str) -> None:
    import jax

    from subspace_jax import config as C
    from subspace_jax import data, models, train, vectorize

    vectorize.maybe_initialize_distributed()
    ds = data.load(source="synthetic", val_size=64, synthetic_size=256)
    dat = train.Data.from_dataset(ds)
    tcfg = C.train_config(epochs=2, batch_size=32, eval_chunk=64, learning_rate=0.05)
    run = train.make_run(models.get("zoo_fc16"), tcfg, C.subspace_config(20), len(ds.train_y))
    info = {"device_count": jax.device_count(), "process_count": jax.process_count(),
            "process_index": jax.process_index(), "shards": {}, "padding": {}}
    arrays = {}
    for case, (seeds, dims) in CASES.items():
        os.environ[vectorize.SEED_FORM_ENV] = SEED_FORMS.get(case, "auto")
        info["padding"][case] = vectorize.seed_padding(len(seeds))
        d_R = np.asarray(dims, np.int32)
        hp = {"d_active": d_R, "learning_rate": np.full(len(d_R), 0.05, np.float32),
              "weight_decay": np.zeros(len(d_R), np.float32)}
        go = vectorize.vmapped_chunks if case.endswith("chunks") else vectorize.vmapped
        out = go(run, vectorize.run_keys(seeds), hp, dat)
        leaves = {"params": out.params, "val_acc": out.final["val_acc"],
                  "test_acc": out.final["test_acc"], "train_loss": out.history["train_loss"]}
        for name, x in leaves.items():
            arrays[f"{case}/{name}"] = np.asarray(x)
            if isinstance(x, jax.Array) and case in ("seeds", "hp"):  # gathered: NumPy
                info["shards"][f"{case}/{name}"] = {
                    "devices": len(x.sharding.device_set),
                    "indices": sorted(str(s.index) for s in x.addressable_shards),
                    "shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards})}
    np.savez(os.path.join(out_dir, f"out{jax.process_index()}.npz"), **arrays)
    with open(os.path.join(out_dir, f"info{jax.process_index()}.json"), "w") as f:
        json.dump(info, f)


# ---------------------------------------------------------------- helpers
def start(out_dir, xla_flags: str | None = None, **env):
    os.makedirs(out_dir, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items()
                if k != "XLA_FLAGS" and not k.startswith("JAX_")}
    full_env.update(JAX_PLATFORMS="cpu", **env)
    # The programs are tiny: skipping XLA's backend optimisations about thirds
    # the compile time that dominates these runs (and is the same everywhere).
    full_env["XLA_FLAGS"] = " ".join(["--xla_backend_optimization_level=0", xla_flags or ""])
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(out_dir)], cwd=ROOT,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(procs, timeout=240):
    try:
        for p in procs:
            log, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, log[-4000:]
    finally:
        for p in procs:  # a hung peer (e.g. waiting for its coordinator) is ended here
            if p.poll() is None:
                p.kill()
                p.communicate()


def load(out_dir, process=0):
    with open(os.path.join(out_dir, f"info{process}.json")) as f:
        info = json.load(f)
    with np.load(os.path.join(out_dir, f"out{process}.npz")) as z:
        return info, dict(z)


def assert_same_numbers(got: dict, want: dict):
    assert got.keys() == want.keys()
    for name in want:
        # Same computation split differently: float rounding may differ slightly.
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-device reference and the 4-device run, started side by side."""
    base = tmp_path_factory.mktemp("sharding")
    one, four = base / "one", base / "four"
    finish([start(one), start(four, FOUR_DEVICES)])
    return load(one), load(four)


# ---------------------------------------------------------------- tests
def test_four_devices_equal_one_device_and_are_sharded(runs):
    (info1, ref), (info4, got) = runs
    assert info1["device_count"] == 1 and info4["device_count"] == 4
    assert_same_numbers(got, ref)
    assert ref["seeds/params"].shape == (4, 2, 20) and ref["hp/params"].shape == (3, 4, 20)
    # 3 seeds on 4 mapped devices gain one copy, dropped from the outputs.
    assert info1["padding"] == {case: 0 for case in CASES}
    assert info4["padding"] == {"seeds": 0, "hp": 0, "padded": 1, "padded_chunks": 1}
    assert got["padded/params"].shape == (3, 2, 20)
    np.testing.assert_allclose(got["padded/params"], got["padded_chunks/params"], rtol=1e-6)
    for name, shards in info4["shards"].items():
        case = name.split("/")[0]
        assert shards["devices"] == 4, (name, shards)
        assert len(set(shards["indices"])) == 4, (name, shards)  # four different pieces
        (shape,) = [tuple(s) for s in shards["shapes"]]
        full = got[name].shape
        axis = 0 if case == "seeds" else 1  # the seed axis, else the hp axis
        assert shape[axis] == full[axis] // 4 and shape[:axis] + shape[axis + 1:] == \
            full[:axis] + full[axis + 1:], (name, shape, full)
    # Different seeds and sizes really trained differently.
    assert not np.allclose(ref["seeds/params"][0], ref["seeds/params"][1])


def test_two_processes_of_two_devices_equal_one_device(runs, tmp_path):
    (_, ref), _ = runs
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"}
    finish([start(tmp_path, TWO_DEVICES, JAX_PROCESS_ID=str(i), **env) for i in range(2)])
    for process in range(2):
        info, got = load(tmp_path, process)
        assert (info["device_count"], info["process_count"]) == (4, 2)
        assert info["process_index"] == process
        assert info["shards"] == {}  # gathered: host arrays with every run
        assert_same_numbers(got, ref)


def test_initialize_distributed_only_when_asked():
    from subspace_jax import vectorize

    assert vectorize.maybe_initialize_distributed({}) is False
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        vectorize.maybe_initialize_distributed({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
                                                "JAX_NUM_PROCESSES": "2"})


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    worker(sys.argv[1])
