"""export.py and tools/check_model.py: the NumPy forward pass equals model.apply."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from subspace_jax import export, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(ROOT, "tools", "check_model.py")


def _checker():
    spec = importlib.util.spec_from_file_location("check_model", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["golf_prelu", "conv_subspace", "lenet_300_100"])
def test_numpy_forward_equals_apply(name, tmp_path):
    model = models.get(name)
    params = model.init(jax.random.key(1))
    if "slope" in params.get("conv0", {}):  # slopes away from 0.25 so a transpose would show
        params["conv0"]["slope"] = jax.random.uniform(jax.random.key(2), (4,), minval=-1, maxval=1)
    path = str(tmp_path / f"{name}.npz")
    desc = export.export_model(path, name, params)

    check = _checker()
    loaded, arrays = check.load_model(path)
    assert loaded == json.loads(json.dumps(desc))
    images_NxHxW = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    x = check.normalise(images_NxHxW, loaded)
    want = model.apply(params, np.asarray(x, np.float32).reshape(5, 28, 28, 1))
    np.testing.assert_allclose(check.forward(loaded, arrays, x), want, atol=1e-4, rtol=1e-4)


def test_counts_are_nonzero_entries(tmp_path):
    params = models.get("golf_prelu").init(jax.random.key(0))
    params["conv1"]["w"] = params["conv1"]["w"].at[0].set(0.0)  # 3*4*5 = 60 weights pruned
    params["dense0"]["b"] = params["dense0"]["b"].at[:3].set(0.0)
    desc = export.export_model(str(tmp_path / "m.npz"), "golf_prelu", params)
    assert desc["dense_params"] == 820
    assert desc["nonzero_params"] == 820 - 60 - 3
    _, arrays = _checker().load_model(str(tmp_path / "m.npz"))
    assert _checker().nonzero_count(arrays) == 820 - 63


def test_shape_mismatch_is_an_error(tmp_path):
    params = models.get("golf_relu").init(jax.random.key(0))
    with pytest.raises(ValueError, match="do not match"):
        export.export_model(str(tmp_path / "m.npz"), "golf_prelu", params)


def test_checker_cli_prints_accuracy_without_jax(tmp_path):
    params = models.get("zoo_fc16").init(jax.random.key(0))
    path = str(tmp_path / "fc16.npz")
    export.export_model(path, "zoo_fc16", params)
    # -S would drop site-packages (NumPy); instead prove jax is never imported.
    probe = ("import sys, runpy; sys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "assert 'jax' not in sys.modules and 'subspace_jax' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", probe, CHECKER, path, "--limit", "500"],
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test accuracy:" in r.stdout and "/500)" in r.stdout
    assert "non-zero parameters: 12,730" in r.stdout


@pytest.mark.parametrize("name", ["golf_prelu", "lenet_300_100"])
def test_load_model_round_trip(name, tmp_path):
    model = models.get(name)
    params = model.init(jax.random.key(3))
    path = str(tmp_path / "m.npz")
    export.export_model(path, name, params)
    loaded, loaded_params = export.load_model(path)
    x = jax.random.normal(jax.random.key(4), (3, 28, 28, 1))
    np.testing.assert_allclose(loaded.apply(loaded_params, x), model.apply(params, x),
                               atol=1e-5, rtol=1e-5)
    assert jax.tree.structure(loaded.init(jax.random.key(0))) == jax.tree.structure(params)


def test_checker_checksums_are_the_loaders():
    from subspace_jax import data
    assert _checker().TEST_SHA256 == {k: v for k, v in data.SHA256.items() if "t10k" in k}


def _with_input(path, tmp_path, **fields):
    """A copy of the exported ``path`` whose arch JSON has ``input`` fields replaced."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    desc = json.loads(str(arrays["arch"]))
    desc["input"].update(fields)
    arrays["arch"] = np.asarray(json.dumps(desc))
    out = str(tmp_path / "altered.npz")
    np.savez(out, **arrays)
    return out


def test_checker_rejects_per_pixel_mean_and_std(tmp_path):
    path = str(tmp_path / "m.npz")
    export.export_model(path, "golf_relu", models.get("golf_relu").init(jax.random.key(0)))
    check = _checker()
    bad = _with_input(path, tmp_path, mean=np.full((28, 28), 0.13).tolist())
    desc, _ = check.load_model(bad)
    with pytest.raises(ValueError, match="input.mean"):
        check.normalise(np.zeros((1, 28, 28), np.uint8), desc)
    r = subprocess.run([sys.executable, CHECKER, _with_input(path, tmp_path, std=[0.3, 0.3])],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "input.std" in r.stderr
    check.check_input(check.load_model(path)[0])  # the exported scalars pass


def test_checker_verifies_the_test_files_sha256(tmp_path):
    import gzip
    import shutil
    from subspace_jax import data
    d = tmp_path / "mnist"
    shutil.copytree(data.DEFAULT_DIR, d)
    raw = bytearray(gzip.open(d / "t10k-labels-idx1-ubyte.gz").read())
    raw[100] = (raw[100] + 1) % 10  # one label changed: shapes still right
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(raw))
    check = _checker()
    with pytest.raises(ValueError, match=data.SHA256["t10k-labels-idx1-ubyte"]):
        check.load_test(str(d))
    x, y = check.load_test(data.DEFAULT_DIR)
    assert x.shape == (10_000, 28, 28) and y.shape == (10_000,)
