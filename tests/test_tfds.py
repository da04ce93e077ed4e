"""tfds image datasets beyond MNIST: shapes, classes and normalisation flow into
the models and experiments (``tfds.testing.mock_data``: random images of each
dataset's real feature shapes), and an unprepared dataset is one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from subspace_jax import config as C
from subspace_jax import data, models

tfds = pytest.importorskip("tensorflow_datasets")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tfds_config(name, n_val):
    cfg = C.data_config()
    cfg.source, cfg.name, cfg.val_size = "tfds", name, n_val
    return cfg


@pytest.mark.parametrize("name,shape", [("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_shape_classes_and_per_channel_normalisation(name, shape):
    with tfds.testing.mock_data(num_examples=60):
        ds = data.from_config(tfds_config(name, 20))
    assert ds.input_shape == shape and ds.num_classes == 10 and ds.name == name
    assert ds.train_x.shape == (40, *shape) and ds.val_x.shape == (20, *shape)
    assert ds.test_x.shape == (60, *shape) and ds.train_x.dtype == np.float32
    # standardised on the images trained on: per channel mean 0, sd 1 there
    flat = ds.train_x.reshape(-1, shape[-1])
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1, atol=1e-4)
    assert data.spec(tfds_config(name, 20)) == (shape, 10)


def test_models_are_built_for_the_data():
    fc, conv = models.get("fc_200_200", (32, 32, 3), 100), models.get("zoo_cnn_small", (32, 32, 3))
    assert models.param_count(fc) == 3072 * 200 + 200 + 200 * 200 + 200 + 200 * 100 + 100
    # 32 -> conv4 29 -> pool 14 -> conv4 11 -> pool 5: 5 * 5 * 6 features
    assert models.param_count(conv) == (4 * 4 * 3 * 6 + 6) + (4 * 4 * 6 * 6 + 6) + (150 * 25 + 25) \
        + (25 * 10 + 10)
    with pytest.raises(ValueError, match="square"):
        models.get("zoo_cnn_small", (32, 28, 3))


def test_other_source_with_a_tfds_name_is_refused():
    cfg = C.data_config()
    cfg.name = "cifar10"
    with pytest.raises(data.DataError, match="data.name='cifar10' needs data.source='tfds'"):
        data.check(cfg)
    with pytest.raises(data.DataError, match="data.name='no_such_set' is not a tfds dataset"):
        data.check(tfds_config("no_such_set", 10))


def _quick(module, name, workdir):
    cfg = module.get_config(quick=True)
    cfg.data.source, cfg.data.name = "tfds", name
    cfg.data.val_size, cfg.data.train_size = 64, 0
    cfg.models = ("zoo_cnn_small",)
    with tfds.testing.mock_data(num_examples=192):
        module.validate(cfg)
        module.run(cfg, str(workdir))
    return json.load(open(os.path.join(str(workdir), "summary.json")))


def test_subspace_sweep_quick_on_cifar_shaped_data(tmp_path):
    from experiments import subspace_sweep
    summary = _quick(subspace_sweep, "cifar10", tmp_path)
    m = summary["models"]["zoo_cnn_small"]
    assert m["params"] == models.param_count(models.get("zoo_cnn_small", (32, 32, 3)))
    assert not summary["failed_units"]


def test_pruning_compare_quick_on_cifar_shaped_data(tmp_path):
    from experiments import pruning_compare
    summary = _quick(pruning_compare, "cifar10", tmp_path)
    assert not summary["failed_units"]
    assert summary["models"]["zoo_cnn_small"]["params"] == models.param_count(
        models.get("zoo_cnn_small", (32, 32, 3)))


def test_unprepared_dataset_is_one_line_exit_2_nothing_written(tmp_path):
    """The real tfds path, offline: no download starts, one line says how to prepare."""
    empty, workdir = tmp_path / "tfds", tmp_path / "w"
    empty.mkdir()
    out = subprocess.run([sys.executable, "launch.py", "--experiment=subspace_sweep", "--quick",
                          "--config.data.source=tfds", "--config.data.name=fashion_mnist",
                          f"--config.data.data_dir={empty}", f"--workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("launch.py:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "fashion_mnist" in lines[0] and "is not prepared" in lines[0]
    assert "tfds build fashion_mnist" in lines[0] and "array_record" in lines[0]
    assert not workdir.exists()
